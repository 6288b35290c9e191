"""Retrieval indexes served next to the models: ``--index NAME=PATH`` opens a :mod:`pplx_embed.index`.

Each index embeds with the served model of its recorded model name. Its embedder is a
:class:`RequestEmbedder`: inside a request it is that request's batcher view of the model (so index
queries and documents are batched with every other request for the model), elsewhere the model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def parse_index_spec(spec: str) -> tuple[str, str]:
    """``name=path`` → ``("name", "path")``."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--index {spec!r}: expected NAME=PATH")
    return name, path


class RequestEmbedder:
    """An embedder that is, per thread, the view bound by :meth:`bound` (or else the model itself)."""

    def __init__(self, embedder):
        self._model = embedder
        self._local = threading.local()

    @property
    def name(self) -> str:
        return self._model.name

    def __getattr__(self, attr: str):
        return getattr(getattr(self._local, "view", None) or self._model, attr)

    @contextmanager
    def bound(self, view) -> Iterator[None]:
        """Embed with ``view`` (a batcher view of the model) in this thread until the block ends."""
        self._local.view = view
        try:
            yield
        finally:
            self._local.view = None


@dataclass
class ServedIndex:
    """An open index under its served name, embedding with the served model ``model``."""

    name: str
    index: object  # pplx_embed.index.Index
    model: str
    embedder: RequestEmbedder

    def describe(self) -> dict:
        return {"name": self.name, "object": "index", "model": self.index.model, "served_model": self.model,
                "stats": self.index.stats()}


def open_indexes(specs: list[tuple[str, str]], models: dict) -> dict[str, ServedIndex]:
    """Open each ``(name, path)`` index with the served model of its recorded model name.

    ``models`` maps served names to :class:`~pplx_embed.serve.registry.ServedModel`. Raises
    ``ValueError`` naming the model an index needs when no served model is it.
    """
    from pplx_embed.index import Index, IndexNotFoundError

    opened: dict[str, ServedIndex] = {}
    try:
        for name, path in specs:
            if name in opened:
                raise ValueError(f"two indexes are served as {name!r}")
            try:
                index = Index.open(path)
            except IndexNotFoundError as exc:
                raise ValueError(f"--index {name}={path}: {exc}") from None
            served = next((m for m in models.values() if m.embedder.name == index.model), None)
            if served is None:
                index.close()
                raise ValueError(f"index {name!r} needs model {index.model!r}, which is not served; "
                                 f"add --model {index.model}")
            embedder = RequestEmbedder(served.embedder)
            index.use(embedder)
            opened[name] = ServedIndex(name, index, served.name, embedder)
    except BaseException:
        close_indexes(opened)
        raise
    return opened


def close_indexes(indexes: dict[str, ServedIndex]) -> None:
    for served in indexes.values():
        served.index.close()

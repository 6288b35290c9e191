"""Retrieval indexes served next to the models: ``--index NAME=PATH`` opens a :mod:`pplx_embed.index`.

Each index embeds with the served model of its recorded model name, through that model's pipeline
(a :class:`~pplx_embed.serve.pipeline.LoopEmbedder`): index queries and documents are scheduled with
every other request for the model. The routes call the public Index API in a worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pplx_embed.errors import InputError
from pplx_embed.serve.pipeline import LoopEmbedder


def parse_index_spec(spec: str) -> tuple[str, str]:
    """``name=path`` → ``("name", "path")``."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise InputError(f"--index {spec!r}: expected NAME=PATH")
    return name, path


@dataclass
class ServedIndex:
    """An open index under its served name, embedding with the served model ``model``."""

    name: str
    index: object  # pplx_embed.index.Index
    model: str
    embedder: LoopEmbedder

    def describe(self) -> dict:
        return {"name": self.name, "object": "index", "model": self.index.model, "served_model": self.model,
                "stats": self.index.stats()}


def open_indexes(specs: list[tuple[str, str]], models: dict, loop: asyncio.AbstractEventLoop,
                 timeout: float) -> dict[str, ServedIndex]:
    """Open each ``(name, path)`` index with the served model of its recorded model name.

    ``models`` maps served names to :class:`~pplx_embed.serve.registry.ServedModel`. Raises
    ``InputError`` naming the model an index needs when no served model is it.
    """
    from pplx_embed.index import Index, IndexNotFoundError

    opened: dict[str, ServedIndex] = {}
    try:
        for name, path in specs:
            if name in opened:
                raise InputError(f"two indexes are served as {name!r}")
            try:
                index = Index.open(path)
            except IndexNotFoundError as exc:
                raise InputError(f"--index {name}={path}: {exc}") from None
            served = next((m for m in models.values() if index.model in m.names), None)
            if served is None:
                index.close()
                raise InputError(f"index {name!r} needs model {index.model!r}, which is not served; "
                                 f"add --model {index.model}")
            embedder = LoopEmbedder(served.pipeline, loop, timeout)
            index.use(embedder)
            opened[name] = ServedIndex(name, index, served.name, embedder)
    except BaseException:
        close_indexes(opened)
        raise
    return opened


def close_indexes(indexes: dict[str, ServedIndex]) -> None:
    for served in indexes.values():
        served.index.close()

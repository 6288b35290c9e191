"""Retrieval indexes served next to the models: ``--index NAME=PATH`` opens a :mod:`pplx_embed.index`.

Each index embeds with the served model of its recorded model name, through that model's pipeline
(a :class:`~pplx_embed.serve.pipeline.LoopEmbedder`): index queries and documents are scheduled with
every other request for the model. The routes call the public Index API in a worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pplx_embed.errors import InputError
from pplx_embed.serve.errors import APIError
from pplx_embed.serve.pipeline import LoopEmbedder

MAX_FILTER_KEYS = 32
MAX_FILTER_STRING = 1024
INT64 = 2**63


def parse_index_spec(spec: str) -> tuple[str, str]:
    """``name=path`` → ``("name", "path")``."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise InputError(f"--index {spec!r}: expected NAME=PATH")
    return name, path


def check_filter(where: dict[str, Any] | None) -> None:
    """A search filter the store can run: few keys, flat scalar values, 64-bit integers (else 400)."""
    if not where:
        return
    if len(where) > MAX_FILTER_KEYS:
        raise APIError(400, f"filter has {len(where)} keys, more than the limit of {MAX_FILTER_KEYS}",
                       code="invalid_value")
    for key, value in where.items():
        if isinstance(value, (dict, list)):
            raise APIError(400, f"filter value for {key!r} must be a string, number, boolean or null, not nested",
                           code="invalid_value")
        if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
            raise APIError(400, f"filter value for {key!r} is outside the 64-bit integer range", code="invalid_value")
        if isinstance(value, str) and len(value) > MAX_FILTER_STRING:
            raise APIError(400, f"filter value for {key!r} is longer than {MAX_FILTER_STRING} characters",
                           code="invalid_value")


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

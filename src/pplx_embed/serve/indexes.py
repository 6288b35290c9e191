"""Retrieval indexes served next to the models: ``--index NAME=PATH`` opens a :mod:`pplx_embed.index`.

Each index embeds with the served model of its recorded model name, through that model's pipeline
(a :class:`~pplx_embed.serve.pipeline.LoopEmbedder`): index queries and documents are scheduled with
every other request for the model. The routes call the public Index API in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from pplx_embed.checks.precision import MIN_DIMENSIONS
from pplx_embed.errors import InputError
from pplx_embed.serve.errors import APIError
from pplx_embed.serve.pipeline import LoopEmbedder

MAX_SCAN_QUERIES = 32  # queries per request that scan every item (exact, or below the index's dimensions)
MAX_NEIGHBOUR_CHUNKS = 16_384  # queries × k × 2·neighbours per request
# a search's precision → (rescore, exact) of Index.search_many
PRECISIONS = {
    "binary+rescore": ("int8", False),  # binary first stage, int8 rescoring of its candidates (the default)
    "binary": ("none", False),  # binary first stage only, Hamming scores
    "int8": ("int8", True),  # every item's int8 code (exact)
    "float": ("float", True),  # every item's float vector (exact; indexes made with store_float)
}


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

    def precisions(self) -> list[str]:
        """The search precisions this index holds: exact scans need a backend that scans (the embedded index)."""
        exact = (["int8"] + (["float"] if self.index.store_float else [])) if self.index.scans else []
        return ["binary+rescore", "binary", *exact]

    def dimensions(self) -> list[int]:
        """Matryoshka widths to search at: powers of two from 128 below the index's dimensions, then its own."""
        ix = self.index
        low = min(MIN_DIMENSIONS, ix.full_dimension)
        smaller = [2**i for i in range(3, 13) if low <= 2**i < ix.dimensions] if ix.scans else []
        return [*smaller, ix.dimensions]

    def describe(self) -> dict:
        precisions = self.precisions()
        exact = "float" if "float" in precisions else "int8" if "int8" in precisions else None
        return {"name": self.name, "object": "index", "model": self.index.model, "served_model": self.model,
                "search": {"precisions": precisions, "dimensions": self.dimensions(), "exact": exact},
                "stats": self.index.stats()}

    def search(self, queries: list[str], k: int, *, filter: dict[str, Any] | None = None,
               candidates: int | None = None, precision: str = "binary+rescore", dimensions: int | None = None,
               neighbours: int = 0) -> dict:
        """The body of a search answer: hits per query at ``precision``, contextual hits with ``neighbours``
        chunks either side, and the milliseconds each stage took (blocking: run it off the event loop)."""
        if precision not in self.precisions():
            raise APIError(400, f"precision {precision!r} is not available for index {self.name!r}; it holds "
                           f"{', '.join(self.precisions())}", code="invalid_value")
        rescore, exact = PRECISIONS[precision]
        scans = exact or (dimensions is not None and dimensions < self.index.dimensions)
        if scans and len(queries) > MAX_SCAN_QUERIES:
            raise APIError(400, f"a search at precision {precision!r} or below the index's {self.index.dimensions} "
                           f"dimensions scores every item: at most {MAX_SCAN_QUERIES} queries per request, "
                           f"got {len(queries)}", code="invalid_value")
        if neighbours and len(queries) * k * 2 * neighbours > MAX_NEIGHBOUR_CHUNKS:
            raise APIError(400, f"{len(queries)} queries × k {k} × 2·neighbours {neighbours} is more than "
                           f"{MAX_NEIGHBOUR_CHUNKS} neighbour chunks per request; ask for fewer", code="invalid_value")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        results = self.index.search_many(queries, k, filter=filter, candidates=candidates, rescore=rescore,
                                         exact=exact, dimensions=dimensions, timings=timings)
        data = [[hit.to_dict() for hit in hits] for hits in results]
        if neighbours:
            fetch = time.perf_counter()
            self._add_neighbours([hit for hits in data for hit in hits], neighbours)
            timings["fetch"] += time.perf_counter() - fetch
        ms = {f"{stage}_ms": round(1000 * seconds, 3) for stage, seconds in timings.items()}
        return {"object": "list", "data": [{"index": i, "hits": hits} for i, hits in enumerate(data)],
                "model": self.index.model, "precision": precision, "dimensions": dimensions or self.index.dimensions,
                "timings": {**ms, "total_ms": round(1000 * (time.perf_counter() - start), 3)}}

    def _add_neighbours(self, hits: list[dict], n: int) -> None:
        """Give each chunk hit the chunks up to ``n`` positions either side of it in its document (one lookup)."""
        chunks = [hit for hit in hits if hit["doc_id"] is not None and hit["position"] is not None]
        wanted = [f"{hit['doc_id']}#{p}" for hit in chunks
                  for p in range(max(0, hit["position"] - n), hit["position"] + n + 1) if p != hit["position"]]
        found = {item.id: item for item in self.index.items(wanted)}
        for hit in chunks:
            near = [found.get(f"{hit['doc_id']}#{p}") for p in range(max(0, hit["position"] - n),
                                                                  hit["position"] + n + 1)]
            hit["neighbours"] = [{"id": item.id, "position": item.position, "text": item.text}
                                 for item in near if item is not None and item.doc_id == hit["doc_id"]
                                 and item.position != hit["position"]]


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

"""A search, checked once: the queries' codes at the index's dimensions and what to do with them.

:meth:`VectorStore.query <pplx_embed.index.store.VectorStore.query>` builds a :class:`SearchQuery` from
texts or vectors; the stores' first stage and :mod:`pplx_embed.index.rescore` take it as it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from pplx_embed.checks.filters import Filter
from pplx_embed.errors import InputError

RESCORE_MODES = ("int8", "float", "none")
MAX_CANDIDATES = 16_384
STAGES = ("embed", "first_stage", "rescore", "fetch")  # what a search's ``timings`` report, in seconds
_TIMINGS: ContextVar[dict[str, float] | None] = ContextVar("pplx_index_timings", default=None)


@dataclass(frozen=True)
class SearchQuery:
    """One or several queries, ready for the stages of a search.

    ``binary``: packed sign bits ``[queries, width/8]`` for the Hamming first stage; ``dense``: the rescoring
    vectors ``[queries, width]`` (``tanh`` of the float query, in the same transform as the stored int8 codes
    before rounding, or the given int8 codes), which also place a query among an IVF's cosine partitions;
    ``floats``: the float queries where known (float rescoring); ``candidates``: first-stage candidates per
    query; ``where``: the metadata filter; ``rescore``: ``int8``, ``float`` or ``none`` (Hamming order);
    ``exact``: score every item instead of the first stage's candidates. The vectors are cut to the search's
    width: the index's dimensions, or fewer (Matryoshka) where the store scans.
    """

    binary: np.ndarray
    dense: np.ndarray
    floats: np.ndarray | None
    k: int
    candidates: int
    where: Filter
    rescore: str
    exact: bool = False

    def __len__(self) -> int:
        return len(self.binary)

    @property
    def width(self) -> int:
        """Dimensions searched."""
        return self.dense.shape[1]


@contextmanager
def timed(timings: dict[str, float] | None) -> Iterator[None]:
    """Collect the seconds of each of :data:`STAGES` of the search run in this block into ``timings`` (if a dict)."""
    if timings is not None:
        timings.update(dict.fromkeys(STAGES, 0.0))
    token = _TIMINGS.set(timings)
    try:
        yield
    finally:
        _TIMINGS.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the block's seconds to stage ``name`` of the search being timed in this thread, if any."""
    record, start = _TIMINGS.get(), time.perf_counter()
    try:
        yield
    finally:
        if record is not None:
            record[name] += time.perf_counter() - start


def check_count(name: str, value: object) -> int | None:
    """``k`` or ``candidates``: an integer from 1 to :data:`MAX_CANDIDATES` (``None`` stays ``None``)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or not 1 <= value <= MAX_CANDIDATES):
        raise InputError(f"{name} must be an integer from 1 to {MAX_CANDIDATES}, got {str(value)[:40]!r}")
    return None if value is None else int(value)


def check_rescore(rescore: object, store_float: bool) -> str:
    if rescore not in RESCORE_MODES:
        raise InputError(f"rescore must be one of {', '.join(RESCORE_MODES)}, got {str(rescore)[:40]!r}")
    if rescore == "float" and not store_float:
        raise InputError("float rescoring needs an index created with store_float=True")
    return rescore


def first_stage_size(k: int, candidates: int | None) -> int:
    """Candidates per query: as asked (at least ``k``), else ``max(100, 10·k)``."""
    return min(MAX_CANDIDATES, max(k, candidates if candidates is not None else max(100, 10 * k)))

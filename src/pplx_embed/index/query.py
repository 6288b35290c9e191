"""A search, checked once: the queries' codes at the index's dimensions and what to do with them.

:meth:`VectorStore.query <pplx_embed.index.store.VectorStore.query>` builds a :class:`SearchQuery` from
texts or vectors; the stores' first stage and :mod:`pplx_embed.index.rescore` take it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pplx_embed.checks.filters import Filter
from pplx_embed.errors import InputError

RESCORE_MODES = ("int8", "float", "none")
MAX_CANDIDATES = 16_384


@dataclass(frozen=True)
class SearchQuery:
    """One or several queries, ready for the stages of a search.

    ``binary``: packed sign bits ``[queries, dims/8]`` for the Hamming first stage; ``dense``: the rescoring
    vectors ``[queries, dims]`` (``tanh`` of the float query, in the same transform as the stored int8 codes
    before rounding, or the given int8 codes), which also place a query among an IVF's cosine partitions;
    ``floats``: the float queries where known (float rescoring); ``candidates``: first-stage candidates per
    query; ``where``: the metadata filter; ``rescore``: ``int8``, ``float`` or ``none`` (Hamming order).
    """

    binary: np.ndarray
    dense: np.ndarray
    floats: np.ndarray | None
    k: int
    candidates: int
    where: Filter
    rescore: str

    def __len__(self) -> int:
        return len(self.binary)


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

"""Late chunking: one forward pass over a whole document, one pooled vector per chunk.

A document's chunks are tokenized one by one and joined with the separator id
(``c1 SEP c2 SEP … cn``, inside the tokenizer's own prefix/suffix specials). Chunk spans are
tracked explicitly rather than found by scanning for the separator afterwards, so a separator
string *inside* a chunk's text cannot shift the boundaries; for ordinary text the spans are the
same as the model card's ``extract_chunks_from_concatenated``.

Documents longer than the context window are split into **macro-windows**: chunks are grouped
greedily into *cores* of at most half the window, and each core is widened with whole neighbouring
chunks, alternately right and left, until the window is full. Every chunk is pooled from the window
whose core holds it, so it always sees itself plus as much surrounding context as fits. Chunk count
and order are always preserved.
"""

from __future__ import annotations

from pplx_embed.errors import InputError
from pplx_embed.model.pooling import Sequence


def join_chunks(chunks: list[list[int]], sep_id: int, prefix: list[int] = (), suffix: list[int] = ()) -> Sequence:
    """``prefix c1 SEP c2 … cn suffix`` with one span per chunk (separators excluded)."""
    ids = list(prefix)
    spans = []
    for k, chunk in enumerate(chunks):
        if k:
            ids.append(sep_id)
        spans.append((len(ids), len(ids) + len(chunk)))
        ids.extend(chunk)
    ids.extend(suffix)
    return Sequence(ids, spans)


def macro_windows(lengths: list[int], budget: int) -> list[tuple[range, range]]:
    """Split chunks of the given token lengths into ``(core, window)`` index ranges.

    ``budget`` counts chunk tokens plus one separator between neighbouring chunks. Cores partition
    the chunks in order; each window contains its core. A single chunk longer than the budget is an
    error (truncate it first).
    """
    for k, n in enumerate(lengths):
        if n > budget:
            raise InputError(f"chunk {k} has {n} tokens, more than the {budget}-token window; truncate it")

    def cost(lo: int, hi: int) -> int:
        return sum(lengths[lo:hi]) + max(hi - lo - 1, 0)

    if cost(0, len(lengths)) <= budget:
        return [(range(len(lengths)), range(len(lengths)))]
    out = []
    start = 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and cost(start, end + 1) <= budget // 2:
            end += 1
        lo, hi = start, end
        grew = True
        while grew:
            grew = False
            if hi < len(lengths) and cost(lo, hi + 1) <= budget:
                hi, grew = hi + 1, True
            if lo > 0 and cost(lo - 1, hi) <= budget:
                lo, grew = lo - 1, True
        out.append((range(start, end), range(lo, hi)))
        start = end
    return out

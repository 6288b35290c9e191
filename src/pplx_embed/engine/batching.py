"""Token-budget batching: sort by length, pack batches whose padded size fits a budget.

Like TEI's ``--max-batch-tokens``: a batch of ``n`` sequences padded to the longest costs
``n × longest`` tokens of compute; packing length-sorted sequences keeps padding small, and the
budget keeps memory bounded whatever the input mix. A sequence longer than the budget runs alone.
"""

from __future__ import annotations


def plan_batches(lengths: list[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Group indices of ``lengths`` into batches, longest first, with padded size ≤ the budget.

    A sequence also starts a new batch when joining would pad it by more than a quarter of the
    batch's width (and more than 8 tokens), so short texts never ride along padded to a long one's length.
    """
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("max_batch_tokens and max_batch_size must be positive")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        width = max(lengths[current[0]], 1) if current else 0
        if (
            current is None
            or len(current) >= max_batch_size
            or width * (len(current) + 1) > max_batch_tokens
            or width - lengths[i] > max(8, width // 4)
        ):
            batches.append([i])
        else:
            current.append(i)
    return batches

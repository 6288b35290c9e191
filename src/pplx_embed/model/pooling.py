"""Pool token states into one vector per span (a whole text, or one chunk of a document).

A span is ``(start, end)`` token positions of one sequence; a whole text is the span of its
non-padding tokens, a late-chunked chunk is the span between two separators. Pooling always
accumulates in float32. An empty span pools to the zero vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Span = tuple[int, int]
POOLING_MODES = ("mean", "cls", "max", "lasttoken")


@dataclass
class Sequence:
    """Token ids of one model input and the spans to pool from it (one per output vector)."""

    ids: list[int]
    spans: list[Span] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.spans:
            self.spans = [(0, len(self.ids))]


def pool_spans(hidden: torch.Tensor, spans: list[list[Span]], mode: str = "mean") -> torch.Tensor:
    """Pool ``hidden`` ``[batch, tokens, dim]`` over each row's spans → ``[total spans, dim]`` float32."""
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLING_MODES)}")
    batch, tokens, dim = hidden.shape
    if mode == "mean":
        most = max((len(s) for s in spans), default=0)
        weights = torch.zeros(batch, most, tokens, dtype=torch.float32, device=hidden.device)
        for row, row_spans in enumerate(spans):
            for k, (start, end) in enumerate(row_spans):
                weights[row, k, start:end] = 1.0
        sums = torch.bmm(weights, hidden.float())
        means = sums / weights.sum(-1, keepdim=True).clamp(min=1.0)
        keep = [row * most + k for row, row_spans in enumerate(spans) for k in range(len(row_spans))]
        return means.reshape(batch * most, dim)[keep]
    out = []
    for row, row_spans in enumerate(spans):
        for start, end in row_spans:
            if end <= start:
                out.append(torch.zeros(dim, dtype=torch.float32, device=hidden.device))
            elif mode == "cls":
                out.append(hidden[row, start].float())
            elif mode == "lasttoken":
                out.append(hidden[row, end - 1].float())
            else:
                out.append(hidden[row, start:end].float().amax(0))
    return torch.stack(out) if out else hidden.new_zeros((0, dim), dtype=torch.float32)

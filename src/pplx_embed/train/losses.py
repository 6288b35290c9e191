"""Contrastive objectives: InfoNCE with false-negative masking, the contextual dual loss, and the
Matryoshka (MRL) × quantization-aware (QAT) views every contrastive stage trains on.

All scores are cosine similarities divided by a temperature. Positives of query ``i`` are given
as column indices into the candidate matrix; every other column is a negative unless the
false-negative mask drops it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from pplx_embed.train.quant import fake_quantize

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cosine_scores(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``[Q, C]`` cosine similarities (float32)."""
    return F.normalize(queries.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T


def false_negative_mask(scores: torch.Tensor, positives: torch.Tensor, margin: float | None = None,
                        candidate_similarity: torch.Tensor | None = None,
                        duplicate_threshold: float | None = None) -> torch.Tensor:
    """``[Q, C]`` bool, True for in-batch negatives that are probably unlabeled positives.

    A negative is flagged when its query score exceeds the positive's by more than ``margin``
    (``scores[i, j] > scores[i, pos_i] + margin``), or when it is a near-duplicate of the positive
    (``candidate_similarity[pos_i, j] >= duplicate_threshold``, e.g. cosine between candidate
    texts). The positive itself is never flagged; ``None`` disables a rule.
    """
    flagged = torch.zeros_like(scores, dtype=torch.bool)
    if margin is not None:
        flagged |= scores.detach() > scores.detach().gather(1, positives[:, None]) + margin
    if duplicate_threshold is not None and candidate_similarity is not None:
        flagged |= candidate_similarity.detach()[positives] >= duplicate_threshold
    rows = torch.arange(scores.shape[0], device=scores.device)
    flagged[rows, positives] = False
    return flagged


def info_nce(queries: torch.Tensor, candidates: torch.Tensor, positives: torch.Tensor | None = None,
             temperature: float = 0.05, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of each query's positive against all candidates (in-batch + extra negatives).

    ``positives[i]`` is the candidate column of query ``i`` (default ``i``: the first Q candidates are
    the positives, anything after them is an extra negative). ``exclude`` ``[Q, C]`` drops entries.
    """
    if positives is None:
        positives = torch.arange(queries.shape[0], device=queries.device)
    logits = cosine_scores(queries, candidates) / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, positives)


def contextual_dual_loss(queries: torch.Tensor, chunks: torch.Tensor, chunk_doc: torch.Tensor,
                         positives: torch.Tensor, temperature: float = 0.05,
                         exclude: torch.Tensor | None = None,
                         weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[torch.Tensor, dict[str,
                                                                                                            float]]:
    """Dual contextual loss at chunk and document level.

    ``chunks`` are late-chunked embeddings of all documents in the batch, ``chunk_doc[c]`` the
    document of chunk ``c``, ``positives[i]`` the chunk answering query ``i``.

    * in-batch (chunk): the positive chunk against every chunk of every document;
    * in-sequence (chunk): the positive chunk against the other chunks of its own document;
    * document: the positive's document (mean of its chunk embeddings) against the other documents.
    """
    in_batch = info_nce(queries, chunks, positives, temperature, exclude)
    other_docs = chunk_doc[None, :] != chunk_doc[positives][:, None]
    in_sequence = info_nce(queries, chunks, positives, temperature, other_docs)
    n_docs = int(chunk_doc.max()) + 1
    sums = torch.zeros(n_docs, chunks.shape[1], dtype=chunks.dtype, device=chunks.device).index_add(0, chunk_doc,
                                                                                                    chunks)
    counts = torch.bincount(chunk_doc, minlength=n_docs).clamp(min=1)[:, None]
    document = info_nce(queries, sums / counts, chunk_doc[positives], temperature)
    total = weights[0] * in_batch + weights[1] * in_sequence + weights[2] * document
    return total, {"in_batch": in_batch.item(), "in_sequence": in_sequence.item(), "document": document.item()}


def view_name(dimensions: int | None, quantization: str) -> str:
    return f"{quantization}@{dimensions or 'full'}"


def mrl_qat_loss(loss_fn: LossFn, queries: torch.Tensor, candidates: torch.Tensor,
                 dimensions: Sequence[int | None] = (None,), quantizations: Sequence[str] = ("float",),
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean of ``loss_fn`` over every (Matryoshka dimension, quantization) view of the embeddings.

    Each view truncates to the first ``d`` coordinates *then* quantizes (int8 / binary with
    straight-through gradients), exactly as the runtime does. Returns the mean and each view's loss.
    """
    parts: dict[str, float] = {}
    total = queries.new_zeros((), dtype=torch.float32)
    for dim in dimensions:
        for quantization in quantizations:
            q = fake_quantize(queries[..., :dim] if dim else queries, quantization)
            c = fake_quantize(candidates[..., :dim] if dim else candidates, quantization)
            loss = loss_fn(q, c)
            parts[view_name(dim, quantization)] = loss.item()
            total = total + loss
    return total / (len(dimensions) * len(quantizations)), parts

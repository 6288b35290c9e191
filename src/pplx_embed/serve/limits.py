"""Request limits of the Perplexity API, checked before any work is queued."""

from __future__ import annotations

from dataclasses import dataclass

from pplx_embed.serve.errors import APIError


@dataclass(frozen=True)
class Limits:
    max_inputs: int = 512
    max_tokens_per_input: int = 32768
    max_tokens_per_request: int = 120_000
    max_documents: int = 512
    max_chunks: int = 16_000
    max_tokens_per_document: int = 32768


def _too_large(message: str, code: str) -> APIError:
    return APIError(413, message, "invalid_request_error", code)


def check_texts(texts: list[str], embedder, limits: Limits, truncate: bool = False) -> list[int]:
    """Token count of each text, after checking count, emptiness and token limits (413 / 400)."""
    if not texts:
        raise APIError(400, "input must contain at least one text", code="empty_input")
    if len(texts) > limits.max_inputs:
        raise _too_large(f"input has {len(texts)} texts, more than the limit of {limits.max_inputs} per request",
                         "too_many_inputs")
    for i, text in enumerate(texts):
        if not text.strip():
            raise APIError(400, f"input[{i}] is empty; every text needs some content", code="empty_input")
    per_input = min(limits.max_tokens_per_input, embedder.max_length)
    counts = embedder.count_tokens(texts)
    if truncate:
        counts = [min(n, per_input) for n in counts]
    for i, n in enumerate(counts):
        if n > per_input:
            raise _too_large(f"input[{i}] has {n} tokens, more than the limit of {per_input} tokens per input "
                             f"for model {embedder.name!r}", "too_many_tokens")
    if sum(counts) > limits.max_tokens_per_request:
        raise _too_large(f"input has {sum(counts)} tokens in total, more than the limit of "
                         f"{limits.max_tokens_per_request} tokens per request", "too_many_tokens")
    return counts


def check_documents(documents: list[list[str]], embedder, limits: Limits) -> list[int]:
    """Token count of each document (its chunks), after checking the contextual limits."""
    if not documents:
        raise APIError(400, "input must contain at least one document", code="empty_input")
    if len(documents) > limits.max_documents:
        raise _too_large(f"input has {len(documents)} documents, more than the limit of {limits.max_documents}",
                         "too_many_inputs")
    chunks = sum(len(doc) for doc in documents)
    if chunks > limits.max_chunks:
        raise _too_large(f"input has {chunks} chunks in total, more than the limit of {limits.max_chunks}",
                         "too_many_inputs")
    for d, doc in enumerate(documents):
        if not doc:
            raise APIError(400, f"input[{d}] has no chunks; each document is a non-empty list of chunks",
                           code="empty_input")
    counts = embedder.count_tokens([chunk for doc in documents for chunk in doc])
    per_doc, start = [], 0
    for doc in documents:
        per_doc.append(sum(counts[start : start + len(doc)]))
        start += len(doc)
    for d, n in enumerate(per_doc):
        if n > limits.max_tokens_per_document:
            raise _too_large(f"input[{d}] has {n} tokens, more than the limit of {limits.max_tokens_per_document} "
                             "tokens per document", "too_many_tokens")
    if sum(per_doc) > limits.max_tokens_per_request:
        raise _too_large(f"input has {sum(per_doc)} tokens in total, more than the limit of "
                         f"{limits.max_tokens_per_request} tokens per request", "too_many_tokens")
    return per_doc

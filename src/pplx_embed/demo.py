"""``pplx-embed demo``: the main job on the built-in default model, end to end in a minute."""

from __future__ import annotations

import numpy as np

DOCUMENTS = [
    "Scientists explore the universe driven by curiosity.",
    "Children learn through curious exploration.",
    "Historical discoveries began with curious questions.",
    "Animals use curiosity to adapt and survive.",
    "Philosophy examines the nature of curiosity.",
]
QUERY = "Why are kids so curious?"
CONTEXT_DOCS = [
    ["Curiosity begins in childhood with endless questions about the world.",
     "As we grow, curiosity drives us to explore new ideas and challenge assumptions.",
     "Scientific breakthroughs often start with a simple curious question."],
    ["The curiosity rover explores Mars, searching for signs of ancient life.",
     "Each discovery on Mars sparks new questions about our place in the universe."],
]


def run(model: str | None = None) -> None:
    """Embed, compare precisions and late-chunk a document with the default (or given) model."""
    from pplx_embed import Embedder

    embedder = Embedder(model)
    print(f"model: {embedder.name}  dim={embedder.dimension}  context={embedder.max_length} tokens  device={embedder.device}")
    print(f"\nquery: {QUERY!r}")
    print(f"{'precision':<10}{'bytes/vector':>14}  ranking of the documents (best first)")
    for precision in ("float", "int8", "binary"):
        docs = embedder.encode(DOCUMENTS, quantization=precision)
        query = embedder.encode([QUERY], quantization=precision)
        scores = embedder.similarity(query, docs)[0]
        order = np.argsort(-scores)
        print(f"{precision:<10}{docs[0].nbytes:>14}  " + " > ".join(f"#{i}({scores[i]:.2f})" for i in order))
    small = embedder.encode(DOCUMENTS, quantization="binary", dimensions=min(128, embedder.dimension))
    print(f"binary + Matryoshka {8 * small.shape[1]} dims: {small[0].nbytes} bytes/vector")
    for i, text in enumerate(DOCUMENTS):
        print(f"  #{i} {text}")
    chunks = embedder.encode_contextual(CONTEXT_DOCS, quantization="int8")
    print(f"\nlate chunking: {len(CONTEXT_DOCS)} documents -> {[c.shape for c in chunks]} int8 chunk embeddings")

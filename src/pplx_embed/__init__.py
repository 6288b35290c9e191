"""pplx-embed: bidirectional Qwen3 embeddings with INT8/binary outputs, MRL and late chunking."""

from pplx_embed.model.quantization import cosine_similarity, hamming_distance, quantize, similarity

__version__ = "0.1.0"
__all__ = ["Embedder", "quantize", "similarity", "cosine_similarity", "hamming_distance", "__version__"]


def __getattr__(name: str):
    # Embedder pulls in torch and transformers; import it only when asked for, so index-only or
    # client-only uses of the package start fast.
    if name == "Embedder":
        from pplx_embed.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'pplx_embed' has no attribute {name!r}")

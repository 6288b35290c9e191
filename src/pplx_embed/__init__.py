"""pplx-embed: bidirectional Qwen3 embeddings with INT8/binary outputs, MRL and late chunking."""

from pplx_embed.embedder import Embedder
from pplx_embed.model.quantization import cosine_similarity, hamming_distance, quantize, similarity

__version__ = "0.1.0"
__all__ = ["Embedder", "quantize", "similarity", "cosine_similarity", "hamming_distance", "__version__"]

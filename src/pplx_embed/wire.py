"""The HTTP wire format, shared by the server and :mod:`pplx_embed.client`: how vectors travel.

``/v1/embeddings`` and ``/v1/contextualizedembeddings`` follow the Perplexity API: ``base64_int8``
(default; base64 of the raw int8 bytes) or ``base64_binary`` (base64 of the packed sign bits,
``dimensions / 8`` bytes). For the OpenAI client they also accept ``float`` (a JSON list) and
``base64`` (base64 of little-endian float32 bytes, what ``openai`` sends by default).

Needs only numpy, so the client imports it without the server's dependencies.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np

from pplx_embed.errors import InputError

EncodingFormat = Literal["base64_int8", "base64_binary", "float", "base64"]
DEFAULT_FORMAT = "base64_int8"

# Which Python-API quantization each wire encoding carries, and the element type of its bytes.
QUANTIZATION_OF: dict[str, str] = {"base64_int8": "int8", "base64_binary": "binary", "float": "float",
                                   "base64": "float"}
_DTYPE: dict[str, str] = {"base64_int8": "i1", "base64_binary": "u1", "base64": "<f4"}
# quantization (as in ``Embedder.encode``) → the encoding_format a client asks for to receive it exactly
FORMAT_OF: dict[str, str] = {"int8": "base64_int8", "binary": "base64_binary", "ubinary": "base64_binary",
                             "float": "base64"}


def format_for(quantization: str) -> str:
    """The ``encoding_format`` that carries ``quantization`` (``InputError`` for an unknown one)."""
    if quantization not in FORMAT_OF:
        raise InputError(f"quantization must be one of {', '.join(FORMAT_OF)}, got {quantization!r}")
    return FORMAT_OF[quantization]


def encode_vector(vector: np.ndarray, encoding_format: str) -> str | list[float]:
    """One embedding as it goes on the wire."""
    if encoding_format == "float":
        return vector.astype(np.float32).tolist()
    return base64.b64encode(np.ascontiguousarray(vector, dtype=_DTYPE[encoding_format]).tobytes()).decode("ascii")


def decode_vector(value: str | list[float], encoding_format: str) -> np.ndarray:
    """One embedding from the wire: base64 int8 / packed bits / float32, or a JSON float list."""
    if encoding_format == "float":
        return np.asarray(value, dtype=np.float32)
    return np.frombuffer(base64.b64decode(value), dtype=_DTYPE[encoding_format]).copy()


def embedding_items(vectors: np.ndarray, encoding_format: str) -> list[dict[str, Any]]:
    """``[{"object": "embedding", "index": i, "embedding": ...}, ...]`` for the rows of ``vectors``."""
    return [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
            for i, v in enumerate(vectors)]


def embeddings_response(vectors: np.ndarray, encoding_format: str, model: str, tokens: int) -> dict[str, Any]:
    """The body of a ``/v1/embeddings`` answer."""
    return {"object": "list", "data": embedding_items(vectors, encoding_format), "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def contextual_response(arrays: list[np.ndarray], encoding_format: str, model: str, tokens: int) -> dict[str, Any]:
    """The body of a ``/v1/contextualizedembeddings`` answer: one list of chunk embeddings per document."""
    data = [{"object": "contextualized_embedding", "index": d, "data": embedding_items(array, encoding_format)}
            for d, array in enumerate(arrays)]
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def request_body(inputs: Any, model: str | None, dimensions: int | None, quantization: str) -> dict[str, Any]:
    """The JSON a client sends to receive ``quantization`` vectors of ``inputs``."""
    body: dict[str, Any] = {"input": inputs, "encoding_format": format_for(quantization)}
    if model is not None:
        body["model"] = model
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


def decode_embeddings(items: list[dict[str, Any]], encoding_format: str) -> np.ndarray:
    """The ``[n, d]`` matrix of an answer's ``data`` items, in ``index`` order."""
    return np.stack([decode_vector(item["embedding"], encoding_format)
                     for item in sorted(items, key=lambda item: item["index"])])


def decode_contextual(payload: dict[str, Any], encoding_format: str) -> list[np.ndarray]:
    """One ``[n_chunks, d]`` array per document of a ``/v1/contextualizedembeddings`` answer."""
    documents = sorted(payload["data"], key=lambda doc: doc["index"])
    return [decode_embeddings(doc["data"], encoding_format) for doc in documents]

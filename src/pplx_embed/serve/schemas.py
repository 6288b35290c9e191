"""Request and response bodies of the HTTP API (pydantic), and the wire encodings of vectors.

``/v1/embeddings`` and ``/v1/contextualizedembeddings`` follow the Perplexity API: ``base64_int8``
(default; base64 of the raw int8 bytes) or ``base64_binary`` (base64 of the packed sign bits,
``dimensions / 8`` bytes). For the OpenAI client they also accept ``float`` (a JSON list) and
``base64`` (base64 of little-endian float32 bytes, what ``openai`` sends by default).
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

EncodingFormat = Literal["base64_int8", "base64_binary", "float", "base64"]

# Which Python-API quantization each wire encoding carries.
QUANTIZATION_OF: dict[str, str] = {"base64_int8": "int8", "base64_binary": "binary", "float": "float",
                                   "base64": "float"}


def encode_vector(vector: np.ndarray, encoding_format: str) -> str | list[float]:
    """One embedding as it goes on the wire."""
    if encoding_format == "float":
        return vector.astype(np.float32).tolist()
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return base64.b64encode(np.ascontiguousarray(vector).tobytes()).decode("ascii")


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. OpenAI's "user" field

    model: StrictStr | None = Field(None, description="served model or alias; default: the first one")
    dimensions: StrictInt | None = Field(None, description="Matryoshka dimensions (128..full)")
    encoding_format: EncodingFormat = "base64_int8"


class EmbeddingsRequest(_Request):
    """``POST /v1/embeddings``."""

    input: StrictStr | list[StrictStr]


class ContextualRequest(_Request):
    """``POST /v1/contextualizedembeddings``: each document an ordered list of chunks."""

    input: list[list[StrictStr]]


class TEIEmbedRequest(BaseModel):
    """``POST /embed`` as Text Embeddings Inference accepts it (plus optional ``model``)."""

    model_config = ConfigDict(extra="ignore")

    inputs: StrictStr | list[StrictStr]
    normalize: StrictBool = True
    truncate: StrictBool = False
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    dimensions: StrictInt | None = None
    model: StrictStr | None = None


class IndexSearchRequest(BaseModel):
    """``POST /v1/indexes/{name}/search``."""

    model_config = ConfigDict(extra="forbid")  # a misspelt "filter" must not silently search everything

    query: StrictStr | list[StrictStr]
    k: StrictInt = Field(10, ge=1, le=1000)
    filter: dict[str, Any] | None = Field(None, description="metadata equality filter {key: value}")
    candidates: StrictInt | None = Field(None, ge=1, le=100_000, description="first-stage candidates per query")


class IndexDocumentsRequest(BaseModel):
    """``POST /v1/indexes/{name}/documents``: ``texts`` + ``ids``, or ``documents`` + ``doc_ids`` (contextual)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] | None = None
    ids: list[StrictStr] | None = None
    documents: list[list[StrictStr]] | None = None
    doc_ids: list[StrictStr] | None = None
    metadata: list[dict[str, Any] | None] | None = None
    upsert: StrictBool = False

    @model_validator(mode="after")
    def _one_kind(self) -> IndexDocumentsRequest:
        if (self.texts is None) == (self.documents is None):
            raise ValueError("give either texts (with ids) or documents (with doc_ids)")
        if self.texts is not None and (self.ids is None or self.doc_ids is not None):
            raise ValueError("texts need ids (and no doc_ids)")
        if self.documents is not None and (self.doc_ids is None or self.ids is not None):
            raise ValueError("documents need doc_ids (and no ids)")
        return self


class IndexHits(BaseModel):
    index: int
    hits: list[dict[str, Any]]


class IndexSearchResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[IndexHits]
    model: str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: str | list[float]


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ContextualEmbedding(BaseModel):
    object: Literal["contextualized_embedding"] = "contextualized_embedding"
    index: int
    data: list[Embedding]


class ContextualResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[ContextualEmbedding]
    model: str
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str


class ErrorResponse(BaseModel):
    error: ErrorBody

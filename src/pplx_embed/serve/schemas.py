"""Request and response bodies of the HTTP API (pydantic); vectors travel as :mod:`pplx_embed.wire` says."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from pplx_embed.wire import DEFAULT_FORMAT, EncodingFormat


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. OpenAI's "user" field

    model: StrictStr | None = Field(None, description="served model or alias; default: the first one")
    dimensions: StrictInt | None = Field(None, description="Matryoshka dimensions (128..full)")
    encoding_format: EncodingFormat = DEFAULT_FORMAT


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
    precision: Literal["binary+rescore", "binary", "int8", "float"] = Field(
        "binary+rescore", description="binary+rescore: binary first stage, int8 rescoring; binary: first stage "
        "only; int8 / float: exact, every item scored (the index's search.precisions list what it holds)")
    dimensions: StrictInt | None = Field(None, description="Matryoshka: search the first N dimensions (a multiple "
                                         "of 8 up to the index's; search.dimensions lists the usual ones)")
    neighbours: StrictInt = Field(0, ge=0, le=16, description="contextual hits: add the chunks up to this many "
                                  "positions before and after, from the same document")


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


class IndexTimings(BaseModel):
    """Milliseconds of each stage of a search in the server (an exact scan counts as the first stage)."""

    embed_ms: float
    first_stage_ms: float
    rescore_ms: float
    fetch_ms: float
    total_ms: float


class IndexSearchResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[IndexHits]
    model: str
    precision: str
    dimensions: int
    timings: IndexTimings


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

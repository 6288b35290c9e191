"""LangChain: :class:`PplxEmbeddings` (an ``Embeddings``) and :class:`PplxVectorStore` (a ``VectorStore``
over ``pplx_embed.index``). ``pip install 'pplx-embed[langchain]'``.

>>> from pplx_embed.integrations.langchain import PplxEmbeddings, PplxVectorStore
>>> emb = PplxEmbeddings(model="pplx-embed-v1-0.6b", precision="int8")               # local, loads on first use
>>> emb = PplxEmbeddings(model="pplx-embed-v1-0.6b", base_url="https://api.perplexity.ai", api_key="pplx-...")
>>> store = PplxVectorStore.from_texts(texts, emb, metadatas=metas, location="kb")   # or pgserver:…, milvus:…
>>> store.similarity_search("a question", k=5, filter={"lang": "en"})

Precisions: ``float``; ``int8`` (the model's int8 codes, as floats); ``binary`` (±1 floats). Compare
int8 and binary vectors by cosine (the store does). Bad input raises ``ValueError``
(:class:`~pplx_embed.errors.InputError`) with a one-line message.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.utils import secret_from_env
from langchain_core.vectorstores import VectorStore
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from pplx_embed.errors import InputError
from pplx_embed.index import Hit
from pplx_embed.integrations.collection import Collection, chunk_metadata, locate
from pplx_embed.integrations.source import EmbeddingSource, as_floats
from pplx_embed.options import EmbedderOptions


class PplxEmbeddings(BaseModel, Embeddings):
    """pplx-embed embeddings for LangChain, local (in-process ``Embedder``) or remote (``base_url``).

    ``model``: an alias, checkpoint directory or hub id (local), or the server's model name (remote).
    ``precision``: ``float`` | ``int8`` | ``binary``; ``dimensions``: Matryoshka size (``None``: full);
    ``truncation``: ``right`` / ``left`` cut over-long texts (local; default: refuse them).
    ``contextual=True`` for a contextual model (texts and queries go in as one-chunk documents);
    ``query_model`` embeds queries with another model (pplx-embed-v1 beside pplx-embed-context-v1).
    ``api_key`` defaults to ``$PPLX_API_KEY``; ``options`` loads the local model (backend, device …).
    """

    model: str | None = None
    precision: str = "float"
    dimensions: int | None = None
    truncation: str | None = None
    contextual: bool = False
    query_model: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = Field(default_factory=secret_from_env("PPLX_API_KEY", default=None))
    options: EmbedderOptions | None = None
    timeout: float = 120.0

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())
    _source: EmbeddingSource = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._source = EmbeddingSource(
            self.model, precision=self.precision, dimensions=self.dimensions, truncation=self.truncation,
            contextual=self.contextual, query_model=self.query_model, base_url=self.base_url,
            api_key=self.api_key.get_secret_value() if self.api_key else None, options=self.options,
            timeout=self.timeout)

    @property
    def source(self) -> EmbeddingSource:
        """The embedding source (numpy arrays in this precision), shared with :class:`PplxVectorStore`."""
        return self._source

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return as_floats(self._source.embed(texts))

    def embed_query(self, text: str) -> list[float]:
        return as_floats(self._source.embed([text], query=True))[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return as_floats(await self._source.aembed(texts))

    async def aembed_query(self, text: str) -> list[float]:
        return as_floats(await self._source.aembed([text], query=True))[0]

    def embed_contextual(self, documents: list[list[str]]) -> list[list[list[float]]]:
        """Late chunking: each document's chunks embedded in one pass → one vector per chunk, per document."""
        return [as_floats(a) for a in self._source.embed_contextual(documents)]

    async def aembed_contextual(self, documents: list[list[str]]) -> list[list[list[float]]]:
        return [as_floats(a) for a in await self._source.aembed_contextual(documents)]


def _document(hit: Hit) -> Document:
    return Document(id=hit.id, page_content=hit.text or "", metadata=hit.metadata)


class PplxVectorStore(VectorStore):
    """A LangChain vector store over a ``pplx_embed.index`` index at ``location`` (created on first write).

    Search is the index's: binary first stage, int8 rescoring, score = cosine; ``filter`` is its
    metadata equality filter. Adding an existing id replaces it. :meth:`add_contextual_documents`
    embeds whole documents with late chunking and stores each chunk with ``doc_id``, ``position``,
    ``char_start`` and ``char_end`` in its metadata.
    """

    def __init__(self, embedding: PplxEmbeddings, location: str | os.PathLike):
        if not isinstance(embedding, PplxEmbeddings):
            raise InputError(f"PplxVectorStore needs PplxEmbeddings (the index keeps pplx-embed's int8 and binary "
                             f"codes), got {type(embedding).__name__}")
        self.embedding = embedding
        source = embedding.source
        self._collection = Collection(location, lambda: source.model_name, source.precision,
                                      dimensions=source.dimensions, contextual=source.contextual,
                                      query_model=source.query_model)

    @property
    def embeddings(self) -> PplxEmbeddings:
        return self.embedding

    @property
    def collection(self) -> Collection:
        """The underlying index wrapper (``collection.index`` is the ``pplx_embed.index`` store)."""
        return self._collection

    # ---- writing ------------------------------------------------------------------------------
    @staticmethod
    def _inputs(texts: Iterable[str], metadatas: list[dict] | None,
                ids: Sequence[str | None] | None) -> tuple[list[str], list[dict], list[str]]:
        texts = list(texts)
        metadatas = list(metadatas) if metadatas is not None else [{}] * len(texts)
        ids = list(ids) if ids is not None else [None] * len(texts)
        if not len(texts) == len(metadatas) == len(ids):
            raise InputError(f"{len(texts)} texts but {len(metadatas)} metadatas and {len(ids)} ids")
        return texts, metadatas, [i if i is not None else str(uuid.uuid4()) for i in ids]

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts, metadatas, ids = self._inputs(texts, metadatas, ids)
        if not texts:
            return []
        return self._collection.write(ids, self.embedding.source.embed(texts), texts, metadatas)

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                         ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts, metadatas, ids = self._inputs(texts, metadatas, ids)
        if not texts:
            return []
        vectors = await self.embedding.source.aembed(texts)
        return await asyncio.to_thread(self._collection.write, ids, vectors, texts, metadatas)

    def _contextual_inputs(self, documents: list[Document], chunks: list[list[str]] | None, text_splitter: Any,
                           ids: list[str] | None) -> tuple[list[str], list[list[str]], list[dict]]:
        if (chunks is None) == (text_splitter is None):
            raise InputError("give either chunks= (each document's chunks) or text_splitter= (e.g. a "
                             "RecursiveCharacterTextSplitter)")
        if not all(isinstance(d, Document) for d in documents):
            raise InputError("documents must be LangChain Document objects")
        if chunks is None:
            chunks = [text_splitter.split_text(d.page_content) for d in documents]
        doc_ids = list(ids) if ids is not None else [d.id or str(uuid.uuid4()) for d in documents]
        if not len(documents) == len(chunks) == len(doc_ids):
            raise InputError(f"{len(documents)} documents but {len(chunks)} chunk lists and {len(doc_ids)} ids")
        metadata = [chunk_metadata(doc_id, p, span, d.metadata)
                    for doc_id, d, pieces in zip(doc_ids, documents, chunks)
                    for p, span in enumerate(locate(d.page_content, pieces))]
        return doc_ids, [list(c) for c in chunks], metadata

    def add_contextual_documents(self, documents: list[Document], *, chunks: list[list[str]] | None = None,
                                 text_splitter: Any = None, ids: list[str] | None = None) -> list[str]:
        """Embed whole documents with late chunking (the caller's ``chunks`` or a ``text_splitter``'s) and store
        one item per chunk (id ``"{doc_id}#{position}"``); re-adding a document replaces its chunks.
        Document ids: ``ids``, else each ``Document.id``, else new UUIDs. → the chunk ids."""
        doc_ids, pieces, metadata = self._contextual_inputs(documents, chunks, text_splitter, ids)
        vectors = self.embedding.source.embed_contextual(pieces)
        return self._collection.write_documents(doc_ids, pieces, vectors, metadata)

    async def aadd_contextual_documents(self, documents: list[Document], *, chunks: list[list[str]] | None = None,
                                        text_splitter: Any = None, ids: list[str] | None = None) -> list[str]:
        doc_ids, pieces, metadata = self._contextual_inputs(documents, chunks, text_splitter, ids)
        vectors = await self.embedding.source.aembed_contextual(pieces)
        return await asyncio.to_thread(self._collection.write_documents, doc_ids, pieces, vectors, metadata)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Remove items by id (``None``: all of them); missing ids are no error."""
        self._collection.delete([h.id for h in self._collection.items()] if ids is None else ids)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        return await asyncio.to_thread(self.delete, ids)

    def delete_documents(self, doc_ids: list[str]) -> int:
        """Remove every chunk of these contextual documents; → chunks removed."""
        return self._collection.delete_documents(doc_ids)

    # ---- reading ------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [_document(h) for h in self._collection.get(ids)]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await asyncio.to_thread(self.get_by_ids, ids)

    def _search(self, vector: Any, k: int, filter: dict | None) -> list[tuple[Document, float]]:
        return [(_document(h), h.score) for h in self._collection.search(vector, k, filter)[0]]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """``(document, cosine)`` pairs, best first."""
        return self._search(self.embedding.source.embed([query], query=True), k, filter)

    async def asimilarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                            **kwargs: Any) -> list[tuple[Document, float]]:
        vector = await self.embedding.source.aembed([query], query=True)
        return await asyncio.to_thread(self._search, vector, k, filter)

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter)]

    async def asimilarity_search(self, query: str, k: int = 4, filter: dict | None = None,
                                 **kwargs: Any) -> list[Document]:
        return [d for d, _ in await self.asimilarity_search_with_score(query, k, filter)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                    **kwargs: Any) -> list[Document]:
        """``embedding`` in the store's precision (int8 codes or ±1 as floats for int8 / binary)."""
        return [d for d, _ in self._search([embedding], k, filter)]

    async def asimilarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                           **kwargs: Any) -> list[Document]:
        return await asyncio.to_thread(self.similarity_search_by_vector, embedding, k, filter)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda cosine: (1.0 + cosine) / 2.0  # cosine in [-1, 1] → relevance in [0, 1]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts: list[str], embedding: PplxEmbeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, location: str | os.PathLike | None = None,
                   **kwargs: Any) -> PplxVectorStore:
        store = cls(embedding, cls._location(location))
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(cls, texts: list[str], embedding: PplxEmbeddings, metadatas: list[dict] | None = None, *,
                          ids: list[str] | None = None, location: str | os.PathLike | None = None,
                          **kwargs: Any) -> PplxVectorStore:
        store = await asyncio.to_thread(cls, embedding, cls._location(location))
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store

    @staticmethod
    def _location(location: str | os.PathLike | None) -> str | os.PathLike:
        if location is None:
            raise InputError("PplxVectorStore needs location= (a directory, pgserver:DIR#table, postgresql://…#table "
                             "or milvus:FILE.db#collection)")
        return location

    def __len__(self) -> int:
        return len(self._collection)

    def close(self) -> None:
        """Close the index; a new store on the same location reopens it."""
        self._collection.close()

    def __enter__(self) -> PplxVectorStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

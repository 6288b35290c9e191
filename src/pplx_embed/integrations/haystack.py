"""Haystack: :class:`PplxTextEmbedder`, :class:`PplxDocumentEmbedder`, :class:`PplxContextualDocumentEmbedder`,
:class:`PplxDocumentStore` (over ``pplx_embed.index``) and :class:`PplxEmbeddingRetriever`.
``pip install 'pplx-embed[haystack]'``.

>>> store = PplxDocumentStore(location="kb", model="pplx-embed-v1-0.6b", precision="int8")   # or pgserver:…
>>> indexing = Pipeline()
>>> indexing.add_component("embedder", PplxDocumentEmbedder(model="pplx-embed-v1-0.6b", precision="int8"))
>>> indexing.add_component("writer", DocumentWriter(store))
>>> indexing.connect("embedder", "writer")
>>> query = Pipeline()
>>> query.add_component("embedder", PplxTextEmbedder(model="pplx-embed-v1-0.6b", precision="int8"))
>>> query.add_component("retriever", PplxEmbeddingRetriever(document_store=store, top_k=5))
>>> query.connect("embedder.embedding", "retriever.query_embedding")

Embedders and store must agree on ``model``, ``precision`` and ``dimensions`` (the store checks
what it can: int8 stores take integer codes, binary stores ±1). Precisions: ``float``; ``int8``
(the model's int8 codes, as floats); ``binary`` (±1 floats); scores are cosines. Filters: Haystack
comparisons with ``==`` on ``meta.*`` fields, joined by ``AND`` (the index's equality filter);
anything else is a ``FilterError``. Store errors are ``DocumentStoreError`` (duplicates:
``DuplicateDocumentError``); embedder errors ``ValueError`` / ``TypeError``; all carry one line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.document_stores.errors import DocumentStoreError, DuplicateDocumentError
from haystack.document_stores.types import DuplicatePolicy, FilterPolicy, apply_filter_policy
from haystack.errors import FilterError
from haystack.utils import Secret

from pplx_embed.checks.filters import check_filter
from pplx_embed.errors import InputError
from pplx_embed.index import Hit
from pplx_embed.integrations.collection import Collection
from pplx_embed.integrations.source import EmbeddingSource, as_floats
from pplx_embed.options import EmbedderOptions

_API_KEY = Secret.from_env_var("PPLX_API_KEY", strict=False)


def _options(options: EmbedderOptions | dict | None) -> EmbedderOptions | None:
    if options is None or isinstance(options, EmbedderOptions):
        return options
    if not isinstance(options, dict):
        raise InputError(f"options must be EmbedderOptions or a dict of its fields, got {type(options).__name__}")
    known = {f.name for f in dataclasses.fields(EmbedderOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown option {unknown[0]!r}; EmbedderOptions has {', '.join(sorted(known))}")
    return EmbedderOptions(**options)


class _Embedder:
    """What the three embedders share: the settings, their serialization and the embedding source."""

    def __init__(self, model: str | None = None, precision: str = "float", dimensions: int | None = None,
                 truncation: str | None = None, contextual: bool = False, query_model: str | None = None,
                 base_url: str | None = None, api_key: Secret = _API_KEY,
                 options: EmbedderOptions | dict | None = None, timeout: float = 120.0):
        self.model, self.precision, self.dimensions, self.truncation = model, precision, dimensions, truncation
        self.contextual, self.query_model, self.base_url, self.api_key = contextual, query_model, base_url, api_key
        self.options, self.timeout = _options(options), timeout
        self.source = EmbeddingSource(model, precision=precision, dimensions=dimensions, truncation=truncation,
                                      contextual=contextual, query_model=query_model, base_url=base_url,
                                      api_key=api_key.resolve_value() if base_url and api_key else None,
                                      options=self.options, timeout=timeout)

    def _settings(self) -> dict[str, Any]:
        return {"model": self.model, "precision": self.precision, "dimensions": self.dimensions,
                "truncation": self.truncation, "contextual": self.contextual, "query_model": self.query_model,
                "base_url": self.base_url, "api_key": self.api_key.to_dict() if self.api_key else None,
                "options": dataclasses.asdict(self.options) if self.options else None, "timeout": self.timeout}

    def warm_up(self) -> None:
        """Load the local model (once per process for the same options); nothing to do remotely."""
        self.source.warm_up()

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, **self._settings())

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return default_from_dict(cls, data)

    def _meta(self) -> dict[str, Any]:
        return {"model": self.source.model_name, "precision": self.precision, "dimensions": self.dimensions}


@component
class PplxTextEmbedder(_Embedder):
    """Embeds a query string (with the query model when one is set; ``[[text]]`` for a contextual model)."""

    @staticmethod
    def _text(text: Any) -> list[str]:
        if not isinstance(text, str):
            raise TypeError("PplxTextEmbedder expects a string as input; embed Documents with PplxDocumentEmbedder")
        return [text]

    @component.output_types(embedding=list[float], meta=dict[str, Any])
    def run(self, text: str) -> dict[str, Any]:
        return {"embedding": as_floats(self.source.embed(self._text(text), query=True))[0], "meta": self._meta()}

    @component.output_types(embedding=list[float], meta=dict[str, Any])
    async def run_async(self, text: str) -> dict[str, Any]:
        vectors = await self.source.aembed(self._text(text), query=True)
        return {"embedding": as_floats(vectors)[0], "meta": self._meta()}


def _check_documents(documents: Any, who: str) -> list[Document]:
    if not isinstance(documents, list) or not all(isinstance(d, Document) for d in documents):
        raise TypeError(f"{who} expects a list of Documents as input; embed a string with PplxTextEmbedder")
    return documents


class _DocumentsEmbedder(_Embedder):
    """The document embedders' settings: ``meta_fields_to_embed`` values go before the content, joined by
    ``embedding_separator``. (Haystack's ``@component`` copies a class, so components do not subclass
    each other; they share this undecorated base.)"""

    def __init__(self, model: str | None = None, precision: str = "float", dimensions: int | None = None,
                 truncation: str | None = None, contextual: bool = False, query_model: str | None = None,
                 base_url: str | None = None, api_key: Secret = _API_KEY,
                 options: EmbedderOptions | dict | None = None, timeout: float = 120.0,
                 meta_fields_to_embed: list[str] | None = None, embedding_separator: str = "\n"):
        super().__init__(model, precision, dimensions, truncation, contextual, query_model, base_url, api_key,
                         options, timeout)
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "meta_fields_to_embed": self.meta_fields_to_embed,
                "embedding_separator": self.embedding_separator}

    def _texts(self, documents: list[Document]) -> list[str]:
        return [self.embedding_separator.join([str(d.meta[k]) for k in self.meta_fields_to_embed
                                               if d.meta.get(k) is not None] + [d.content or ""])
                for d in _check_documents(documents, type(self).__name__)]


@component
class PplxDocumentEmbedder(_DocumentsEmbedder):
    """Embeds each Document (content after its ``meta_fields_to_embed`` values) and returns copies with
    ``embedding`` set."""

    @component.output_types(documents=list[Document], meta=dict[str, Any])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        vectors = as_floats(self.source.embed(self._texts(documents))) if documents else []
        return {"documents": [dataclasses.replace(d, embedding=v) for d, v in zip(documents, vectors)],
                "meta": self._meta()}

    @component.output_types(documents=list[Document], meta=dict[str, Any])
    async def run_async(self, documents: list[Document]) -> dict[str, Any]:
        vectors = as_floats(await self.source.aembed(self._texts(documents))) if documents else []
        return {"documents": [dataclasses.replace(d, embedding=v) for d, v in zip(documents, vectors)],
                "meta": self._meta()}


@component
class PplxContextualDocumentEmbedder(_DocumentsEmbedder):
    """Late chunking of split documents: the chunks of each source document (grouped by
    ``meta[source_id_field]``, as ``DocumentSplitter`` sets it; in ``split_id`` order) are embedded in one
    pass. Each chunk gets one embedding and ``meta`` ``doc_id``, ``position``, ``char_start`` and
    ``char_end`` (from ``split_idx_start``; ``None`` without it). Chunks without a source id stand alone."""

    def __init__(self, model: str | None = None, precision: str = "float", dimensions: int | None = None,
                 truncation: str | None = None, contextual: bool = True, query_model: str | None = None,
                 base_url: str | None = None, api_key: Secret = _API_KEY,
                 options: EmbedderOptions | dict | None = None, timeout: float = 120.0,
                 meta_fields_to_embed: list[str] | None = None, embedding_separator: str = "\n",
                 source_id_field: str = "source_id"):
        _DocumentsEmbedder.__init__(self, model, precision, dimensions, truncation, contextual, query_model, base_url,
                                    api_key, options, timeout, meta_fields_to_embed, embedding_separator)
        self.source_id_field = source_id_field

    def _settings(self) -> dict[str, Any]:
        return {**_DocumentsEmbedder._settings(self), "source_id_field": self.source_id_field}

    def _groups(self, documents: list[Document]) -> list[list[int]]:
        groups: dict[Any, list[int]] = {}
        for i, d in enumerate(documents):
            groups.setdefault(d.meta.get(self.source_id_field, ("alone", i)), []).append(i)
        for members in groups.values():
            if all(isinstance(documents[i].meta.get("split_id"), int) for i in members):
                members.sort(key=lambda i: documents[i].meta["split_id"])
        return list(groups.values())

    def _inputs(self, documents: list[Document]) -> tuple[list[list[int]], list[list[str]]]:
        texts = self._texts(documents)
        groups = self._groups(documents)
        return groups, [[texts[i] for i in members] for members in groups]

    def _chunks(self, documents: list[Document], groups: list[list[int]], arrays: list) -> list[Document]:
        out: list[Document] = list(documents)
        for members, vectors in zip(groups, arrays):
            for position, (i, vector) in enumerate(zip(members, as_floats(vectors))):
                d = documents[i]
                start = d.meta.get("split_idx_start")
                start = start if isinstance(start, int) else None
                meta = {**d.meta, "doc_id": str(d.meta.get(self.source_id_field, d.id)), "position": position,
                        "char_start": start, "char_end": start + len(d.content or "") if start is not None else None}
                out[i] = dataclasses.replace(d, embedding=vector, meta=meta)
        return out

    @component.output_types(documents=list[Document], meta=dict[str, Any])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        groups, chunks = self._inputs(documents)
        arrays = self.source.embed_contextual(chunks) if chunks else []
        return {"documents": self._chunks(documents, groups, arrays), "meta": self._meta()}

    @component.output_types(documents=list[Document], meta=dict[str, Any])
    async def run_async(self, documents: list[Document]) -> dict[str, Any]:
        groups, chunks = self._inputs(documents)
        arrays = await self.source.aembed_contextual(chunks) if chunks else []
        return {"documents": self._chunks(documents, groups, arrays), "meta": self._meta()}


def _equality(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Haystack filters → the index's equality filter: ``==`` comparisons on ``meta.*`` joined by ``AND``."""
    if not filters:
        return None
    if not isinstance(filters, dict):
        raise FilterError(f"filters must be a dict, got {type(filters).__name__}")
    if "conditions" in filters:
        if filters.get("operator") != "AND":
            raise FilterError(f"the index filters by equality joined by AND; got logical operator "
                              f"{filters.get('operator')!r}")
        where: dict[str, Any] = {}
        for condition in filters["conditions"]:
            where.update(_equality(condition) or {})
    else:
        field, operator = filters.get("field"), filters.get("operator")
        if operator != "==" or not isinstance(field, str) or not field.startswith("meta."):
            raise FilterError(f"the index filters meta fields by equality ('meta.<key>' '=='); got {field!r} "
                              f"{operator!r}")
        where = {field.removeprefix("meta."): filters.get("value")}
    try:
        return check_filter(where)
    except InputError as exc:
        raise FilterError(str(exc)) from None


@contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except InputError as exc:
        raise DocumentStoreError(str(exc)) from None


def _document(hit: Hit, score: float | None = None) -> Document:
    return Document(id=hit.id, content=hit.text, meta=hit.metadata, score=score)


class PplxDocumentStore:
    """A Haystack document store over a ``pplx_embed.index`` index at ``location`` (created on first write).

    ``model`` is the embedders' model (the index records it and refuses another); ``precision`` and
    ``dimensions`` are the embedders' too. Every written Document needs an embedding. Retrieval is the
    index's (binary first stage, int8 rescoring), score = cosine. Listing documents (``filter_documents``)
    is limited to 16,384 matches.
    """

    def __init__(self, location: str | os.PathLike, model: str, precision: str = "float",
                 dimensions: int | None = None, contextual: bool = False, query_model: str | None = None):
        if not isinstance(model, str) or not model:
            raise InputError("PplxDocumentStore needs model=, the name of the embedders' model")
        self.location, self.model, self.precision = str(location), model, precision
        self.dimensions, self.contextual, self.query_model = dimensions, contextual, query_model
        self._collection = Collection(location, model, precision, dimensions=dimensions, contextual=contextual,
                                      query_model=query_model)

    @property
    def collection(self) -> Collection:
        return self._collection

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, location=self.location, model=self.model, precision=self.precision,
                               dimensions=self.dimensions, contextual=self.contextual, query_model=self.query_model)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PplxDocumentStore:
        return default_from_dict(cls, data)

    def count_documents(self) -> int:
        return len(self._collection)

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Document]:
        where = _equality(filters)
        with _store_errors():
            return [_document(h) for h in self._collection.items(where)]

    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        """Store embedded Documents; ``NONE`` / ``FAIL`` refuse the whole batch when an id exists (nothing is
        written), ``SKIP`` leaves existing ids alone, ``OVERWRITE`` replaces them. → documents written."""
        documents = _check_documents(documents, "PplxDocumentStore.write_documents")
        ids = [d.id for d in documents]
        if policy in (DuplicatePolicy.NONE, DuplicatePolicy.FAIL) and len(set(ids)) != len(ids):
            raise DuplicateDocumentError("the same document id appears twice in one write")
        if policy == DuplicatePolicy.SKIP:
            with _store_errors():
                present = {h.id for h in self._collection.get(ids)}
            seen: set[str] = set()
            documents = [d for d in documents if d.id not in present and not (d.id in seen or seen.add(d.id))]
        if not documents:
            return 0
        missing = [d.id for d in documents if d.embedding is None]
        if missing:
            raise DocumentStoreError(f"document {missing[0]!r} has no embedding; run PplxDocumentEmbedder first")
        try:
            self._collection.write([d.id for d in documents], [d.embedding for d in documents],
                                   [d.content or "" for d in documents], [d.meta for d in documents],
                                   replace=policy == DuplicatePolicy.OVERWRITE)
        except InputError as exc:
            error = DuplicateDocumentError if "already in the index" in str(exc) else DocumentStoreError
            raise error(str(exc)) from None
        return len(documents)

    def delete_documents(self, document_ids: list[str]) -> None:
        """Remove documents by id (missing ids are no error)."""
        with _store_errors():
            self._collection.delete(document_ids)

    def delete_by_filter(self, filters: dict[str, Any]) -> int:
        """Remove the documents matching ``filters`` (e.g. every chunk of ``meta.doc_id``); → how many."""
        where = _equality(filters)
        with _store_errors():
            return self._collection.delete([h.id for h in self._collection.items(where)])

    def delete_all_documents(self) -> None:
        with _store_errors():
            self._collection.delete([h.id for h in self._collection.items()])

    def embedding_retrieval(self, query_embedding: list[float], filters: dict[str, Any] | None = None,
                            top_k: int = 10, scale_score: bool = False) -> list[Document]:
        """The ``top_k`` documents nearest ``query_embedding`` (cosine; ``scale_score``: mapped to 0…1)."""
        where = _equality(filters)
        if top_k == 0:
            return []
        with _store_errors():
            hits = self._collection.search([query_embedding], top_k, where)[0]
        return [_document(h, (1 + h.score) / 2 if scale_score else h.score) for h in hits]

    async def count_documents_async(self) -> int:
        return await asyncio.to_thread(self.count_documents)

    async def filter_documents_async(self, filters: dict[str, Any] | None = None) -> list[Document]:
        return await asyncio.to_thread(self.filter_documents, filters)

    async def write_documents_async(self, documents: list[Document],
                                    policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        return await asyncio.to_thread(self.write_documents, documents, policy)

    async def delete_documents_async(self, document_ids: list[str]) -> None:
        await asyncio.to_thread(self.delete_documents, document_ids)

    async def embedding_retrieval_async(self, query_embedding: list[float], filters: dict[str, Any] | None = None,
                                        top_k: int = 10, scale_score: bool = False) -> list[Document]:
        return await asyncio.to_thread(self.embedding_retrieval, query_embedding, filters, top_k, scale_score)

    def close(self) -> None:
        """Close the index; a new store on the same location reopens it."""
        self._collection.close()


@component
class PplxEmbeddingRetriever:
    """Retrieves Documents from a :class:`PplxDocumentStore` by a query embedding (from :class:`PplxTextEmbedder`)."""

    def __init__(self, document_store: PplxDocumentStore, filters: dict[str, Any] | None = None, top_k: int = 10,
                 scale_score: bool = False, filter_policy: FilterPolicy = FilterPolicy.REPLACE):
        if not isinstance(document_store, PplxDocumentStore):
            raise TypeError("document_store must be a PplxDocumentStore")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.document_store, self.filters, self.top_k, self.scale_score = document_store, filters, top_k, scale_score
        self.filter_policy = FilterPolicy.from_str(filter_policy) if isinstance(filter_policy, str) else filter_policy

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, document_store=self.document_store, filters=self.filters, top_k=self.top_k,
                               scale_score=self.scale_score, filter_policy=self.filter_policy.value)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PplxEmbeddingRetriever:
        return default_from_dict(cls, data)

    def _arguments(self, filters: dict[str, Any] | None, top_k: int | None) -> tuple[dict | None, int]:
        return apply_filter_policy(self.filter_policy, self.filters, filters), self.top_k if top_k is None else top_k

    @component.output_types(documents=list[Document])
    def run(self, query_embedding: list[float], filters: dict[str, Any] | None = None,
            top_k: int | None = None) -> dict[str, list[Document]]:
        filters, top_k = self._arguments(filters, top_k)
        return {"documents": self.document_store.embedding_retrieval(query_embedding, filters, top_k,
                                                                     self.scale_score)}

    @component.output_types(documents=list[Document])
    async def run_async(self, query_embedding: list[float], filters: dict[str, Any] | None = None,
                        top_k: int | None = None) -> dict[str, list[Document]]:
        filters, top_k = self._arguments(filters, top_k)
        return {"documents": await self.document_store.embedding_retrieval_async(query_embedding, filters, top_k,
                                                                                 self.scale_score)}

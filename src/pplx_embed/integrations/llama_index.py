"""LlamaIndex: :class:`PplxEmbedding` (a ``BaseEmbedding``) and :class:`PplxVectorStore` (a
``BasePydanticVectorStore`` over ``pplx_embed.index``). ``pip install 'pplx-embed[llama-index]'``.

>>> from pplx_embed.integrations.llama_index import PplxEmbedding, PplxVectorStore
>>> embed_model = PplxEmbedding(model_name="pplx-embed-context-v1-0.6b", precision="int8", contextual=True)
>>> store = PplxVectorStore(location="kb", embed_model=embed_model)          # or pgserver:…, milvus:…
>>> pipeline = IngestionPipeline(transformations=[SentenceSplitter(), embed_model], vector_store=store)
>>> pipeline.run(documents=docs)                                            # late chunking per document
>>> VectorStoreIndex.from_vector_store(store, embed_model=embed_model).as_retriever().retrieve("a question")

With ``contextual=True`` the embedding, run as a transformation on nodes, embeds each source
document's nodes together with late chunking (grouped by ``ref_doc_id``, in text order); the nodes
keep their relationships (source, previous, next) and character offsets, which the store keeps.
Precisions: ``float``; ``int8`` (the model's int8 codes, as floats); ``binary`` (±1 floats); the
store scores by cosine. Bad input raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.schema import BaseNode, Document, MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from pplx_embed.errors import InputError
from pplx_embed.index import Hit
from pplx_embed.integrations.collection import Collection, locate
from pplx_embed.integrations.source import EmbeddingSource, as_floats
from pplx_embed.options import EmbedderOptions


class PplxEmbedding(BaseEmbedding):
    """pplx-embed for LlamaIndex, local (in-process ``Embedder``) or remote (``base_url`` + ``api_key``).

    ``model_name``: alias, checkpoint directory or hub id (local) or the server's model name (remote);
    ``precision``: ``float`` | ``int8`` | ``binary``; ``dimensions``: Matryoshka size; ``truncation``:
    ``right`` / ``left`` (local); ``contextual``: a contextual model (late chunking of nodes, queries as
    one-chunk documents); ``query_model``: another model for queries. ``api_key`` defaults to ``$PPLX_API_KEY``.
    """

    model_config = ConfigDict(protected_namespaces=("pydantic_model_",), arbitrary_types_allowed=True)
    model_name: str | None = Field(default=None, description="model alias, directory, hub id or served name")
    precision: str = Field(default="float", description="float, int8 or binary")
    dimensions: int | None = Field(default=None, description="Matryoshka dimensions (None: full)")
    truncation: str | None = Field(default=None, description="right / left cut over-long texts (local mode)")
    contextual: bool = Field(default=False, description="late chunking per source document")
    query_model: str | None = Field(default=None, description="a separate model for queries")
    base_url: str | None = Field(default=None, description="a pplx-embed server or the hosted API")
    api_key: str | None = Field(default_factory=lambda: os.environ.get("PPLX_API_KEY"), exclude=True, repr=False)
    options: EmbedderOptions | None = Field(default=None, description="local model loading (backend, device …)")
    timeout: float = 120.0
    embed_batch_size: int = Field(default=128, gt=0, le=2048)
    _source: EmbeddingSource = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._source = EmbeddingSource(
            self.model_name, precision=self.precision, dimensions=self.dimensions, truncation=self.truncation,
            contextual=self.contextual, query_model=self.query_model, base_url=self.base_url, api_key=self.api_key,
            options=self.options, timeout=self.timeout)

    @classmethod
    def class_name(cls) -> str:
        return "PplxEmbedding"

    @property
    def source(self) -> EmbeddingSource:
        return self._source

    def _get_query_embedding(self, query: str) -> list[float]:
        return as_floats(self._source.embed([query], query=True))[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return as_floats(await self._source.aembed([query], query=True))[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return as_floats(self._source.embed([text]))[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return as_floats(await self._source.aembed([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return as_floats(self._source.embed(texts))

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return as_floats(await self._source.aembed(texts))

    def get_contextual_embeddings(self, documents: list[list[str]]) -> list[list[list[float]]]:
        """Late chunking: one vector per chunk of each document (chunks in order)."""
        return [as_floats(a) for a in self._source.embed_contextual(documents)]

    async def aget_contextual_embeddings(self, documents: list[list[str]]) -> list[list[list[float]]]:
        return [as_floats(a) for a in await self._source.aembed_contextual(documents)]

    # ---- as a transformation on nodes -----------------------------------------------------------
    @staticmethod
    def _documents(nodes: Sequence[BaseNode]) -> list[list[int]]:
        """Node indices grouped by source document (first appearance order), each in text order."""
        groups: dict[str, list[int]] = {}
        for i, node in enumerate(nodes):
            groups.setdefault(node.ref_doc_id or f"\0{i}", []).append(i)  # no source document: on its own
        for members in groups.values():
            if all(nodes[i].start_char_idx is not None for i in members):
                members.sort(key=lambda i: nodes[i].start_char_idx)
        return list(groups.values())

    def _late_chunk(self, nodes: Sequence[BaseNode]) -> tuple[list[list[int]], list[list[str]]]:
        groups = self._documents(nodes)
        return groups, [[nodes[i].get_content(metadata_mode=MetadataMode.EMBED) for i in g] for g in groups]

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """Embed nodes; a contextual embedding late-chunks each source document's nodes in one pass."""
        if not self.contextual:
            return super().__call__(nodes, **kwargs)
        groups, documents = self._late_chunk(nodes)
        for members, vectors in zip(groups, self.get_contextual_embeddings(documents)):
            for i, vector in zip(members, vectors):
                nodes[i].embedding = vector
        return nodes

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        if not self.contextual:
            return await super().acall(nodes, **kwargs)
        groups, documents = self._late_chunk(nodes)
        for members, vectors in zip(groups, await self.aget_contextual_embeddings(documents)):
            for i, vector in zip(members, vectors):
                nodes[i].embedding = vector
        return nodes


def nodes_from_chunks(document: Document, chunks: Sequence[str]) -> list[TextNode]:
    """Your own chunks of ``document`` as nodes ``"{doc_id}#{position}"`` with LlamaIndex's relationships
    (source, previous, next), character offsets (``None`` for a chunk that is not a substring) and the
    document's metadata — ready for a contextual :class:`PplxEmbedding`."""
    if not isinstance(document, Document):
        raise InputError(f"document must be a LlamaIndex Document, got {type(document).__name__}")
    if isinstance(chunks, str) or not chunks or not all(isinstance(c, str) for c in chunks):
        raise InputError("chunks must be a non-empty list of strings")
    spans = locate(document.text, chunks)
    ids = [f"{document.doc_id}#{p}" for p in range(len(chunks))]
    nodes = []
    for p, (chunk, span) in enumerate(zip(chunks, spans)):
        relations = {NodeRelationship.SOURCE: document.as_related_node_info()}
        if p > 0:
            relations[NodeRelationship.PREVIOUS] = RelatedNodeInfo(node_id=ids[p - 1])
        if p + 1 < len(chunks):
            relations[NodeRelationship.NEXT] = RelatedNodeInfo(node_id=ids[p + 1])
        nodes.append(TextNode(id_=ids[p], text=chunk, metadata=dict(document.metadata), relationships=relations,
                              start_char_idx=span[0] if span else None, end_char_idx=span[1] if span else None,
                              excluded_embed_metadata_keys=list(document.excluded_embed_metadata_keys),
                              excluded_llm_metadata_keys=list(document.excluded_llm_metadata_keys)))
    return nodes


def _equality(filters: MetadataFilters | None, doc_ids: list[str] | None) -> dict[str, Any] | None:
    """LlamaIndex filters → the index's equality filter (``==`` joined by AND; one ``doc_ids`` entry)."""
    where: dict[str, Any] = {}
    if filters is not None:
        if len(filters.filters) > 1 and filters.condition not in (None, FilterCondition.AND):
            raise InputError(f"the index filters by equality joined by AND; got condition {filters.condition.value!r}")
        for f in filters.filters:
            if isinstance(f, MetadataFilters) or f.operator != FilterOperator.EQ or isinstance(f.value, list):
                what = "nested filters" if isinstance(f, MetadataFilters) else f"operator {f.operator.value!r}"
                raise InputError(f"the index filters metadata by equality (==) only; got {what}")
            where[f.key] = f.value
    if doc_ids:
        if len(doc_ids) != 1:
            raise InputError("the index filters by one document id at a time (doc_ids with one entry)")
        where["doc_id"] = doc_ids[0]
    return where or None


def _node(hit: Hit) -> BaseNode:
    if "_node_content" in hit.metadata:
        return metadata_dict_to_node(hit.metadata, hit.text)
    return TextNode(id_=hit.id, text=hit.text or "", metadata=hit.metadata)  # an item written by another tool


class PplxVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over a ``pplx_embed.index`` index at ``location`` (created on first add).

    Nodes keep their text, metadata, relationships and offsets; ``delete(ref_doc_id)`` removes a source
    document's nodes; queries take ``MetadataFilters`` of ``==`` joined by AND. Search is the index's
    (binary first stage, int8 rescoring), similarity = cosine.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    location: str
    embed_model: PplxEmbedding
    _collection: Collection = PrivateAttr()

    def __init__(self, location: str | os.PathLike, embed_model: PplxEmbedding, **kwargs: Any):
        if not isinstance(embed_model, PplxEmbedding):
            raise InputError(f"PplxVectorStore needs a PplxEmbedding (the index keeps pplx-embed's int8 and binary "
                             f"codes), got {type(embed_model).__name__}")
        super().__init__(location=str(location), embed_model=embed_model, **kwargs)

    def model_post_init(self, context: Any, /) -> None:
        source = self.embed_model.source
        self._collection = Collection(self.location, lambda: source.model_name, source.precision,
                                      dimensions=source.dimensions, contextual=source.contextual,
                                      query_model=source.query_model)

    @classmethod
    def class_name(cls) -> str:
        return "PplxVectorStore"

    @property
    def client(self) -> Collection:
        return self._collection

    # ---- writing ------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store embedded nodes (replacing same ids); atomic. → their ids."""
        if not nodes:
            return []
        missing = [n.node_id for n in nodes if n.embedding is None]
        if missing:
            raise InputError(f"node {missing[0]!r} has no embedding; embed nodes (e.g. with PplxEmbedding) first")
        return self._collection.write(
            [n.node_id for n in nodes], [n.embedding for n in nodes],
            [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes],
            [node_to_metadata_dict(n, remove_text=True, flat_metadata=self.flat_metadata) for n in nodes])

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add, nodes)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Remove every node of the source document ``ref_doc_id``."""
        self._collection.delete([h.id for h in self._collection.items({"ref_doc_id": ref_doc_id})])

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id)

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        self._collection.delete([n.node_id for n in self.get_nodes(node_ids, filters)])

    async def adelete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                            **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters)

    def clear(self) -> None:
        self._collection.delete([h.id for h in self._collection.items()])

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    # ---- reading ------------------------------------------------------------------------------
    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        hits = self._collection.items(_equality(filters, None))
        wanted = set(node_ids) if node_ids is not None else None
        return [_node(h) for h in hits if wanted is None or h.id in wanted]

    async def aget_nodes(self, node_ids: list[str] | None = None,
                         filters: MetadataFilters | None = None) -> list[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise InputError(f"PplxVectorStore answers dense queries (mode 'default'), not {query.mode.value!r}")
        if query.query_embedding is None:
            raise InputError("the query has no embedding; query through an index or retriever with a PplxEmbedding")
        if query.node_ids:
            raise InputError("PplxVectorStore cannot restrict a query to node_ids; filter by metadata instead")
        where = _equality(query.filters, query.doc_ids)
        hits = self._collection.search([query.query_embedding], query.similarity_top_k, where)[0]
        return VectorStoreQueryResult(nodes=[_node(h) for h in hits], similarities=[h.score for h in hits],
                                      ids=[h.id for h in hits])

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query)

    def close(self) -> None:
        """Close the index; a new store on the same location reopens it."""
        self._collection.close()

"""LlamaIndex integration: PplxEmbedding's precisions and late chunking over a node parser's nodes, the vector
store's round trip (add, filtered query, delete by source document, reopen) on the embedded index and on a real
PostgreSQL + pgvector, relationships and offsets kept, and bad input."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.ingestion import IngestionPipeline  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeRelationship, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from pplx_embed.integrations.llama_index import PplxEmbedding, PplxVectorStore, nodes_from_chunks  # noqa: E402

PARIS = ("Paris is the capital and largest city of France. The Seine river flows through the city centre. "
         "The Eiffel Tower was built for the 1889 World's Fair. It is the most visited paid monument in the world.")
BERLIN = ("Berlin is the capital of Germany. The Brandenburg Gate is its best known landmark. "
          "The city was divided by a wall from 1961 to 1989.")


def documents() -> list[Document]:
    return [Document(text=PARIS, doc_id="paris", metadata={"lang": "en", "country": "FR"}),
            Document(text=BERLIN, doc_id="berlin", metadata={"lang": "en", "country": "DE"})]


def equals(country: str) -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key="country", value=country)])


@pytest.mark.parametrize("precision, quantization", [("int8", "int8"), ("binary", "pm1"), ("float", "float")])
def test_precisions_are_the_python_apis(minilm, precision, quantization):
    emb = PplxEmbedding(model_name="minilm", precision=precision, dimensions=128)
    got = np.array(emb.get_text_embedding_batch([PARIS, BERLIN]))
    want = minilm.encode([PARIS, BERLIN], quantization, dimensions=128)
    assert got.shape == (2, 128) and np.allclose(got, want, atol=1e-6)
    assert np.allclose(emb.get_query_embedding(BERLIN), got[1], atol=1e-6)
    assert np.allclose(asyncio.run(emb.aget_query_embedding(BERLIN)), got[1], atol=1e-6)


def test_late_chunking_embeds_each_source_documents_nodes_together(minilm):
    emb = PplxEmbedding(model_name="minilm", precision="int8", contextual=True)
    nodes = SentenceSplitter(chunk_size=25, chunk_overlap=0)(documents())
    nodes = list(reversed(nodes))  # out of order on purpose: grouped by document and sorted by offset
    emb(nodes)
    for doc in ("paris", "berlin"):
        mine = sorted((n for n in nodes if n.ref_doc_id == doc), key=lambda n: n.start_char_idx)
        assert len(mine) > 1
        want = minilm.encode_contextual([[n.get_content(metadata_mode=MetadataMode.EMBED) for n in mine]], "int8")[0]
        assert np.array_equal(np.array([n.embedding for n in mine]), want)
    alone = TextNode(text="A node without a source document.")
    emb([alone])
    assert np.array_equal(alone.embedding, minilm.encode_contextual([[alone.get_content(MetadataMode.EMBED)]],
                                                                    "int8")[0][0])
    asyncio.run(emb.acall(nodes[:1]))  # the async transformation too


def test_round_trip_add_filter_delete_reopen(store_location):
    emb = PplxEmbedding(model_name="minilm", precision="int8", contextual=True)
    store = PplxVectorStore(location=store_location, embed_model=emb)
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=25, chunk_overlap=0), emb],
                                 vector_store=store)
    nodes = pipeline.run(documents=documents())
    index = VectorStoreIndex.from_vector_store(store, embed_model=emb)
    hits = index.as_retriever(similarity_top_k=3).retrieve("When was the Eiffel Tower built?")
    best = hits[0].node
    assert best.ref_doc_id == "paris" and "Eiffel" in best.get_content() and hits[0].score >= hits[1].score
    assert PARIS[best.start_char_idx : best.end_char_idx] == best.get_content()  # offsets kept
    assert best.relationships[NodeRelationship.SOURCE].node_id == "paris"
    assert {NodeRelationship.PREVIOUS, NodeRelationship.NEXT} & set(best.relationships)
    assert best.metadata == {"lang": "en", "country": "FR"}
    german = index.as_retriever(similarity_top_k=5, filters=equals("DE")).retrieve("Eiffel Tower")
    assert german and {h.node.ref_doc_id for h in german} == {"berlin"}
    assert asyncio.run(index.as_retriever(filters=equals("FR")).aretrieve("river"))[0].node.ref_doc_id == "paris"
    assert {n.node_id for n in store.get_nodes(filters=equals("DE"))} == {n.node_id for n in nodes
                                                                         if n.ref_doc_id == "berlin"}

    store.delete("paris")
    assert {n.ref_doc_id for n in store.get_nodes()} == {"berlin"}
    store.close()
    reopened = PplxVectorStore(location=store_location, embed_model=emb)
    assert len(reopened.get_nodes()) == len([n for n in nodes if n.ref_doc_id == "berlin"])
    result = reopened.query(VectorStoreQuery(query_embedding=emb.get_query_embedding("a wall"), similarity_top_k=1))
    assert result.nodes[0].ref_doc_id == "berlin" and result.ids == [result.nodes[0].node_id]
    reopened.delete_nodes([result.ids[0]])
    assert result.ids[0] not in {n.node_id for n in reopened.get_nodes()}
    reopened.clear()
    assert reopened.get_nodes() == []
    reopened.close()


def test_nodes_from_your_own_chunks(tmp_path, minilm):
    doc = documents()[0]
    chunks = [PARIS[:49], PARIS[50:98], PARIS[99:]]
    nodes = nodes_from_chunks(doc, chunks)
    assert [n.node_id for n in nodes] == ["paris#0", "paris#1", "paris#2"]
    assert [(n.start_char_idx, n.end_char_idx) for n in nodes] == [(0, 49), (50, 98), (99, len(PARIS))]
    assert nodes[1].relationships[NodeRelationship.PREVIOUS].node_id == "paris#0"
    assert nodes[1].relationships[NodeRelationship.NEXT].node_id == "paris#2"
    emb = PplxEmbedding(model_name="minilm", precision="int8", contextual=True)
    store = PplxVectorStore(location=tmp_path / "kb", embed_model=emb)
    VectorStoreIndex(emb(nodes), storage_context=StorageContext.from_defaults(vector_store=store), embed_model=emb)
    want = minilm.encode_contextual([[n.get_content(MetadataMode.EMBED) for n in nodes]], "int8")[0]
    assert np.array_equal([n.embedding for n in nodes], want)
    assert {n.node_id for n in store.get_nodes(node_ids=["paris#1", "nope"])} == {"paris#1"}
    store.close()


def test_bad_input_is_one_clear_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown precision 'float16'; choose one of float, int8, binary"):
        PplxEmbedding(model_name="minilm", precision="float16")
    emb = PplxEmbedding(model_name="minilm", precision="int8")
    with pytest.raises(ValueError, match=r"text 0 is empty"):
        emb.get_text_embedding("   ")
    store = PplxVectorStore(location=tmp_path / "kb", embed_model=emb)
    node = TextNode(text="kept", id_="kept", embedding=emb.get_text_embedding("kept"))
    store.add([node])
    with pytest.raises(ValueError, match="has no embedding"):
        store.add([TextNode(text="x", id_="x")])
    with pytest.raises(ValueError, match="not int8 codes"):
        store.add([TextNode(text="x", id_="x", embedding=[0.5] * 384)])
    query = VectorStoreQuery(query_embedding=node.embedding, similarity_top_k=1)
    for filters, message in (
            (MetadataFilters(filters=[MetadataFilter(key="n", value=1, operator=FilterOperator.GT)]), "'>'"),
            (MetadataFilters(filters=[MetadataFilter(key="a", value=1), MetadataFilter(key="b", value=2)],
                             condition=FilterCondition.OR), "'or'")):
        query.filters = filters
        with pytest.raises(ValueError, match=message):
            store.query(query)
    assert [n.node_id for n in store.get_nodes()] == ["kept"]  # nothing half-written
    store.close()
    with pytest.raises(ValueError, match="holds 384-dimension vectors; these embeddings have dimensions=256"):
        PplxVectorStore(location=tmp_path / "kb", embed_model=PplxEmbedding(model_name="minilm", dimensions=256))
    with pytest.raises(ValueError, match="needs a PplxEmbedding"):
        PplxVectorStore(location=tmp_path / "kb", embed_model="minilm")
    with pytest.raises(ValueError, match="chunks must be a non-empty list"):
        nodes_from_chunks(documents()[0], [])

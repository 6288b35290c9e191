"""Haystack integration: the embedders (sync, async, serialization, meta fields), late chunking of
DocumentSplitter chunks, the document store's round trip (write, filtered retrieval, delete, reopen) on the
embedded index and on a real PostgreSQL + pgvector, duplicate policies, pipelines, and bad input."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("haystack")

from haystack import Document, Pipeline  # noqa: E402
from haystack.components.preprocessors import DocumentSplitter  # noqa: E402
from haystack.components.writers import DocumentWriter  # noqa: E402
from haystack.document_stores.errors import DocumentStoreError, DuplicateDocumentError  # noqa: E402
from haystack.document_stores.types import DuplicatePolicy  # noqa: E402
from haystack.errors import FilterError  # noqa: E402

from pplx_embed.integrations.haystack import (  # noqa: E402
    PplxContextualDocumentEmbedder,
    PplxDocumentEmbedder,
    PplxDocumentStore,
    PplxEmbeddingRetriever,
    PplxTextEmbedder,
)

MODULE = "pplx_embed.integrations.haystack"
PARIS = ("Paris is the capital and largest city of France. The Seine river flows through the city centre. "
         "The Eiffel Tower was built for the 1889 World's Fair. It is the most visited paid monument in the world.")
BERLIN = ("Berlin is the capital of Germany. The Brandenburg Gate is its best known landmark. "
          "The city was divided by a wall from 1961 to 1989.")


def sources() -> list[Document]:
    return [Document(id="paris", content=PARIS, meta={"country": "FR"}),
            Document(id="berlin", content=BERLIN, meta={"country": "DE"})]


def country(value: str) -> dict:
    return {"field": "meta.country", "operator": "==", "value": value}


@pytest.mark.parametrize("precision, quantization", [("int8", "int8"), ("binary", "pm1"), ("float", "float")])
def test_embedders_give_the_python_apis_vectors(minilm, precision, quantization):
    text = PplxTextEmbedder(model="minilm", precision=precision, dimensions=256)
    text.warm_up()
    out = text.run(text=PARIS)
    assert out["meta"] == {"model": "minilm", "precision": precision, "dimensions": 256}
    assert np.allclose(out["embedding"], minilm.encode(PARIS, quantization, dimensions=256), atol=1e-6)
    docs = PplxDocumentEmbedder(model="minilm", precision=precision, dimensions=256, meta_fields_to_embed=["country"])
    embedded = docs.run(documents=sources())["documents"]
    want = minilm.encode([f"FR\n{PARIS}", f"DE\n{BERLIN}"], quantization, dimensions=256)
    assert np.allclose([d.embedding for d in embedded], want, atol=1e-6)
    assert all(d.embedding is None for d in sources()) and embedded[0].id == "paris"  # copies, inputs untouched
    again = asyncio.run(docs.run_async(documents=sources()))["documents"]
    assert np.allclose([d.embedding for d in again], want, atol=1e-6)
    assert np.allclose(asyncio.run(text.run_async(text=PARIS))["embedding"], out["embedding"], atol=1e-6)


def test_serialization_round_trip():
    for component in (PplxTextEmbedder(model="minilm", precision="int8", dimensions=128, truncation="right",
                                       options={"backend": "torch"}),
                      PplxContextualDocumentEmbedder(model="minilm", precision="binary", meta_fields_to_embed=["x"])):
        data = component.to_dict()
        assert data["init_parameters"]["api_key"] == {"type": "env_var", "env_vars": ["PPLX_API_KEY"],
                                                      "strict": False}
        assert type(component).from_dict(data).to_dict() == data


def test_contextual_embedder_late_chunks_splitter_output(minilm):
    chunks = DocumentSplitter(split_by="period", split_length=1).run(documents=sources())["documents"]
    out = PplxContextualDocumentEmbedder(model="minilm", precision="int8").run(documents=chunks[::-1])["documents"]
    out = out[::-1]
    for source in sources():
        mine = [d for d in out if d.meta["doc_id"] == source.id]
        assert [d.meta["position"] for d in mine] == list(range(len(mine))) and len(mine) > 2
        for d in mine:
            assert source.content[d.meta["char_start"] : d.meta["char_end"]] == d.content
        want = minilm.encode_contextual([[d.content for d in mine]], "int8")[0]
        assert np.array_equal([d.embedding for d in mine], want)


def test_round_trip_write_filter_delete_reopen(store_location):
    store = PplxDocumentStore(location=store_location, model="minilm", precision="int8", contextual=True)
    indexing = Pipeline()
    indexing.add_component("splitter", DocumentSplitter(split_by="period", split_length=1))
    indexing.add_component("embedder", PplxContextualDocumentEmbedder(model="minilm", precision="int8"))
    indexing.add_component("writer", DocumentWriter(store, policy=DuplicatePolicy.OVERWRITE))
    indexing.connect("splitter", "embedder")
    indexing.connect("embedder", "writer")
    written = indexing.run({"splitter": {"documents": sources()}})["writer"]["documents_written"]
    assert written == store.count_documents() > 4

    query = Pipeline()
    query.add_component("embedder", PplxTextEmbedder(model="minilm", precision="int8", contextual=True))
    query.add_component("retriever", PplxEmbeddingRetriever(document_store=store, top_k=3))
    query.connect("embedder.embedding", "retriever.query_embedding")
    hits = query.run({"embedder": {"text": "When was the Eiffel Tower built?"}})["retriever"]["documents"]
    assert "Eiffel" in hits[0].content and hits[0].meta["doc_id"] == "paris" and hits[0].score >= hits[1].score
    german = query.run({"embedder": {"text": "Eiffel Tower"}, "retriever": {"filters": country("DE")}})
    assert {d.meta["doc_id"] for d in german["retriever"]["documents"]} == {"berlin"}
    restored = Pipeline.from_dict(query.to_dict(), allowed_modules=[MODULE])
    assert restored.run({"embedder": {"text": "Eiffel"}})["retriever"]["documents"][0].id == hits[0].id

    assert store.delete_by_filter({"field": "meta.doc_id", "operator": "==", "value": "paris"}) > 1
    assert {d.meta["doc_id"] for d in store.filter_documents()} == {"berlin"}
    store.delete_documents([store.filter_documents()[0].id, "missing"])
    remaining = store.count_documents()
    store.close()
    reopened = PplxDocumentStore(location=store_location, model="minilm", precision="int8", contextual=True)
    assert reopened.count_documents() == remaining
    async_hits = asyncio.run(PplxEmbeddingRetriever(document_store=reopened, top_k=1).run_async(
        query_embedding=PplxTextEmbedder(model="minilm", precision="int8", contextual=True).run("a wall")["embedding"]))
    assert "wall" in async_hits["documents"][0].content
    reopened.delete_all_documents()
    assert reopened.count_documents() == 0
    reopened.close()


def test_duplicate_policies(tmp_path):
    store = PplxDocumentStore(location=tmp_path / "kb", model="minilm", precision="int8")
    docs = PplxDocumentEmbedder(model="minilm", precision="int8").run(documents=sources())["documents"]
    assert store.write_documents(docs) == 2
    with pytest.raises(DuplicateDocumentError, match="already in the index"):
        store.write_documents([docs[0]])
    assert store.write_documents(docs, DuplicatePolicy.SKIP) == 0
    changed = Document(id="paris", content="Paris, changed.", embedding=docs[0].embedding, meta={"country": "FR"})
    assert store.write_documents([changed], DuplicatePolicy.OVERWRITE) == 1
    assert [d.content for d in store.filter_documents(country("FR"))] == ["Paris, changed."]
    assert asyncio.run(store.count_documents_async()) == 2
    store.close()


def test_bad_input_raises_haystacks_usual_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown precision 'int4'; choose one of float, int8, binary"):
        PplxTextEmbedder(model="minilm", precision="int4")
    with pytest.raises(ValueError, match="unknown option 'device_map'"):
        PplxTextEmbedder(model="minilm", options={"device_map": "auto"})
    text = PplxTextEmbedder(model="minilm", precision="int8")
    with pytest.raises(TypeError, match="expects a string"):
        text.run(text=["a list"])
    with pytest.raises(ValueError, match=r"text 0 is empty"):
        text.run(text=" ")
    with pytest.raises(TypeError, match="expects a list of Documents"):
        PplxDocumentEmbedder(model="minilm").run(documents="text")

    store = PplxDocumentStore(location=tmp_path / "kb", model="minilm", precision="int8")
    docs = PplxDocumentEmbedder(model="minilm", precision="int8").run(documents=sources())["documents"]
    store.write_documents(docs[:1])
    with pytest.raises(DocumentStoreError, match="has no embedding"):
        store.write_documents([Document(id="x", content="x")])
    with pytest.raises(DocumentStoreError, match="not int8 codes"):
        store.write_documents([Document(id="x", content="x", embedding=[0.25] * 384)])
    with pytest.raises(DocumentStoreError, match="have 128 dimensions"):
        store.write_documents([Document(id="x", content="x", embedding=[1.0] * 128)])
    with pytest.raises(FilterError, match="equality"):
        store.filter_documents({"field": "meta.year", "operator": ">", "value": 2000})
    with pytest.raises(FilterError, match="AND"):
        store.filter_documents({"operator": "OR", "conditions": [country("FR"), country("DE")]})
    with pytest.raises(FilterError, match="filter key 'bad key' is not valid"):
        store.filter_documents({"field": "meta.bad key", "operator": "==", "value": 1})
    assert [d.id for d in store.filter_documents()] == ["paris"]  # nothing half-written
    store.close()
    with pytest.raises(ValueError, match="holds 384-dimension vectors; these embeddings have dimensions=256"):
        PplxDocumentStore(location=tmp_path / "kb", model="minilm", precision="int8", dimensions=256)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        PplxEmbeddingRetriever(document_store=PplxDocumentStore(location=tmp_path / "kb", model="minilm"), top_k=0)

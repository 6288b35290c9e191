"""LangChain integration: the langchain-tests standard suites, precision semantics, the vector store's round
trip (add, filtered search, delete, reopen) on the embedded index and on a real PostgreSQL + pgvector,
late chunking that keeps chunk ↔ document relations, and bad input."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, VectorStoreIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

from pplx_embed.integrations.langchain import PplxEmbeddings, PplxVectorStore  # noqa: E402

TEXTS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Cats purr when they are content.",
         "The Seine flows through Paris."]
META = [{"lang": "en", "topic": "geo"}, {"lang": "en", "topic": "geo"}, {"lang": "en", "topic": "pets"},
        {"lang": "fr", "topic": "geo"}]


def int8_minilm() -> PplxEmbeddings:
    return PplxEmbeddings(model="minilm", precision="int8")


class TestPplxEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[PplxEmbeddings]:
        return PplxEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "minilm", "precision": "int8", "dimensions": 128}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {"PPLX_API_KEY": "sk-from-env"}, {"model": "query", "base_url": "http://127.0.0.1:9"}, \
            {"api_key": "sk-from-env", "base_url": "http://127.0.0.1:9"}


class TestPplxEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[PplxEmbeddings]:
        return PplxEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "minilm", "precision": "int8"}


class TestPplxVectorStoreEmbedded(VectorStoreIntegrationTests):
    @staticmethod
    def get_embeddings() -> PplxEmbeddings:
        return int8_minilm()

    @pytest.fixture()
    def vectorstore(self, tmp_path):
        store = PplxVectorStore(self.get_embeddings(), tmp_path / "kb")
        yield store
        store.close()


class TestPplxVectorStorePgvector(VectorStoreIntegrationTests):
    @staticmethod
    def get_embeddings() -> PplxEmbeddings:
        return int8_minilm()

    @pytest.fixture()
    def vectorstore(self, pg_parent):
        store = PplxVectorStore(self.get_embeddings(), f"pgserver:{pg_parent / 'lc'}#lc_{uuid.uuid4().hex[:12]}")
        yield store
        store.close()


@pytest.mark.parametrize("precision, quantization", [("float", "float"), ("int8", "int8"), ("binary", "pm1")])
def test_precisions_are_the_python_apis(minilm, precision, quantization):
    emb = PplxEmbeddings(model="minilm", precision=precision, dimensions=256)
    got = np.array(emb.embed_documents(TEXTS[:2]))
    want = minilm.encode(TEXTS[:2], quantization, dimensions=256).astype(np.float64)
    assert got.shape == (2, 256)
    assert np.allclose(got, want, atol=1e-6) if precision == "float" else np.array_equal(got, want)
    assert np.allclose(emb.embed_query(TEXTS[0]), got[0], atol=1e-6)
    contextual = emb.embed_contextual([TEXTS[:2], TEXTS[2:3]])
    for g, w in zip(contextual, minilm.encode_contextual([TEXTS[:2], TEXTS[2:3]], quantization, 256)):
        assert np.allclose(np.array(g), w, atol=1e-6)


def test_contextual_model_embeds_queries_as_one_chunk_documents(minilm):
    emb = PplxEmbeddings(model="minilm", precision="int8", contextual=True)
    assert np.array_equal(emb.embed_query(TEXTS[0]), minilm.encode_contextual([[TEXTS[0]]], "int8")[0][0])
    assert not np.array_equal(emb.embed_query(TEXTS[0]), minilm.encode(TEXTS[0], "int8"))  # a different path
    paired = PplxEmbeddings(model="minilm", precision="int8", contextual=True, query_model="minilm")
    assert np.array_equal(paired.embed_query(TEXTS[0]), minilm.encode(TEXTS[0], "int8"))


def test_async_local_runs_off_the_event_loop():
    emb = int8_minilm()
    emb.embed_query("load the model first")
    many = [f"{t} (variant {i})" for i in range(40) for t in TEXTS]

    async def main():
        ticks, done = 0, asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        vectors = await emb.aembed_documents(many)
        done.set()
        await task
        return vectors, ticks

    vectors, ticks = asyncio.run(main())
    assert len(vectors) == len(many) and ticks > 5  # the loop kept running while the model worked
    assert np.array_equal(vectors[:4], emb.embed_documents(many[:4]))


def test_round_trip_add_filter_delete_reopen(store_location):
    emb = int8_minilm()
    store = PplxVectorStore.from_texts(TEXTS, emb, metadatas=META, ids=["p", "b", "c", "s"], location=store_location)
    top = store.similarity_search_with_score("What is the capital of France?", k=2)
    assert top[0][0] == Document(id="p", page_content=TEXTS[0], metadata=META[0]) and top[0][1] > top[1][1]
    french = store.similarity_search("Paris", k=4, filter={"lang": "fr"})
    assert [d.id for d in french] == ["s"]
    pets = store.as_retriever(search_kwargs={"k": 4, "filter": {"topic": "pets"}}).invoke("animals")
    assert [d.id for d in pets] == ["c"]
    scored = store.similarity_search_with_relevance_scores("capital of Germany", k=1)
    assert scored[0][0].id == "b" and 0.5 < scored[0][1] <= 1.0
    store.delete(["p", "nope"])
    assert len(store) == 3 and "p" not in {d.id for d in store.similarity_search("capital of France", k=4)}
    store.add_texts(["Cats sleep a lot."], [{"lang": "en", "topic": "pets"}], ids=["c"])  # replaces "c"
    store.close()

    reopened = PplxVectorStore(int8_minilm(), store_location)
    assert len(reopened) == 3
    assert {d.id: d.page_content for d in reopened.get_by_ids(["c", "b", "p"])} == {"c": "Cats sleep a lot.",
                                                                                   "b": TEXTS[1]}
    assert reopened.collection.index.info()["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    reopened.close()


def test_contextual_documents_keep_their_relations(store_location):
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    text = ("Late chunking embeds a whole document in one pass. Each chunk then takes the mean of its own tokens. "
            "So a chunk that says 'it' still knows what 'it' is. The document id and position stay with it.")
    doc = Document(page_content=text, metadata={"source": "notes.txt"})
    splitter = RecursiveCharacterTextSplitter(chunk_size=60, chunk_overlap=10)
    store = PplxVectorStore(PplxEmbeddings(model="minilm", precision="int8", contextual=True), store_location)
    ids = store.add_contextual_documents([doc], text_splitter=splitter, ids=["notes"])
    chunks = splitter.split_text(text)
    assert ids == [f"notes#{i}" for i in range(len(chunks))] and len(chunks) > 3
    for d in store.get_by_ids(ids):
        m = d.metadata
        assert m["doc_id"] == "notes" and m["source"] == "notes.txt"
        assert d.page_content == chunks[m["position"]] == text[m["char_start"] : m["char_end"]]
    hit = store.similarity_search("which position does a chunk keep?", k=1, filter={"doc_id": "notes"})[0]
    assert hit.id.startswith("notes#") and text[hit.metadata["char_start"] :].startswith(hit.page_content)
    vectors = store.embedding.embed_contextual([chunks])[0]
    assert np.array_equal(store.embedding.source.embed_contextual([chunks])[0], vectors)

    # re-adding with fewer chunks replaces the document's chunks; delete_documents removes them all
    store.add_contextual_documents([doc], chunks=[[text[:50], text[50:]]], ids=["notes"])
    assert sorted(d.id for d in store.get_by_ids(ids)) == ["notes#0", "notes#1"]
    store.add_contextual_documents([Document(page_content="Another document.")], chunks=[["Another document."]],
                                   ids=["other"])
    assert store.delete_documents(["notes"]) == 2 and len(store) == 1
    store.close()


def test_bad_input_is_one_clear_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown precision 'int4'; choose one of float, int8, binary"):
        PplxEmbeddings(model="minilm", precision="int4")
    with pytest.raises(ValueError, match="remote mode .* needs model="):
        PplxEmbeddings(base_url="http://127.0.0.1:9")
    emb = int8_minilm()
    with pytest.raises(ValueError, match=r"text 1 is empty"):
        emb.embed_documents(["fine", "  "])
    with pytest.raises(ValueError, match="dimensions must be between 128 and 384"):
        PplxEmbeddings(model="minilm", dimensions=1000).embed_query("x")

    store = PplxVectorStore.from_texts(TEXTS, emb, ids=["a", "b", "c", "d"], location=tmp_path / "kb")
    with pytest.raises(ValueError, match=r"text 1 is empty"):
        store.add_texts(["new", ""], ids=["n1", "n2"])
    with pytest.raises(ValueError, match="metadata key"):
        store.add_texts(["new"], [{"bad key": 1}], ids=["n1"])
    with pytest.raises(ValueError, match="not int8 codes"):
        store.similarity_search_by_vector([0.5] * 384)
    with pytest.raises(ValueError, match="filter key"):
        store.similarity_search("x", filter={"no spaces": 1})
    assert len(store) == 4 and store.get_by_ids(["n1", "n2"]) == []  # nothing half-written
    store.close()
    with pytest.raises(ValueError, match="holds 384-dimension vectors; these embeddings have dimensions=128"):
        PplxVectorStore(PplxEmbeddings(model="minilm", precision="int8", dimensions=128), tmp_path / "kb")
    same_model = PplxVectorStore(PplxEmbeddings(model="sentence-transformers/all-MiniLM-L6-v2", precision="int8"),
                                 tmp_path / "kb")  # the alias and the hub id name one model
    assert same_model.add_texts(["x"], ids=["x"]) == ["x"] and len(same_model) == 5
    same_model.close()
    with pytest.raises(ValueError, match="needs PplxEmbeddings"):
        PplxVectorStore(object(), tmp_path / "other")
    with pytest.raises(ValueError, match="needs location="):
        PplxVectorStore.from_texts(TEXTS, emb)
    with pytest.raises(ValueError, match="give either chunks="):
        PplxVectorStore(emb, tmp_path / "ctx").add_contextual_documents([Document(page_content="x")])


def test_one_model_load_serves_every_object():
    a, b = int8_minilm(), PplxEmbeddings(model="minilm", precision="binary")
    a.embed_query("x")
    b.embed_query("y")
    assert a.source.embedder() is b.source.embedder()  # one MiniLM in memory for both

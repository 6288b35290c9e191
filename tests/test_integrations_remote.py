"""Remote mode of every framework class against a real pplx-embed server on loopback with an API key: the vectors
equal the Python API's (int8 and binary exactly, over base64_int8 / base64_binary), late chunking over
/v1/contextualizedembeddings, async through the async client, requests split within the API's limits, a vector
store filled through the server, and the server's refusals (wrong key, bad dimensions) as one-line errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")
pytest.importorskip("haystack")

from haystack.utils import Secret  # noqa: E402
from langchain_tests.integration_tests import EmbeddingsIntegrationTests  # noqa: E402

from pplx_embed.integrations import source as source_module  # noqa: E402
from pplx_embed.integrations.haystack import PplxDocumentEmbedder, PplxTextEmbedder  # noqa: E402
from pplx_embed.integrations.langchain import PplxEmbeddings, PplxVectorStore  # noqa: E402
from pplx_embed.integrations.llama_index import PplxEmbedding  # noqa: E402
from pplx_embed.serve.app import ServeConfig  # noqa: E402
from pplx_embed.serve.auth import KeyRing  # noqa: E402
from pplx_embed.serve.background import serve_in_thread  # noqa: E402

KEY = "sk-integrations"
TEXTS = ["What is late chunking?", "Late chunking embeds a whole document, then pools each chunk.",
         "Binary codes are 32 times smaller than float32."]
DOCS = [["A document about Paris.", "It is the capital of France."], ["Another document."]]
QUANT = {"float": "float", "int8": "int8", "binary": "pm1"}


@pytest.fixture(scope="module")
def server(minilm):
    with serve_in_thread(ServeConfig(models=[("minilm", minilm)], keys=KeyRing({KEY: "*"}), warmup=False)) as (url, _):
        yield url


def same(got, want, precision: str) -> bool:
    got = np.asarray(got)
    return got.shape == want.shape and (np.allclose(got, want, atol=1e-5) if precision == "float"
                                        else np.array_equal(got, want))


class TestRemoteEmbeddingsStandard(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[PplxEmbeddings]:
        return PplxEmbeddings

    @pytest.fixture
    def model(self, server) -> PplxEmbeddings:
        return PplxEmbeddings(model="minilm", precision="int8", base_url=server, api_key=KEY)


@pytest.mark.parametrize("precision", ["int8", "binary", "float"])
def test_every_framework_gets_the_python_apis_vectors(server, minilm, precision):
    want = minilm.encode(TEXTS, QUANT[precision], dimensions=256)
    want_ctx = minilm.encode_contextual(DOCS, QUANT[precision], dimensions=256)
    remote = {"base_url": server, "precision": precision, "dimensions": 256}

    lc = PplxEmbeddings(model="minilm", api_key=KEY, **remote)
    assert same(lc.embed_documents(TEXTS), want, precision) and same(lc.embed_query(TEXTS[0]), want[0], precision)
    assert same(asyncio.run(lc.aembed_documents(TEXTS)), want, precision)
    for got, w in zip(lc.embed_contextual(DOCS), want_ctx):
        assert same(got, w, precision)
    for got, w in zip(asyncio.run(lc.aembed_contextual(DOCS)), want_ctx):
        assert same(got, w, precision)

    li = PplxEmbedding(model_name="minilm", api_key=KEY, **remote)
    assert same(li.get_text_embedding_batch(TEXTS), want, precision)
    assert same(asyncio.run(li.aget_query_embedding(TEXTS[1])), want[1], precision)

    hs = PplxTextEmbedder(model="minilm", api_key=Secret.from_token(KEY), **remote)
    assert same(hs.run(TEXTS[2])["embedding"], want[2], precision)
    assert same(asyncio.run(hs.run_async(TEXTS[2]))["embedding"], want[2], precision)


def test_large_inputs_are_split_into_requests(server, minilm, monkeypatch):
    monkeypatch.setattr(source_module, "MAX_REQUEST_TEXTS", 7)
    monkeypatch.setattr(source_module, "MAX_REQUEST_CHUNKS", 3)
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(30)]
    emb = PplxEmbeddings(model="minilm", precision="int8", base_url=server, api_key=KEY)
    assert same(emb.embed_documents(texts), minilm.encode(texts, "int8"), "int8")
    docs = [texts[i : i + 2] for i in range(0, 12, 2)]
    for got, want in zip(emb.embed_contextual(docs), minilm.encode_contextual(docs, "int8")):
        assert same(got, want, "int8")
    documents = PplxDocumentEmbedder(model="minilm", precision="int8", base_url=server,
                                     api_key=Secret.from_token(KEY))
    from haystack import Document

    out = documents.run([Document(content=t) for t in texts])["documents"]
    assert same([d.embedding for d in out], minilm.encode(texts, "int8"), "int8")


def test_vector_store_filled_through_the_server(server, tmp_path):
    emb = PplxEmbeddings(model="minilm", precision="int8", base_url=server, api_key=KEY, contextual=True)
    store = PplxVectorStore.from_texts(TEXTS, emb, metadatas=[{"n": i} for i in range(3)], ids=["q", "l", "b"],
                                       location=tmp_path / "kb")
    assert [d.id for d in store.similarity_search("How small are binary codes?", k=1)] == ["b"]
    assert [d.id for d in store.similarity_search("chunking", k=3, filter={"n": 1})] == ["l"]
    from langchain_core.documents import Document

    ids = asyncio.run(store.aadd_contextual_documents([Document(page_content=" ".join(DOCS[0]))], chunks=[DOCS[0]],
                                                      ids=["paris"]))
    assert ids == ["paris#0", "paris#1"]
    hit = asyncio.run(store.asimilarity_search("the capital of France", k=1, filter={"doc_id": "paris"}))[0]
    assert hit.id == "paris#1" and hit.metadata["char_start"] == len(DOCS[0][0]) + 1
    assert store.collection.index.info()["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    store.close()


def test_server_refusals_are_one_line_value_errors(server):
    with pytest.raises(ValueError, match=r"refused the request: 401 invalid_api_key: invalid API key$"):
        PplxEmbeddings(model="minilm", base_url=server, api_key="sk-wrong").embed_query("x")
    with pytest.raises(ValueError, match="401 missing_api_key"):
        asyncio.run(PplxEmbedding(model_name="minilm", base_url=server, api_key=None).aget_query_embedding("x"))
    with pytest.raises(ValueError, match="401 invalid_api_key"):
        PplxTextEmbedder(model="minilm", base_url=server, api_key=Secret.from_token("sk-wrong")).run("x")
    with pytest.raises(ValueError, match="400 .*dimensions"):
        PplxEmbeddings(model="minilm", base_url=server, api_key=KEY, dimensions=1000).embed_query("x")
    with pytest.raises(ValueError, match="404"):
        PplxEmbeddings(model="nope", base_url=server, api_key=KEY).embed_documents(["x"])
    with pytest.raises(ValueError, match="truncation and options are local-mode settings"):
        PplxEmbeddings(model="minilm", base_url=server, truncation="right")
    with pytest.raises(ValueError, match=r"text 0 is empty"):  # refused before any request
        PplxEmbeddings(model="minilm", base_url=server, api_key=KEY).embed_documents([""])

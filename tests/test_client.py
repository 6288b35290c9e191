"""pplx_embed.client (sync and async) against a real server: decoded arrays equal the Python API's."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pplx_embed.client import AsyncClient, Client, ServerError
from pplx_embed.serve.app import ServeConfig
from pplx_embed.serve.auth import KeyRing
from pplx_embed.serve.background import serve_in_thread

TEXTS = ["a query about embeddings", "a document: int8 vectors are four times smaller than float32"]
DOCS = [["First chunk of a document.", "Its second chunk."], ["Another document."]]


@pytest.fixture(scope="module")
def server(minilm, tiny_pplx):
    config = ServeConfig(models=[("query", tiny_pplx), ("minilm", minilm)], keys=KeyRing({"sk-test": "*"}),
                         warmup=False)
    with serve_in_thread(config) as (url, _):
        yield url


@pytest.mark.parametrize("quantization", ["int8", "binary", "float"])
def test_sync_client_decodes_like_the_python_api(server, tiny_pplx, quantization):
    with Client(server, api_key="sk-test") as client:
        got = client.embed(TEXTS, model="query", quantization=quantization)
        want = tiny_pplx.encode(TEXTS, quantization=quantization)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
        contextual = client.embed_contextual(DOCS, model="query", quantization=quantization)
        for g, w in zip(contextual, tiny_pplx.encode_contextual(DOCS, quantization=quantization)):
            assert g.dtype == w.dtype and np.array_equal(g, w)


def test_sync_client_single_text_dimensions_models_and_errors(server, minilm):
    with Client(server, api_key="sk-test") as client:
        vector = client.embed(TEXTS[0], model="minilm", dimensions=128)
        assert vector.shape == (128,) and np.array_equal(vector, minilm.encode(TEXTS[0], "int8", dimensions=128))
        assert {m["id"] for m in client.models()} == {"query", "minilm"}
        assert client.health()["status"] == "ok"
        with pytest.raises(ServerError) as err:
            client.embed([""], model="minilm")
        assert err.value.status == 400 and err.value.code == "empty_input"
        with pytest.raises(ServerError) as err:
            client.embed("x", model="nope")
        assert err.value.status == 404
        with pytest.raises(ValueError, match="quantization"):
            client.embed("x", quantization="int4")
    with Client(server) as anonymous, pytest.raises(ServerError) as err:
        anonymous.embed("x")
    assert err.value.status == 401 and err.value.code == "missing_api_key"


def test_async_client_concurrent_calls(server, tiny_pplx):
    async def main():
        async with AsyncClient(server, api_key="sk-test") as client:
            texts = [[f"async text {i}", f"number {i * i}"] for i in range(8)]
            results = await asyncio.gather(*(client.embed(t, model="query", quantization="float") for t in texts))
            contextual = await client.embed_contextual(DOCS, model="query", quantization="binary")
            return texts, results, contextual

    texts, results, contextual = asyncio.run(main())
    for t, got in zip(texts, results):
        assert np.allclose(got, tiny_pplx.encode(t), atol=1e-5)
    for g, w in zip(contextual, tiny_pplx.encode_contextual(DOCS, quantization="binary")):
        assert np.array_equal(g, w)

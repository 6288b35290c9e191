"""The OpenVINO backend gives torch's vectors: floats, int8 bytes, late-chunking spans (no timings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pplx_embed import Embedder, similarity
from pplx_embed.errors import InputError

pytest.importorskip("openvino")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two equally long lists of vectors."""
    return np.diag(similarity(a, b))


@pytest.fixture(scope="module")
def texts(shared_data) -> list[str]:
    """XQuAD-en questions, whole paragraphs and one-token texts."""
    xquad = shared_data / "xquad" / "en"
    return [json.loads(line)["text"] for line in (xquad / "queries.jsonl").open()][:12] + [
        json.loads(line)["text"] for line in (xquad / "corpus.jsonl").open()][:4] + ["a", "Why?"]


@pytest.fixture(scope="module")
def tiny_ov(engine_cache, tiny_pplx_dir):
    return Embedder(str(tiny_pplx_dir), backend="openvino")


@pytest.fixture(scope="module")
def minilm_ov(engine_cache):
    return Embedder("minilm", backend="openvino")


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_openvino_fp32_gives_torch_bytes_and_spans(request, which, texts):
    reference = request.getfixturevalue("tiny_pplx" if which == "tiny" else "minilm")
    ov = request.getfixturevalue(f"{which}_ov")
    info = ov.engine_info
    assert (info.backend, ov.engine.backend.name, info.dtype, info.auto) == ("openvino", "openvino", "float32", None)
    np.testing.assert_allclose(ov.encode(texts, truncation="right"), reference.encode(texts, truncation="right"),
                               atol=1e-4, rtol=0)
    for precision in ("int8", "binary"):
        got = ov.encode(texts, quantization=precision, truncation="right").astype(int)
        want = reference.encode(texts, quantization=precision, truncation="right").astype(int)
        assert np.abs(got - want).max() <= (1 if precision == "int8" else 0)  # int8: a rounding tie may flip by 1
        assert (got == want).mean() > 0.999
    docs = [texts[:3], texts[12:14], ["x", "", texts[5]]]
    for a, b in zip(ov.encode_contextual(docs, truncation="right"),
                    reference.encode_contextual(docs, truncation="right"), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
        assert not np.any(a[np.all(b == 0, axis=1)])  # an empty chunk stays a zero vector


def _throughput(embedder: Embedder, dtype: torch.dtype = torch.float32) -> Embedder:
    """``embedder`` re-wired to an OpenVINO backend in throughput streams on the same IR."""
    from pplx_embed.engine.openvino_backend import OpenVinoBackend

    streamed = OpenVinoBackend(embedder.engine.backend.model_file, "openvino", dtype, throughput=True)
    embedder.engine.backend = streamed
    return embedder


def test_openvino_throughput_streams_give_the_same_vectors_and_spans(engine_cache, minilm, texts, monkeypatch):
    """Split across streams (each slice cut to its own longest row), a batch pools exactly as in one stream."""
    from pplx_embed.engine import openvino_backend

    monkeypatch.setattr(openvino_backend, "SPLIT_ROWS", 1)  # split every batch of at least one row per stream
    streamed = _throughput(Embedder("minilm", backend="openvino"))
    from pplx_embed.engine.threads import physical_cores

    assert streamed.engine.backend.streams >= 2 or physical_cores() == 1  # one thread per stream
    want = minilm.encode(texts, truncation="right")
    np.testing.assert_allclose(streamed.encode(texts, truncation="right"), want, atol=1e-4, rtol=0)
    for size in (1, 2, 3, 5):  # one-row batches (one stream), odd rows: slices of unequal height and width
        np.testing.assert_allclose(streamed.encode(texts, truncation="right", batch_size=size), want, atol=1e-4,
                                   rtol=0)
    got = streamed.encode(texts, quantization="int8", truncation="right").astype(int)
    assert np.abs(got - minilm.encode(texts, quantization="int8", truncation="right").astype(int)).max() <= 1
    docs = [texts[:3], texts[12:14], ["x", "", texts[5]]]
    for a, b in zip(streamed.encode_contextual(docs, truncation="right"),
                    minilm.encode_contextual(docs, truncation="right"), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    bf16 = _throughput(Embedder("minilm", backend="openvino", dtype="bfloat16"), torch.bfloat16)
    assert _cosine(bf16.encode(texts, truncation="right"), want).min() >= 0.999


def test_openvino_refuses_bf16_streams_for_a_gated_mlp(tiny_pplx, tiny_ov, texts, monkeypatch):
    """OpenVINO 2026.4 dies (SIGFPE) compiling a SwiGLU MLP in bf16 for several streams: refused, process lives."""
    from pplx_embed.engine import openvino_backend
    from pplx_embed.engine.openvino_backend import OpenVinoBackend

    monkeypatch.setattr(openvino_backend, "SPLIT_ROWS", 1)

    with pytest.raises(ValueError, match="gated MLP in bfloat16"):
        OpenVinoBackend(tiny_ov.engine.backend.model_file, "openvino", torch.bfloat16, throughput=True)
    streamed = _throughput(Embedder(str(tiny_ov.checkpoint.path), backend="openvino"))  # fp32 streams work
    np.testing.assert_allclose(streamed.encode(texts, truncation="right", batch_size=3),
                               tiny_pplx.encode(texts, truncation="right"), atol=1e-4, rtol=0)


def test_openvino_pplx_is_bidirectional(tiny_pplx, tiny_ov):
    ids = np.array([tiny_pplx.tokenize(["the cat sat on the mat"])[0]], dtype=np.int64)
    changed = ids.copy()
    changed[0, -1] = (changed[0, -1] + 1) % 1000
    mask = np.ones_like(ids)
    first_token = [(0, 1)]
    before = tiny_ov.engine.backend.pool(ids, mask, [first_token], "mean")
    after = tiny_ov.engine.backend.pool(changed, mask, [first_token], "mean")
    assert np.abs(before - after).max() > 1e-4  # the first token sees the last one
    np.testing.assert_allclose(before, tiny_pplx.engine.backend.pool(ids, mask, [first_token], "mean"), atol=1e-4)


def test_openvino_bf16_within_guard_and_ir_cached(minilm, minilm_ov, engine_cache, texts):
    bf16 = Embedder("minilm", backend="openvino", dtype="bfloat16")
    assert bf16.engine_info.dtype == "bfloat16" and bf16.info()["engine"]["dtype"] == "bfloat16"
    assert bf16.engine.backend.model_file == minilm_ov.engine.backend.model_file  # one IR, two precisions
    assert str(bf16.engine.backend.model_file).startswith(engine_cache)
    cosine = _cosine(bf16.encode(texts, truncation="right"), minilm.encode(texts, truncation="right"))
    assert cosine.mean() >= 0.9995 and cosine.min() >= 0.999
    codes = bf16.encode(texts, quantization="int8", truncation="right").astype(int)
    assert _cosine(codes, minilm.encode(texts, quantization="int8", truncation="right").astype(int)).min() > 0.999


def test_openvino_int8_compute_is_close_and_separate_from_output_quantization(minilm, minilm_ov, texts):
    pytest.importorskip("nncf")
    int8 = Embedder("minilm", backend="openvino-int8")
    assert int8.engine_info.backend == "openvino-int8"
    assert int8.engine.backend.model_file != minilm_ov.engine.backend.model_file
    floats = int8.encode(texts, truncation="right")
    assert floats.dtype == np.float32  # int8 compute, float output unless quantization= asks otherwise
    cosine = _cosine(floats, minilm.encode(texts, truncation="right"))
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.95
    stamp = int8.engine.backend.model_file.stat().st_mtime_ns
    again = Embedder("minilm", backend="openvino-int8")  # the quantized IR is cached, not rebuilt
    assert again.engine.backend.model_file.stat().st_mtime_ns == stamp


def test_openvino_choice_errors_are_clear():
    from pplx_embed.engine.build import resolve_backend

    with pytest.raises(InputError, match="CPU only"):
        resolve_backend("openvino", "cuda", torch.float32)
    with pytest.raises(InputError, match="float32 or bfloat16"):
        resolve_backend("openvino", "cpu", torch.float16)

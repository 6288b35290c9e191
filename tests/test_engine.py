"""The engine returns the same vectors whatever the batching, order, budget and backend (no timings)."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from pplx_embed import Embedder, quantize
from pplx_embed.engine.batching import plan_batches
from pplx_embed.engine.engine import Engine
from pplx_embed.engine.threads import physical_cores
from pplx_embed.model.pooling import Sequence


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def texts(shared_data) -> list[str]:
    """Real texts of mixed length: XQuAD-en questions and paragraphs."""
    xquad = shared_data / "xquad" / "en"
    questions = [json.loads(line)["text"] for line in (xquad / "queries.jsonl").open()][:12]
    paragraphs = [json.loads(line)["text"] for line in (xquad / "corpus.jsonl").open()][:4]
    return questions + [p[:600] for p in paragraphs] + ["a", "Why?"]


@pytest.fixture(scope="module")
def minilm_onnx(engine_cache):
    return Embedder("minilm", backend="onnx")


@pytest.fixture(scope="module")
def tiny_onnx(engine_cache, tiny_pplx_dir):
    return Embedder(str(tiny_pplx_dir), backend="onnx")


# ---- batching ---------------------------------------------------------------------------------
def test_plan_batches_respects_budget_and_covers_every_input_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(200)]
    batches = plan_batches(lengths, max_batch_tokens=1024, max_batch_size=16)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for batch in batches:
        assert len(batch) <= 16
        assert max(lengths[i] for i in batch) * len(batch) <= 1024
    for batch in batches:  # nobody is padded by more than a quarter of the batch's width (or 8 tokens)
        width = max(lengths[i] for i in batch)
        assert all(width - lengths[i] <= max(8, width // 4) for i in batch)
    assert plan_batches([256, 15, 256, 14], 16384, 64) == [[0, 2], [1, 3]]  # short texts not padded to 256
    assert plan_batches([5000, 3], 1024, 8) == [[0], [1]]  # longer than the budget: runs alone
    with pytest.raises(ValueError):
        plan_batches([1], 0, 8)


@pytest.mark.parametrize("which", ["minilm", "tiny_pplx"])
def test_same_vectors_whatever_batching_order_and_budget(request, which, texts):
    embedder = request.getfixturevalue(which)
    sequences = [Sequence(ids) for ids in embedder.tokenize(texts, truncation="right")]
    base = np.concatenate(embedder.engine.run(sequences))
    for budget, size, seed in [(1, 1, 1), (100, 3, 2), (1 << 20, 1024, 3)]:
        engine = Engine(embedder.engine.backend, embedder.dimension, embedder.engine.pad_id,
                        embedder.engine.pooling, budget, size)
        order = list(range(len(sequences)))
        random.Random(seed).shuffle(order)
        shuffled = engine.run([sequences[i] for i in order])
        got = np.empty_like(base)
        for k, i in enumerate(order):
            got[i] = shuffled[k][0]
        np.testing.assert_allclose(got, base, atol=1e-5, rtol=0)
        assert np.array_equal(quantize(got, "int8"), quantize(base, "int8"))
        assert np.array_equal(quantize(got, "binary"), quantize(base, "binary"))


def test_public_api_independent_of_budget_and_batch_size(minilm, texts):
    small = Embedder("minilm", max_batch_tokens=128, max_batch_size=3)
    some = texts[-8:]
    np.testing.assert_allclose(small.encode(some), minilm.encode(some), atol=1e-5, rtol=0)
    assert np.array_equal(small.encode(some, "int8", batch_size=2), minilm.encode(some, "int8"))


# ---- limits -----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["minilm", "minilm_onnx"])
def test_limits_empty_one_token_and_exactly_max(request, which, minilm):
    embedder = request.getfixturevalue(which)
    assert embedder.encode([]).shape == (0, 384)
    assert embedder.encode([], "int8").dtype == np.int8
    # one token of content, and a text of exactly max_length tokens (specials included)
    exact = " ".join(["word"] * (embedder.max_length - 2))
    assert embedder.count_tokens([exact]) == [embedder.max_length]
    with pytest.raises(ValueError, match="limit"):
        embedder.encode([exact + " word"])
    vectors = embedder.encode(["a", exact])
    assert vectors.shape == (2, 384) and np.isfinite(vectors).all()
    alone = np.stack([embedder.encode("a"), embedder.encode(exact)])
    np.testing.assert_allclose(vectors, alone, atol=1e-5, rtol=0)
    reference = minilm.encode(["a", exact])
    assert _cosine(vectors, reference).min() > 1 - 1e-3


def test_one_token_input_on_pplx(tiny_pplx, tiny_onnx):
    assert tiny_pplx.count_tokens(["a"]) == [1]
    a, b = tiny_pplx.encode(["a"]), tiny_onnx.encode(["a"])
    assert a.shape == (1, 64) and _cosine(a, b).min() > 1 - 1e-3


# ---- ONNX backend -----------------------------------------------------------------------------
def test_onnx_matches_torch_on_minilm(minilm, minilm_onnx, texts):
    assert minilm_onnx.engine.backend.name == "onnx"
    assert "token_type_ids" in minilm_onnx.engine.backend.input_names
    torch_vectors = minilm.encode(texts, truncation="right")
    onnx_vectors = minilm_onnx.encode(texts, truncation="right")
    assert _cosine(torch_vectors, onnx_vectors).min() > 1 - 1e-3
    np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-4, rtol=0)


def test_onnx_matches_torch_on_pplx_and_is_bidirectional(tiny_pplx, tiny_onnx, texts):
    torch_vectors = tiny_pplx.encode(texts, truncation="right")
    onnx_vectors = tiny_onnx.encode(texts, truncation="right")
    assert _cosine(torch_vectors, onnx_vectors).min() > 1 - 1e-3
    # late chunking (several spans per sequence) goes through the same path
    docs = [texts[:3], texts[3:4], ["x", "", texts[5]]]
    for a, b in zip(tiny_pplx.encode_contextual(docs), tiny_onnx.encode_contextual(docs)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    # not causal: the first token's state depends on the last token, in torch and in the export
    session = tiny_onnx.engine.backend.session
    ids = np.array([tiny_pplx.tokenize(["the cat sat on the mat"])[0]], dtype=np.int64)
    changed = ids.copy()
    changed[0, -1] = (changed[0, -1] + 1) % 1000
    mask = np.ones_like(ids)
    first = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0][0, 0]
    second = session.run(["last_hidden_state"], {"input_ids": changed, "attention_mask": mask})[0][0, 0]
    assert np.abs(first - second).max() > 1e-4
    import torch

    with torch.inference_mode():
        reference = tiny_pplx.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    np.testing.assert_allclose(first, reference.last_hidden_state[0, 0].numpy(), atol=1e-4, rtol=0)


def test_onnx_export_has_official_outputs(tiny_pplx, tiny_onnx, texts):
    session = tiny_onnx.engine.backend.session
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "pooled", "int8", "binary"]
    ids = tiny_pplx.tokenize(texts[:2])
    width = max(map(len, ids))
    batch = np.full((2, width), tiny_pplx.engine.pad_id, dtype=np.int64)
    mask = np.zeros_like(batch)
    for row, seq in enumerate(ids):
        batch[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    _, pooled, int8, binary = session.run(None, {"input_ids": batch, "attention_mask": mask})
    np.testing.assert_allclose(pooled, tiny_pplx.encode(texts[:2]), atol=1e-4, rtol=0)
    assert np.abs(int8.astype(int) - quantize(pooled, "int8").astype(int)).max() <= 1
    assert np.array_equal(binary, quantize(pooled, "pm1"))


def test_onnx_int8_close_to_fp32_and_cached(minilm, minilm_onnx, engine_cache, texts):
    quantized = Embedder("minilm", backend="onnx-int8")
    assert quantized.engine.backend.name == "onnx-int8"
    files = {quantized.engine.backend.model_file, minilm_onnx.engine.backend.model_file}
    assert len(files) == 2 and all(str(f).startswith(engine_cache) for f in files)
    assert quantized.engine.backend.model_file.stat().st_size < minilm_onnx.engine.backend.model_file.stat().st_size / 2
    cosine = _cosine(quantized.encode(texts, truncation="right"), minilm.encode(texts, truncation="right"))
    assert cosine.mean() > 0.98 and cosine.min() > 0.9
    # a second load reuses the cached export instead of exporting again
    stamp = quantized.engine.backend.model_file.stat().st_mtime_ns
    again = Embedder("minilm", backend="onnx-int8")
    assert again.engine.backend.model_file == quantized.engine.backend.model_file
    assert again.engine.backend.model_file.stat().st_mtime_ns == stamp


def test_cache_key_follows_weights_and_variant(tiny_pplx_dir, tmp_path):
    import shutil

    from pplx_embed.engine.export import export_key
    from pplx_embed.engine.onnx_backend import KIND

    copy = shutil.copytree(tiny_pplx_dir, tmp_path / "copy")
    key = export_key(KIND, copy, "onnx", {"pooling": "mean"})
    assert key == export_key(KIND, copy, "onnx", {"pooling": "mean"})
    assert key != export_key(KIND, copy, "onnx-int8", {"pooling": "mean"})
    assert key != export_key(KIND, copy, "onnx", {"pooling": "cls"})
    weights = next(copy.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert key != export_key(KIND, copy, "onnx", {"pooling": "mean"})


# ---- selection and threads --------------------------------------------------------------------
def test_backend_choice_errors_are_clear(monkeypatch):
    import torch

    from pplx_embed.engine.build import resolve_backend
    from pplx_embed.errors import InputError
    from pplx_embed.options import EmbedderOptions

    assert resolve_backend("onnx", "cpu", torch.float32) == "onnx"
    monkeypatch.setenv("PPLX_EMBED_BACKEND", "onnx-int8")
    assert EmbedderOptions.from_env().backend == "onnx-int8"          # the environment fills gaps
    assert EmbedderOptions.from_env(backend="torch").backend == "torch"  # explicit values win
    with pytest.raises(InputError, match="choose one of"):
        Embedder("minilm", backend="tensorrt")
    with pytest.raises(InputError, match="CPU only"):
        resolve_backend("onnx", "cuda", torch.bfloat16)
    with pytest.raises(InputError, match="float32"):  # a user's mistake: one line and exit 2 on the CLI
        Embedder("minilm", backend="onnx", dtype="bfloat16")
    with pytest.raises(InputError, match="unknown option 'precision'"):
        Embedder("minilm", precision="int8")
    assert Embedder("minilm", truncation="right").options.truncation == "right"  # every option is accepted


def test_physical_cores(monkeypatch):
    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    monkeypatch.setenv("PPLX_EMBED_THREADS", "3")
    assert physical_cores() == 3
    monkeypatch.setenv("PPLX_EMBED_THREADS", "many")
    with pytest.raises(ValueError, match="PPLX_EMBED_THREADS"):
        physical_cores()

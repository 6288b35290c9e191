"""``backend="auto"``: a measured choice that always passes the accuracy guard, cached per checkpoint,
machine and versions (no timings asserted: which candidate wins depends on the machine)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pplx_embed import Embedder
from pplx_embed.engine import auto
from pplx_embed.engine.backends import create_backend, native_bf16
from pplx_embed.engine.cache import cached_directory
from pplx_embed.engine.engine import Engine
from pplx_embed.engine.threads import cpu_flags
from pplx_embed.model.pooling import Sequence


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def checkpoint(tiny_pplx_dir, tmp_path_factory):
    """A private copy of the tiny checkpoint (the test touches its files)."""
    return shutil.copytree(tiny_pplx_dir, tmp_path_factory.mktemp("auto") / "tiny")


@pytest.fixture(scope="module")
def chosen(engine_cache, checkpoint):
    return Embedder(str(checkpoint), backend="auto")


def test_probe_texts_are_shipped_real_and_mixed():
    texts = auto.probe_texts()
    assert len(texts) >= 32 and len(set(texts)) == len(texts)
    assert min(map(len, texts)) < 60 and max(map(len, texts)) > 600  # questions and long answers
    assert auto.PROBE_FILE.parent.name == "engine"  # package data, not ../shared/data


def test_auto_measures_and_picks_a_candidate_within_the_guard(chosen, checkpoint):
    decision = chosen.engine_info.auto
    assert decision is not None and decision["cached"] is False
    rows = [r for r in decision["candidates"] if "error" not in r]
    assert rows[0]["backend"] == "torch" and rows[0]["dtype"] == "float32"  # the reference is measured too
    assert {(r["backend"], r["dtype"], r["throughput"]) for r in decision["candidates"]} == set(auto.candidates())
    winner = next(r for r in rows if (r["backend"], r["dtype"], r["throughput"])
                  == (chosen.engine_info.backend, chosen.engine_info.dtype, decision["throughput"]))
    assert winner["passed"] and winner["seconds"] == min(r["seconds"] for r in rows if r["passed"])
    for row in rows[1:]:
        assert row["passed"] == (row["mean_cosine"] >= auto.GUARD["mean_cosine"]
                                 and row["min_cosine"] >= auto.GUARD["min_cosine"])
    info = chosen.info()["engine"]
    assert info["backend"] == chosen.engine_info.backend and info["requested"] == "auto"
    assert info["auto"]["candidates"] == decision["candidates"]
    # the one candidate refused is OpenVINO's bf16 streams on this gated-MLP (Qwen3) model, if offered at all
    assert all(r["backend"] == "openvino" and r["dtype"] == "bfloat16" and r["throughput"]
               for r in decision["candidates"] if "error" in r)
    # what it computes stays within the guard of torch fp32 on other texts too
    reference = Embedder(str(checkpoint), backend="torch")
    texts = ["What is the capital of France?", "A long answer about anatomy. " * 30, "x"]
    assert _cosine(chosen.encode(texts), reference.encode(texts)).min() >= auto.GUARD["min_cosine"]


def test_auto_never_picks_a_candidate_that_fails_the_guard(tiny_pplx):
    """A lossy configuration that is at least as fast (one layer instead of two) loses to the reference."""
    lossy = copy.deepcopy(tiny_pplx.model)
    lossy.layers = lossy.layers[:1]
    ids = tiny_pplx.tokenize(auto.probe_texts()[:9], truncation="right")

    def run(backend):
        engine = Engine(backend, tiny_pplx.dimension, tiny_pplx.tokens.pad_id, "mean")
        return np.concatenate(engine.run([Sequence(x) for x in ids]))

    def torch_fp32(model):
        return lambda: create_backend("torch", torch.float32, model, "cpu", None, "mean")

    builders = {auto.REFERENCE: torch_fp32(tiny_pplx.model), ("torch", "one-layer", False): torch_fp32(lossy),
                ("broken", "float32", False): lambda: create_backend("onnx", torch.float32, lossy, "cpu", None, "mean")}
    decision = auto.measure(builders, run, sum(map(len, ids)), auto.GUARD)
    rows = {r["dtype"]: r for r in decision["candidates"]}
    assert (decision["backend"], decision["dtype"], decision["throughput"]) == auto.REFERENCE
    assert rows["one-layer"]["passed"] is False and rows["one-layer"]["mean_cosine"] < 0.999
    assert "error" in rows["float32"] and rows["float32"]["backend"] == "broken"  # dropped out, the load goes on
    strict = auto.measure({auto.REFERENCE: builders[auto.REFERENCE]}, run, 1, {"mean_cosine": 2, "min_cosine": 2})
    assert (strict["backend"], strict["dtype"], strict["throughput"]) == auto.REFERENCE  # the reference qualifies


def test_decision_is_cached_and_invalidated_by_checkpoint_and_versions(chosen, checkpoint, monkeypatch):
    again = Embedder(str(checkpoint), backend="auto")
    decision = chosen.engine_info.auto
    assert again.engine_info.auto["cached"] is True and again.engine_info.auto["cache_file"] == decision["cache_file"]
    assert again.engine_info.backend == chosen.engine_info.backend
    assert again.engine_info.dtype == chosen.engine_info.dtype
    stored = json.loads(Path(decision["cache_file"]).read_text())
    assert stored["candidates"] == decision["candidates"]
    path = auto.decision_file(chosen.name, checkpoint)
    assert str(path) == decision["cache_file"]
    # a library upgrade decides again
    real = auto.versions
    monkeypatch.setattr(auto, "versions", lambda *names: {**real(*names), "openvino": "9999.0"})
    assert auto.decision_file(chosen.name, checkpoint) != path
    monkeypatch.setattr(auto, "versions", real)
    # so does a changed checkpoint (weights rewritten: new size or mtime)
    weights = next(checkpoint.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert auto.decision_file(chosen.name, checkpoint) != path
    # another guard is another decision
    assert auto.decision_key(checkpoint, {"mean_cosine": 0.9, "min_cosine": 0.9}) != auto.decision_key(checkpoint)


def test_explicit_flags_win_over_auto(checkpoint, engine_cache):
    explicit = Embedder(str(checkpoint), backend="torch")
    info = explicit.engine_info
    assert (info.backend, info.dtype, info.auto) == ("torch", "float32", None)
    with_dtype = Embedder(str(checkpoint), backend="auto", dtype="bfloat16")  # a dtype pins torch: no probe
    info = with_dtype.engine_info
    assert (info.backend, info.dtype, info.auto) == ("torch", "bfloat16", None)
    assert next(with_dtype.model.parameters()).dtype == torch.bfloat16


def test_candidates_follow_cpu_flags():
    plain = auto.candidates(frozenset({"avx2", "avx512f", "avx512_vnni"}), cores=2)  # e.g. AMD EPYC without bf16
    assert all(dtype == "float32" for _, dtype, _ in plain) and plain[0] == auto.REFERENCE
    amx = auto.candidates(frozenset({"avx512f", "amx_bf16", "amx_tile"}), cores=2)
    assert ("torch", "bfloat16", False) in amx and not any(b.endswith("int8") for b, _, _ in amx)  # int8: never auto
    assert {(b, t) for b, _, t in amx} == {("torch", False), ("openvino", False), ("openvino", True)}
    assert not any(t for _, _, t in auto.candidates(frozenset({"amx_bf16"}), cores=1))  # one core: one stream
    assert not any(t for _, _, t in auto.candidates(frozenset({"amx_bf16"}), cores=8, small=False))  # large model


def test_concurrent_builders_leave_one_complete_entry(tmp_path):
    """Two processes deciding or exporting at once: each gets a complete entry, nothing half-written."""
    entry = tmp_path / "entry"
    results, errors = [], []

    def build(work):
        (work / "part").write_text("first half")
        time.sleep(0.2)
        (work / "done").write_text(str(threading.get_ident()))

    def worker():
        try:
            results.append(cached_directory(entry, "done", build))
        except Exception as exc:  # noqa: BLE001  collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and results == [entry] * 4
    assert sorted(p.name for p in entry.iterdir()) == ["done", "part"]
    assert not [p for p in tmp_path.iterdir() if p != entry]  # no temporary directories left behind


def test_auto_openvino_sends_long_inputs_to_torch(tiny_pplx_dir, engine_cache, tmp_path):
    """Where ``auto`` chose OpenVINO for a long-context model, inputs over LONG_INPUT_TOKENS run on torch."""
    from pplx_embed.engine.backends import LONG_INPUT_TOKENS

    checkpoint = shutil.copytree(tiny_pplx_dir, tmp_path / "tiny")
    name = Embedder(str(checkpoint), backend="torch").name
    # the decision as `auto` stores it, here one that chose OpenVINO fp32 on this machine
    decision = {"backend": "openvino", "dtype": "float32", "candidates": []}
    auto.decision_file(name, checkpoint).parent.mkdir(parents=True, exist_ok=True)
    auto.decision_file(name, checkpoint).write_text(json.dumps(decision))
    routed = Embedder(str(checkpoint), backend="auto")
    assert (routed.engine_info.backend, routed.engine_info.long_inputs) == ("openvino", LONG_INPUT_TOKENS)
    assert routed.engine_info.to_dict()["long_inputs"] == {"backend": "torch", "over_tokens": LONG_INPUT_TOKENS}
    reference = Embedder(str(checkpoint), backend="torch")
    texts = ["word " * (LONG_INPUT_TOKENS + 300), "a short question about the weather"]
    assert reference.count_tokens(texts)[0] > LONG_INPUT_TOKENS
    got, want = routed.encode(texts), reference.encode(texts)
    assert np.array_equal(got[0], want[0])  # computed by torch fp32, exactly as the reference
    assert not np.array_equal(got[1], want[1]) and _cosine(got[1], want[1]) > 0.9999  # OpenVINO, same vector


def test_a_converted_backend_frees_the_torch_weights(checkpoint, engine_cache):
    """OpenVINO / ONNX hold their own copy of the weights; the float32 torch module is released."""
    reference = Embedder(str(checkpoint), backend="torch")
    for backend in ("openvino", "onnx"):
        converted = Embedder(str(checkpoint), backend=backend)
        assert converted.engine_info.long_inputs is None  # explicit backends are not re-routed
        assert converted.model is None and not hasattr(converted.engine.backend, "model")  # no torch weights kept
        assert converted.info()["parameters"] == reference.info()["parameters"]
        assert _cosine(converted.encode("still embeds"), reference.encode("still embeds")) > 0.9999


def test_auto_never_builds_what_does_not_fit_in_memory(tiny_pplx_dir, engine_cache, tmp_path, monkeypatch):
    """Candidates that need more memory than is free are skipped with a reason; no room for float32: no probe."""
    checkpoint = shutil.copytree(tiny_pplx_dir, tmp_path / "tiny")
    parameters = Embedder(str(checkpoint), backend="torch").info()["parameters"]
    monkeypatch.setattr(auto, "available_memory", lambda: 8 * parameters)  # float32 and a bf16 copy fit, OpenVINO not
    tight = Embedder(str(checkpoint), backend="auto")
    rows = tight.engine_info.auto["candidates"]
    assert {r["backend"] for r in rows if "skipped" in r} <= {"openvino"}
    assert all("GiB" in r["skipped"] for r in rows if "skipped" in r)
    assert any("skipped" in r for r in rows) == ("openvino" in {b for b, _, _ in auto.candidates()})
    assert tight.engine_info.backend == "torch" and "seconds" in rows[0]  # the reference still measured and chosen from

    monkeypatch.setattr(auto, "available_memory", lambda: 2 * parameters)  # not even the float32 model fits
    fallback = Embedder(str(shutil.copytree(tiny_pplx_dir, tmp_path / "tiny2")), backend="auto")
    assert fallback.engine_info.backend == "torch" and fallback.engine_info.auto["candidates"] == []
    assert "float32 model and a bf16 copy" in fallback.engine_info.to_dict()["auto"]["skipped"]
    assert fallback.engine_info.dtype == ("bfloat16" if native_bf16(cpu_flags()) else "float32")
    assert fallback.encode("still embeds").shape == (fallback.dimension,)

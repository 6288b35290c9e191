"""Issue 29: the fine-tuning defaults, merging every checkpoint the project loads, LoRA adapters as a product
(train, save, load, serve several over one base), forgetting checks and the summary line."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pplx_embed import Embedder
from pplx_embed.cli import main
from pplx_embed.errors import InputError
from pplx_embed.model.checkpoint import minilm_path
from pplx_embed.train.finetune import finetune

WORDS = ["asthma", "diabetes", "measles", "anemia", "gout", "malaria", "rabies", "scurvy", "tetanus", "cholera",
         "mumps", "rickets", "polio", "typhus", "leprosy", "plague", "croup", "shingles", "lupus", "ebola"]
TEXTS = ["symptoms of gout", "How is malaria treated?"]


def write_pairs(path: Path, n: int = 40) -> Path:
    """``n`` distinct pairs (two question templates per disease)."""
    rows = []
    for i in range(n):
        word, kind = WORDS[i % len(WORDS)], ("symptoms", "treatment")[i // len(WORDS) % 2]
        rows.append({"query": f"What is the {kind} of {word} {i // 40 or ''}?".replace(" ?", "?"),
                     "positive": f"The {kind} of {word} ({i}): doctors describe it in this answer about {word}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_sts(path: Path) -> Path:
    rows = [("A man plays a guitar.", "A person plays an instrument.", 4.2),
            ("A cat sleeps on the sofa.", "A dog runs in the park.", 0.8),
            ("The stock market fell today.", "Shares dropped sharply today.", 4.0),
            ("She is cooking dinner.", "A woman prepares a meal.", 4.5),
            ("The train is late.", "Bananas are yellow.", 0.0)]
    path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    return path


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


# ---- merge ---------------------------------------------------------------------------------------------
def test_merge_carries_buffers_the_fine_tuned_save_dropped(tmp_path, minilm, capsys):
    """MiniLM stores embeddings.position_ids; a fine-tuned save does not. merge works both ways round."""
    from pplx_embed.options import EmbedderOptions
    from pplx_embed.train.encoder import TrainableEncoder

    encoder = TrainableEncoder(EmbedderOptions(model="minilm", device="cpu"))
    with torch.no_grad():
        for p in encoder.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned = encoder.save(tmp_path / "tuned")
    start = tensors(minilm_path())
    assert "embeddings.position_ids" in start and "embeddings.position_ids" not in tensors(tuned)
    assert main(["merge", "minilm", str(tuned), "--t", "0", "-o", str(tmp_path / "m0"), "--quiet"]) == 0
    assert main(["merge", "minilm", str(tuned), "--t", "0.5", "-o", str(tmp_path / "half"), "--quiet"]) == 0
    assert main(["merge", str(tuned), "minilm", "--t", "1", "-o", str(tmp_path / "back"), "--quiet"]) == 0
    m0, half = tensors(tmp_path / "m0"), tensors(tmp_path / "half")
    assert torch.equal(m0["embeddings.position_ids"], start["embeddings.position_ids"])
    assert all(torch.equal(m0[k], start[k]) for k in start)
    w = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(half[w], start[w]) and not torch.equal(half[w], tensors(tuned)[w])
    np.testing.assert_allclose(Embedder(str(tmp_path / "m0"), backend="torch").encode(TEXTS), minilm.encode(TEXTS),
                               atol=1e-6)
    assert Embedder(str(tmp_path / "back"), backend="torch").encode(TEXTS).shape == (2, 384)


def test_merge_a_pplx_checkpoint_with_its_fine_tune(tmp_path, tiny_pplx_dir):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 16)
    summary = finetune(str(tiny_pplx_dir), str(pairs), str(tmp_path / "ft"), holdout=0, hard_negatives=0,
                       merge_start=0.3, batch_size=8, max_steps=1, max_length=32, lr=1e-2, progress=False)
    merged = Path(summary["output"])
    assert merged == tmp_path / "ft" / "merged" and json.loads((merged / "merge.json").read_text())["t"] == 0.3
    a, b, m = tensors(tiny_pplx_dir), tensors(tmp_path / "ft" / "last"), tensors(merged)
    w = "layers.0.mlp.up_proj.weight"
    assert not torch.allclose(m[w], a[w]) and not torch.allclose(m[w], b[w])
    assert Embedder(str(merged)).encode(["merged"]).shape == (1, 64)


def test_merge_refuses_different_architectures(tmp_path, tiny_pplx_dir, capsys):
    assert main(["merge", "minilm", str(tiny_pplx_dir), "-o", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "different parameters" in err


# ---- the default recipe --------------------------------------------------------------------------------
def test_finetune_defaults_hold_out_mine_merge_check_and_print_one_line(tmp_path, tiny_pplx_dir, capsys):
    """Only --model, --train, --output (+ a check): held-out slice, a mined negative, merged result, summary line."""
    pairs, sts = write_pairs(tmp_path / "pairs.jsonl", 80), write_sts(tmp_path / "en-test.tsv")
    out = tmp_path / "ft"
    rc = main(["finetune", "--model", str(tiny_pplx_dir), "--train", str(pairs), "-o", str(out), "--check", str(sts),
               "--quiet"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    config = json.loads((out / "config.json").read_text())
    assert rc == 0 and config["stage"] == "triplets" and config["mining"]["num_negatives"] == 1
    assert config["eval"]["data"] == str(out / "holdout") and config["optim"]["lr"] == 5e-5
    assert config["optim"]["warmup_steps"] >= 1
    held = (out / "holdout" / "queries.jsonl").read_text().splitlines()
    assert len(held) == 8  # 10% of 80 pairs
    mined = [json.loads(line) for line in (out / "mined-0.jsonl").read_text().splitlines()]
    assert mined and all(len(p["negative"]) == 1 for p in mined)
    merged = summary["merged"]
    assert summary["output"] == str(out / "merged") and merged["t"] == float(list(merged["tried"])[-1])
    assert json.loads((out / "merged" / "merge.json").read_text())["t"] == merged["t"]  # T chosen on the check
    assert "ndcg@10" in merged["eval"] and set(summary["checks"]) == {f"{tmp_path.name}/en-test"}
    line = captured.err.strip().splitlines()[-1]
    assert line == summary["line"] and line.startswith("finetune: held-out ndcg@10 ")
    assert f"(merged, t={merged['t']} chosen on the checks)" in line and "en-test" in line
    assert line.endswith(f"model: {out / 'merged'}")
    assert Embedder(summary["output"]).encode(["x"]).shape == (1, 64)


def test_auto_merge_keeps_the_largest_t_whose_checks_lose_at_most_the_limit(tmp_path, shared_data):
    """A "fine-tune" that forgot (MiniLM's weights under heavy noise): auto tries T from the largest down and
    keeps the first within FORGET_LIMIT of the start on every check; without checks it merges at MERGE_START."""
    from pplx_embed.options import EmbedderOptions
    from pplx_embed.train.checks import check_name
    from pplx_embed.train.config import FORGET_LIMIT, MERGE_GRID, MERGE_START
    from pplx_embed.train.encoder import TrainableEncoder
    from pplx_embed.train.finetune import merge_toward_start

    sts = tmp_path / "en-dev.tsv"
    sts.write_text("\n".join((shared_data / "stsb" / "en-dev.tsv").read_text().splitlines()[:201]) + "\n")
    torch.manual_seed(0)
    encoder = TrainableEncoder(EmbedderOptions(model="minilm", device="cpu"))
    with torch.no_grad():
        for p in encoder.model.parameters():
            if p.numel() > 1:
                p.add_(0.5 * p.std() * torch.randn_like(p))
    tuned = encoder.save(tmp_path / "tuned")
    merged = merge_toward_start("minilm", tuned, tmp_path / "auto", "auto", [str(sts)], progress=False)
    name = check_name(sts)
    before = merged["checks"][name]["before"]
    tried = [(float(t), scores[name]) for t, scores in merged["tried"].items()]
    assert [t for t, _ in tried] == list(MERGE_GRID[: len(tried)]) and len(tried) > 1  # 0.7 forgot too much
    assert all(before - score > FORGET_LIMIT for _, score in tried[:-1])
    assert before - tried[-1][1] <= FORGET_LIMIT and merged["t"] == tried[-1][0]
    assert merged["checks"][name]["after"] == tried[-1][1]
    assert json.loads((tmp_path / "auto" / "merge.json").read_text())["t"] == merged["t"]
    assert merge_toward_start("minilm", tuned, tmp_path / "plain", "auto", progress=False) == {
        "t": MERGE_START, "output": str(tmp_path / "plain")}
    assert json.loads((tmp_path / "plain" / "merge.json").read_text())["t"] == MERGE_START


def test_finetune_bad_options_are_one_line(tmp_path, tiny_pplx_dir, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 16)
    for extra, message in ((["--merge-start", "1.5"], "--merge-start must be auto or between 0"),
                           (["--merge-start", "half"], "--merge-start must be auto or between 0"),
                           (["--lora", "0"], "lora must be a positive rank"),
                           (["--check", str(tmp_path / "nope")], "not a BEIR directory"),
                           (["--replay", str(pairs), "--replay-fraction", "0"], "--replay-fraction must be in")):
        rc = main(["finetune", "-m", str(tiny_pplx_dir), "--train", str(pairs), "-o", str(tmp_path / "x"),
                   "--quiet", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.splitlines()) == 1 and message in err, (extra, err)


def test_replay_mixes_general_pairs_into_training(tmp_path, tiny_pplx_dir):
    pairs, general = write_pairs(tmp_path / "pairs.jsonl", 40), tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"query": f"general question {i}", "positive": f"general answer {i}"})
                               + "\n" for i in range(30)))
    finetune(str(tiny_pplx_dir), str(pairs), str(tmp_path / "ft"), holdout=4, hard_negatives=0, merge_start=None,
             replay=str(general), replay_fraction=0.5, batch_size=8, max_steps=1, max_length=32, progress=False)
    trained = [json.loads(line) for line in (tmp_path / "ft" / "train-pairs.jsonl").read_text().splitlines()]
    replayed = [p for p in trained if p["query"].startswith("general question")]
    assert len(replayed) == round(0.5 * (len(trained) - len(replayed))) and len(trained) > len(replayed)


# ---- LoRA adapters -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two LoRA adapters of MiniLM trained by `finetune --lora` on different data, and their training summaries."""
    root = tmp_path_factory.mktemp("lora")
    out = {}
    for name, n in (("a", 24), ("b", 40)):
        pairs = write_pairs(root / f"{name}.jsonl", n)
        rc = main(["finetune", "-m", "minilm", "--train", str(pairs), "-o", str(root / name), "--lora", "4",
                   "--holdout", "0", "--hard-negatives", "0", "--batch-size", "8", "--max-steps", "2",
                   "--max-length", "32", "--lr", "5e-3", "--quiet"])
        assert rc == 0
        out[name] = root / name / "last"
    return out


def test_lora_finetune_writes_a_small_adapter_that_loads_over_the_base(adapters, minilm):
    a = adapters["a"]
    assert (a / "adapter_config.json").is_file() and not (a / "model.safetensors").exists()
    assert (a / "adapter_model.safetensors").stat().st_size < 2_000_000  # MiniLM itself is 90 MB
    config = json.loads((a.parent / "config.json").read_text())
    assert config["lora"] == 4 and config["optim"]["lr"] == 5e-3
    tuned = Embedder("minilm", adapter=str(a))
    assert tuned.engine_info.backend == "torch" and tuned.name.endswith(f"+{a}")
    assert not np.allclose(tuned.encode(TEXTS), minilm.encode(TEXTS), atol=1e-4)
    np.testing.assert_array_equal(Embedder(f"minilm+{a}").encode(TEXTS), tuned.encode(TEXTS))  # one name says it


def test_lora_adapter_equals_the_model_it_trained(adapters):
    """The saved adapter reproduces the training-time model: peft's own loader over the base gives our vectors."""
    from peft import PeftModel

    from pplx_embed.model.encoder import load_transformer
    from pplx_embed.model.pooling import pool_spans

    tuned = Embedder("minilm", adapter=str(adapters["a"]))
    base = load_transformer(minilm_path(), tuned.checkpoint.config, torch.float32, "cpu")
    model = PeftModel.from_pretrained(base, str(adapters["a"])).eval()
    ids = tuned.tokenize(TEXTS[:1])
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(ids), attention_mask=torch.ones(1, len(ids[0]), dtype=torch.long))
    reference = pool_spans(hidden.last_hidden_state, [[(0, len(ids[0]))]], "mean").numpy()
    np.testing.assert_allclose(tuned.pooled(TEXTS[:1]), reference, atol=1e-5)


def test_adapters_share_one_base_and_bad_adapters_are_refused(adapters, tmp_path):
    a = Embedder("minilm", adapter=str(adapters["a"]))
    b = Embedder("minilm", adapter=str(adapters["b"]))
    assert a.model.shared is b.model.shared  # one copy of the base weights
    expected_a, expected_b = a.encode(TEXTS), b.encode(TEXTS)
    assert not np.allclose(expected_a, expected_b, atol=1e-4)
    for _ in range(2):  # switching adapters per call gives each its own vectors
        np.testing.assert_array_equal(b.encode(TEXTS), expected_b)
        np.testing.assert_array_equal(a.encode(TEXTS), expected_a)
    with pytest.raises(InputError, match="not a LoRA adapter directory"):
        Embedder("minilm", adapter=str(tmp_path))
    with pytest.raises(InputError, match="runs on the torch backend"):
        Embedder("minilm", adapter=str(adapters["a"]), backend="onnx")


def test_serve_several_adapters_over_one_base(adapters, minilm):
    from pplx_embed.serve.app import ServeConfig
    from pplx_embed.serve.background import serve_in_thread

    a, b = Embedder("minilm", adapter=str(adapters["a"])), Embedder("minilm", adapter=str(adapters["b"]))
    config = ServeConfig(models=[("base", "minilm"), ("med-a", f"minilm+{adapters['a']}"),
                                 ("med-b", f"minilm+{adapters['b']}")])
    with serve_in_thread(config) as (url, app):
        got = {}
        for name in ("base", "med-a", "med-b"):
            r = httpx.post(url + "/v1/embeddings", json={"model": name, "input": TEXTS, "encoding_format": "float"},
                           timeout=60)
            assert r.status_code == 200, r.text
            got[name] = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        models = {m["id"]: m for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]}
    np.testing.assert_allclose(got["med-a"], a.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(got["med-b"], b.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(got["base"], minilm.encode(TEXTS), atol=1e-5)
    assert models["med-a"]["model"].endswith(f"+{adapters['a']}")


def test_replicas_check_base_plus_adapter_before_ray_starts(adapters, tmp_path):
    """`serve --replicas` checks each model before Ray starts: BASE+ADAPTER passes as its base and adapter, a
    missing adapter is one clear error."""
    from pplx_embed.serve.app import ServeConfig
    from pplx_embed.serve.replicas import check_models

    check_models(ServeConfig(models=[("base", "minilm"), ("med-a", f"minilm+{adapters['a']}")]))
    with pytest.raises(InputError, match="unknown model 'minilm\\+.*missing'"):  # neither a model nor BASE+ADAPTER
        check_models(ServeConfig(models=[("med", f"minilm+{tmp_path / 'missing'}")]))


def test_lora_run_resumes_its_adapter(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 24)
    options = dict(holdout=0, hard_negatives=0, lora=4, batch_size=8, max_length=32, lr=5e-3, progress=False)
    first = finetune("minilm", str(pairs), str(tmp_path / "ft"), max_steps=1, **options)
    assert first["steps"] == 1 and "adapter_of" in first and "LoRA adapter over minilm" in first["line"]
    state = torch.load(tmp_path / "ft" / "last" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 1 and len(state["optimizer"]["state"]) > 0
    again = finetune("minilm", str(pairs), str(tmp_path / "ft"), resume=True, max_steps=2, **options)
    assert again["steps"] == 2 and (tmp_path / "ft" / "last" / "adapter_model.safetensors").is_file()

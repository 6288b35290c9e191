"""Training workflows end to end on tiny real checkpoints: fine-tuning (pplx + MiniLM), resume,
early stopping, diffusion pretraining, contextual and triplet stages, SLERP merge, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pplx_embed import Embedder
from pplx_embed.cli import main
from pplx_embed.train.config import DiffusionConfig, PhaseConfig, load_stage_config, stage_config
from pplx_embed.train.contrastive import train_stage
from pplx_embed.train.data import Pair, epoch_batches, select_phase
from pplx_embed.train.finetune import finetune

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["asthma", "diabetes", "measles", "anemia", "gout", "malaria", "rabies", "scurvy",
          "tetanus", "cholera", "mumps", "rickets"]


def write_pairs(path: Path, n: int = 12) -> Path:
    with path.open("w") as f:
        for t in TOPICS[:n]:
            positive = f"The symptoms of {t} include fever and pain. {t} is treated by doctors."
            f.write(json.dumps({"query": f"What are the symptoms of {t}?", "positive": positive}) + "\n")
    return path


def write_beir(directory: Path, n: int = 12) -> Path:
    (directory / "qrels").mkdir(parents=True)
    with (directory / "corpus.jsonl").open("w") as f:
        for i, t in enumerate(TOPICS[:n]):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"{t} causes fever and pain in patients."}) + "\n")
    with (directory / "queries.jsonl").open("w") as f:
        for i, t in enumerate(TOPICS[:n]):
            f.write(json.dumps({"_id": f"q{i}", "text": f"symptoms of {t}"}) + "\n")
    (directory / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(n)))
    return directory


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def losses(output: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (output / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_finetune_pplx_evaluates_keeps_best_and_resumes(tmp_path, tiny_pplx_dir):
    pairs, beir = write_pairs(tmp_path / "pairs.jsonl"), write_beir(tmp_path / "beir")
    out = tmp_path / "ft"
    options = dict(batch_size=4, lr=3e-3, max_length=32, epochs=1, log_every=1, progress=False, hard_negatives=0,
                   merge_start=None)
    summary = finetune(str(tiny_pplx_dir), str(pairs), str(out), str(beir), max_steps=2, **options)
    assert summary["steps"] == 2 and summary["before"]["ndcg@10"] > 0
    assert [h["step"] for h in summary["history"]] == [0, 2]
    assert summary["best"] == max(h["ndcg@10"] for h in summary["history"])
    assert len(losses(out)) == 2
    best = Embedder(str(out / "best"))
    assert best.checkpoint.is_pplx and best.encode(["symptoms of gout"]).shape == (1, 64)
    state = torch.load(out / "last" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and state["position"] == (0, 0, 2)
    # resume: continues at step 3 from the saved weights and optimizer, same epoch
    summary = finetune(str(tiny_pplx_dir), str(pairs), str(out), str(beir), resume=True, max_steps=3, **options)
    assert summary["steps"] == 3 and len(losses(out)) == 3
    assert torch.load(out / "last" / "trainer_state.pt", weights_only=False)["position"] == (0, 0, 3)


def test_finetune_stops_early_when_the_metric_does_not_improve(tmp_path, tiny_pplx_dir):
    pairs, beir = write_pairs(tmp_path / "pairs.jsonl"), write_beir(tmp_path / "beir")
    summary = finetune(str(tiny_pplx_dir), str(pairs), str(tmp_path / "ft"), str(beir), batch_size=4, lr=0.0,
                       epochs=3, eval_every=1, patience=2, max_length=32, progress=False, hard_negatives=0,
                       merge_start=None)
    assert summary["early_stopped"] and summary["steps"] == 2  # two evaluations without improvement
    assert summary["history"][1]["ndcg@10"] == pytest.approx(summary["before"]["ndcg@10"])


def test_finetune_holds_out_training_pairs_and_mines_hard_negatives(tmp_path, tiny_pplx_dir):
    """--holdout: early stopping on held-out training pairs (never trained on); --hard-negatives: triplets."""
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    with pairs.open("a") as f:  # a second question with a held-out answer must not leak into training
        f.write(json.dumps({"query": "How is gout treated?", "positive": "The symptoms of gout include fever and "
                            "pain. gout is treated by doctors."}) + "\n")
    out = tmp_path / "ft"
    summary = finetune(str(tiny_pplx_dir), str(pairs), str(out), holdout=3, hard_negatives=1, batch_size=4,
                       lr=3e-3, max_length=32, log_every=1, progress=False, seed=1)
    held = [json.loads(line) for line in (out / "holdout" / "queries.jsonl").read_text().splitlines()]
    answers = {json.loads(line)["text"] for line in (out / "holdout" / "corpus.jsonl").read_text().splitlines()}
    trained = [json.loads(line) for line in (out / "train-pairs.jsonl").read_text().splitlines()]
    assert len(held) == 3 and not answers & {p["positive"] for p in trained}
    assert not {q["text"] for q in held} & {p["query"] for p in trained}
    assert len(trained) + len(held) <= 13
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "triplets" and config["mining"]["num_negatives"] == 1
    assert config["eval"]["data"] == str(out / "holdout")
    assert summary["before"]["ndcg@10"] > 0 and summary["history"][-1]["step"] == summary["steps"] > 0
    again = finetune(str(tiny_pplx_dir), str(pairs), str(tmp_path / "again"), holdout=3, seed=1, batch_size=4,
                     max_steps=1, max_length=32, progress=False, hard_negatives=0,
                     merge_start=None)  # the split depends only on the file and seed
    assert (tmp_path / "again" / "holdout" / "queries.jsonl").read_text() == (out / "holdout" /
                                                                               "queries.jsonl").read_text()
    assert again["steps"] == 1
    with pytest.raises(ValueError, match="--holdout must be between 1 and 12"):
        finetune(str(tiny_pplx_dir), str(pairs), str(tmp_path / "x"), holdout=13, progress=False)
    with pytest.raises(ValueError, match="--hard-negatives must be 0 or more"):
        finetune(str(tiny_pplx_dir), str(pairs), str(tmp_path / "x"), hard_negatives=-1, progress=False)
    with pytest.raises(ValueError, match="choose --eval or --holdout"):
        finetune(str(tiny_pplx_dir), str(pairs), str(tmp_path / "x"), str(tmp_path), holdout=2, progress=False)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_finetune_minilm_lowers_loss_and_saves_a_checkpoint_the_runtime_loads(tmp_path, minilm, bf16):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "ft"
    summary = finetune("minilm", str(pairs), str(out), batch_size=12, lr=1e-4, epochs=3, max_length=32,
                       log_every=1, progress=False, holdout=0, hard_negatives=0, merge_start=None,
                       quantizations=["float", "int8"], mrl_dims=[128], bf16=bf16)
    trace = losses(out)  # one batch of all 12 pairs per epoch: the same batch three times
    assert summary["steps"] == 3 and trace[-1] < trace[0]
    tuned = Embedder(str(out / "last"))
    assert tuned.checkpoint.normalize and tuned.checkpoint.pooling == "mean" and tuned.max_length == minilm.max_length
    a, b = tuned.encode(["symptoms of gout"]), minilm.encode(["symptoms of gout"])
    assert a.shape == b.shape == (1, 384) and abs(np.linalg.norm(a) - 1) < 1e-4 and not np.allclose(a, b)
    assert next(iter(weights(out / "last").values())).dtype == torch.float32  # autocast keeps fp32 master weights


def test_diffusion_pretraining_from_a_causal_qwen3_lowers_the_loss_and_loads(tmp_path):
    from pplx_embed.train.diffusion import DiffusionLM, causal_qwen3, mask_batch, pack_texts, train_diffusion

    causal, tok = causal_qwen3("random:tiny", seed=0)
    causal.save_pretrained(tmp_path / "causal")
    tok.save_pretrained(tmp_path / "causal")
    docs = [f"The symptoms of {t} include fever, pain and tiredness for several days." for t in TOPICS]
    (tmp_path / "docs.txt").write_text("\n".join(docs))
    model = DiffusionLM(causal)
    for name, value in causal.model.state_dict().items():  # decoder weights carried over unchanged
        assert torch.equal(model.encoder.state_dict()[name], value)
    blocks = pack_texts(tok, docs, 32)
    noisy, masked, ratio = mask_batch(blocks[:4], 151662, torch.Generator().manual_seed(3))
    assert masked.any(1).all() and (noisy[masked] == 151662).all() and torch.equal(noisy[~masked], blocks[:4][~masked])

    def fixed_loss(m: DiffusionLM) -> float:
        with torch.no_grad():
            return m(noisy, blocks[:4], masked, ratio).item()

    before = fixed_loss(model)
    config = DiffusionConfig(model=str(tmp_path / "causal"), output=str(tmp_path / "out"),
                             data=str(tmp_path / "docs.txt"),
                             seq_len=32, batch_size=2, steps=4, lr=3e-3, log_every=1)
    result = train_diffusion(config, progress=False)
    trained = DiffusionLM(causal_qwen3(str(tmp_path / "causal"))[0])
    trained.encoder.load_state_dict(Embedder(result["output"]).model.state_dict())
    trained.lm_head.load_state_dict(torch.load(Path(result["output"]) / "trainer_state.pt",
                                               weights_only=False)["lm_head"])
    assert fixed_loss(trained) < before
    emb = Embedder(result["output"])
    assert emb.checkpoint.config["model_type"] == "bidirectional_pplx_qwen3"
    assert json.loads((Path(result["output"]) / "training.json").read_text())["mask_token_id"] == 151662
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 9]])  # bidirectional: a later token changes the first state
    hidden = emb.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert not torch.allclose(hidden[0, 0], hidden[1, 0])


def test_export_encoder_causal_and_bidirectional_arms_and_causal_pair_training(tmp_path, capsys):
    """Diffusion ablation arms: a causal LM's decoder exported with its causal mask (plain ``qwen3``) or
    with the mask off; the runtime runs each as exported, and pair training keeps the causal one causal."""
    from pplx_embed.train.diffusion import causal_qwen3, export_encoder

    causal, tok = causal_qwen3("random:tiny", seed=0)
    causal.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    assert main(["export-encoder", str(tmp_path / "lm"), "--attention", "causal", "-o", str(tmp_path / "causal")]) == 0
    bidi = export_encoder(str(tmp_path / "lm"), tmp_path / "bidi", "bidirectional")
    for directory in (tmp_path / "causal", bidi):  # decoder weights carried over unchanged
        saved = weights(directory)
        for name, value in causal.model.state_dict().items():
            assert torch.equal(saved[name], value)
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 9]])  # differ only in the last token

    def states(directory: Path) -> torch.Tensor:
        model = Embedder(str(directory)).model
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state

    c, b = states(tmp_path / "causal"), states(bidi)
    assert json.loads((tmp_path / "causal" / "config.json").read_text())["model_type"] == "qwen3"
    assert Embedder(str(bidi)).checkpoint.config["model_type"] == "bidirectional_pplx_qwen3"
    assert torch.allclose(c[0, :3], c[1, :3]) and not torch.allclose(c[0, 3], c[1, 3])  # earlier tokens blind to later
    with torch.no_grad():
        assert torch.allclose(c, causal.model(input_ids=ids).last_hidden_state, atol=1e-5)
    assert not torch.allclose(b[0, 0], b[1, 0])  # bidirectional: a later token changes the first state
    out = tmp_path / "pairs"
    config = stage_config(stage="pairs", model=str(tmp_path / "causal"), output=str(out), batch_size=4, max_length=32,
                          log_every=1, max_steps=2, optim={"lr": 1e-3},
                          phases=[{"data": str(write_pairs(tmp_path / "p.jsonl"))}])
    train_stage(config, progress=False)
    trained = states(out / "last")
    assert torch.allclose(trained[0, :3], trained[1, :3]) and not torch.allclose(trained, c)  # trained, still causal
    capsys.readouterr()
    with pytest.raises(ValueError, match="unknown attention"):
        export_encoder(str(tmp_path / "lm"), tmp_path / "x", "sideways")
    assert main(["export-encoder", str(tmp_path / "nothing"), "-o", str(tmp_path / "x")]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err


def test_contextual_and_triplet_stages_train_and_mining_skips_near_duplicates(tmp_path, tiny_pplx_dir, minilm):
    from pplx_embed.train.config import MiningConfig
    from pplx_embed.train.mining import mine_hard_negatives

    docs = tmp_path / "docs.jsonl"
    with docs.open("w") as f:
        for i in range(0, 12, 3):
            chunks = [f"{t} is a disease that causes fever." for t in TOPICS[i : i + 3]]
            f.write(json.dumps({"chunks": chunks, "queries": [{"query": f"what is {t}", "chunk": k}
                                                              for k, t in enumerate(TOPICS[i : i + 3])]}) + "\n")
    config = stage_config(stage="contextual", model=str(tiny_pplx_dir), output=str(tmp_path / "ctx"), batch_size=4,
                          max_length=64, log_every=1, max_steps=2, phases=[{"data": str(docs)}],
                          loss={"quantizations": ["float", "int8"]}, optim={"lr": 1e-3})
    summary = train_stage(config, progress=False)
    assert summary["steps"] == 2 and all(np.isfinite(losses(tmp_path / "ctx")))
    assert Embedder(str(tmp_path / "ctx" / "last")).encode_contextual([["a b", "c d"]])[0].shape == (2, 64)

    pair = Pair("What are the symptoms of gout?", "Gout causes sudden severe pain and swelling in the big toe joint.")
    corpus = ["Gout causes sudden, severe pain and swelling in the big toe joint.",  # near-duplicate of the positive
              "Gout is treated with anti-inflammatory drugs and diet changes.",        # the hard negative
              "Measles is a viral infection with a rash.", "The Eiffel tower is in Paris.", pair.positive]
    mined = mine_hard_negatives(minilm, [pair], corpus, MiningConfig(duplicate_threshold=0.95, max_score_ratio=None))
    assert mined[0].negatives == [corpus[1]]  # the near-duplicate ranks first but is skipped
    # the treatment text scores above the positive (0.63 vs 0.57): a likely false negative, skipped too
    mined = mine_hard_negatives(minilm, [pair], corpus, MiningConfig(duplicate_threshold=0.95, max_score_ratio=1.0))
    assert mined[0].negatives[0] not in corpus[:2]

    triplets = tmp_path / "triplets.jsonl"
    with triplets.open("w") as f:
        for i, t in enumerate(TOPICS):
            f.write(json.dumps({"query": f"symptoms of {t}", "positive": f"{t} causes fever.",
                                "negative": f"{TOPICS[i - 1]} causes fever."}) + "\n")
    config = stage_config(stage="triplets", model=str(tiny_pplx_dir), output=str(tmp_path / "tri"), batch_size=4,
                          max_length=32, log_every=1, max_steps=2, phases=[{"data": str(triplets)}])
    assert train_stage(config, progress=False)["steps"] == 2


def test_curriculum_phases_and_sharded_batches():
    pairs = [Pair("q", "p", lang="en"), Pair("q", "p", lang="de"),
             Pair("q", "p", query_lang="de", positive_lang="en"), Pair("q", "p", query_lang="en", positive_lang="en")]
    assert select_phase(pairs, PhaseConfig(data="x", langs=["en"])) == [pairs[0], pairs[3]]
    assert select_phase(pairs, PhaseConfig(data="x", cross_lingual=True)) == [pairs[2]]
    assert len(select_phase(pairs, PhaseConfig(data="x"))) == 4
    with pytest.raises(ValueError, match="selects no examples"):
        select_phase(pairs, PhaseConfig(data="x", langs=["zh"]))
    one = epoch_batches(20, 8, seed=1, epoch=0)
    two = [epoch_batches(20, 4, seed=1, epoch=0, rank=r, world_size=2) for r in range(2)]
    assert one == [a + b for a, b in zip(*two)] and len(one) == 2  # the incomplete batch is dropped
    assert epoch_batches(20, 8, seed=1, epoch=1) != one


def test_example_configs_load_and_bad_configs_are_explained(tmp_path):
    for name in ("pairs-curriculum.yaml", "pairs-fsdp.yaml", "contextual.yaml", "triplets.yaml",
                 "finetune-medquad.json"):
        config = load_stage_config(ROOT / "configs" / name)
        assert config.phases and config.loss.temperature == 0.05
    assert load_stage_config(ROOT / "configs" / "pairs-fsdp.yaml").parallel == "fsdp"
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: pairs\nmodel: minilm\noutput: x\nphases: [{data: a.jsonl}]\nloss: {temprature: 0.1}\n")
    with pytest.raises(ValueError, match="unknown key.*temprature"):
        load_stage_config(bad)
    bad.write_text("stage: pair\nmodel: minilm\noutput: x\nphases: [{data: a.jsonl}]\n")
    with pytest.raises(ValueError, match="unknown stage"):
        load_stage_config(bad)
    bad.write_text("stage: pairs\nmodel: minilm\noutput: x\nphases: [{data: a.jsonl}]\nparallel: zero3\n")
    with pytest.raises(ValueError, match="unknown parallel mode"):
        load_stage_config(bad)


def test_merge_cli_slerps_checkpoints(tmp_path, tiny_pplx_dir, qwen3_tokenizer, capsys):
    from pplx_embed.model.synthetic import write_random_checkpoint

    other = write_random_checkpoint(tmp_path / "other", "tiny", seed=1, tokenizer=qwen3_tokenizer)
    assert main(["merge", str(tiny_pplx_dir), str(other), "--t", "0", "-o", str(tmp_path / "m0")]) == 0
    assert main(["merge", str(tiny_pplx_dir), str(other), "--t", "1", "-o", str(tmp_path / "m1")]) == 0
    assert main(["merge", str(tiny_pplx_dir), str(tiny_pplx_dir), "--t", "0.3", "-o", str(tmp_path / "same")]) == 0
    assert main(["merge", str(tiny_pplx_dir), str(other), "-o", str(tmp_path / "half")]) == 0
    a, b = weights(tiny_pplx_dir), weights(other)
    m0, m1, same, half = (weights(tmp_path / n) for n in ("m0", "m1", "same", "half"))
    for name in a:
        assert torch.equal(m0[name], a[name]) and torch.equal(m1[name], b[name])
        assert torch.allclose(same[name], a[name], atol=1e-6)
    w = "layers.0.mlp.up_proj.weight"
    assert not torch.allclose(half[w], a[w]) and not torch.allclose(half[w], b[w])
    assert Embedder(str(tmp_path / "half")).encode(["merged"]).shape == (1, 64)
    capsys.readouterr()
    assert main(["merge", str(tiny_pplx_dir), str(other), "-o", str(tmp_path / "half")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_finetune_cli_and_its_errors(tmp_path, tiny_pplx_dir, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    rc = main(["finetune", "--model", str(tiny_pplx_dir), "--train", str(pairs), "-o", str(tmp_path / "ft"),
               "--batch-size", "4", "--max-steps", "1", "--max-length", "32", "--quiet"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["steps"] == 1
    (tmp_path / "broken.jsonl").write_text('{"query": "q", "positive": "p"}\n{"query": "q2"}\n')
    rc = main(["finetune", "--model", str(tiny_pplx_dir), "--train", str(tmp_path / "broken.jsonl"), "-o",
               str(tmp_path / "ft2"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1
    assert "broken.jsonl:2: field 'positive' must be a non-empty string" in err

"""Data parallelism: 2 processes (torchrun, gloo, CPU) train exactly like 1 process on the doubled batch.

SGD makes the update linear in the gradient, so equal weights mean equal gradients (Adam's
normalisation would hide a wrong gradient scale). The 2-process run also uses gradient caching
(micro-batches of 2), so the test covers the cross-process gather of embeddings, DDP gradient
averaging and the cached backward together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pplx_embed.train.config import stage_config
from pplx_embed.train.contrastive import train_stage

TOPICS = ["asthma", "diabetes", "measles", "anemia", "gout", "malaria", "rabies", "scurvy"]


@pytest.mark.parametrize("parallel,port", [("ddp", 29533), ("fsdp", 29534)])
def test_two_processes_match_one_process_on_the_doubled_batch(tmp_path, tiny_pplx_dir, parallel, port):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"symptoms of {t}", "positive": f"{t} causes fever and pain."}) + "\n"
                             for t in TOPICS))
    common = dict(stage="pairs", model=str(tiny_pplx_dir), max_length=16, query_max_length=16, max_steps=2,
                  log_every=1, phases=[{"data": str(pairs)}], optim={"optimizer": "sgd", "lr": 5.0,
                                                                     "weight_decay": 0.0, "max_grad_norm": None},
                  loss={"quantizations": ["float", "int8"], "mrl_dims": [32]})
    train_stage(stage_config(output=str(tmp_path / "one"), batch_size=4, **common), progress=False)

    config = tmp_path / "ddp.json"
    config.write_text(json.dumps({**common, "output": str(tmp_path / "two"), "batch_size": 2, "micro_batch": 1,
                                  "parallel": parallel}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "pplx_embed.cli", "train", "pairs", "--config", str(config), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    one = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in two] == [pytest.approx(r["loss"], rel=1e-5) for r in one]
    a = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    start = load_file(str(Path(tiny_pplx_dir) / "model.safetensors"))
    for name in a:
        moved = (a[name] - start[name]).abs().max()
        assert (a[name] - b[name]).abs().max() <= 1e-4 * moved + 1e-7, name
    assert (a["layers.0.mlp.up_proj.weight"] - start["layers.0.mlp.up_proj.weight"]).abs().max() > 1e-4



def test_fsdp_checkpoint_resumes_exactly(tmp_path, tiny_pplx_dir):
    """2-process FSDP with AdamW: 1 step, stop, resume to step 2 == 2 steps straight (full weights and
    optimizer state)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"symptoms of {t}", "positive": f"{t} causes fever and pain."}) + "\n"
                             for t in TOPICS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def run(name: str, steps: int, *extra: str) -> None:
        config = tmp_path / f"{name}-{steps}.json"
        config.write_text(json.dumps(dict(stage="pairs", model=str(tiny_pplx_dir), output=str(tmp_path / name),
                                          max_length=16, query_max_length=16, max_steps=steps, batch_size=2,
                                          log_every=1, phases=[{"data": str(pairs)}], parallel="fsdp",
                                          optim={"lr": 1e-3, "warmup_steps": 0})))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29535",
               "-m", "pplx_embed.cli", "train", "pairs", "--config", str(config), "--quiet", *extra]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    run("straight", 2)
    run("resumed", 1)
    run("resumed", 2, "--resume")
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["parallel"] == "fsdp" and summary["sharded"] is True and summary["world_size"] == 2
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last" / "model.safetensors"))
    start = load_file(str(Path(tiny_pplx_dir) / "model.safetensors"))
    assert a.keys() == start.keys() and all(a[n].shape == start[n].shape for n in a)  # full, unsharded weights
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6, name
    state = torch.load(tmp_path / "resumed" / "last" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and len(state["optimizer"]["state"]) == len(start)  # Adam moments of every weight


def test_diffusion_pretraining_fsdp_equals_ddp(tmp_path):
    """The diffusion stage on 2 processes: sharded (FSDP) and replicated (DDP) weights train identically."""
    docs = [f"The symptoms of {t} include fever, pain and tiredness for several days." for t in TOPICS]
    (tmp_path / "docs.txt").write_text("\n".join(docs * 2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for parallel, port in (("ddp", 29536), ("fsdp", 29537)):
        config = tmp_path / f"{parallel}.json"
        config.write_text(json.dumps(dict(model="random:tiny", output=str(tmp_path / parallel),
                                          data=str(tmp_path / "docs.txt"),
                                          seq_len=32, batch_size=2, steps=3, lr=3e-3, log_every=1, parallel=parallel)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "pplx_embed.cli", "train", "diffusion", "--config", str(config), "--quiet"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    losses = {p: [json.loads(line)["loss"] for line in (tmp_path / p / "log.jsonl").read_text().splitlines()]
              for p in ("ddp", "fsdp")}
    assert len(losses["ddp"]) == 3 and losses["fsdp"] == [pytest.approx(x, rel=1e-5) for x in losses["ddp"]]
    a = load_file(str(tmp_path / "ddp" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-5, name
    state = torch.load(tmp_path / "fsdp" / "last" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 3 and state["optimizer"]["state"]  # full AdamW state, gathered from the shards

"""Data parallelism: 2 processes (torchrun, gloo, CPU) train exactly like 1 process on the doubled batch.

SGD makes the update linear in the gradient, so equal weights mean equal gradients (Adam's
normalisation would hide a wrong gradient scale). The 2-process run also uses gradient caching (micro-batches of 2), so the test covers the
cross-process gather of embeddings, DDP gradient averaging and the cached backward together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pplx_embed.train.contrastive import train_stage
from pplx_embed.train.config import stage_config

TOPICS = ["asthma", "diabetes", "measles", "anemia", "gout", "malaria", "rabies", "scurvy"]


def test_two_process_ddp_matches_one_process_on_the_doubled_batch(tmp_path, tiny_pplx_dir):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"symptoms of {t}", "positive": f"{t} causes fever and pain."}) + "\n"
                             for t in TOPICS))
    common = dict(stage="pairs", model=str(tiny_pplx_dir), max_length=16, query_max_length=16, max_steps=2,
                  log_every=1, phases=[{"data": str(pairs)}], optim={"optimizer": "sgd", "lr": 5.0, "weight_decay": 0.0, "max_grad_norm": None},
                  loss={"quantizations": ["float", "int8"], "mrl_dims": [32]})
    train_stage(stage_config(output=str(tmp_path / "one"), batch_size=4, **common), progress=False)

    config = tmp_path / "ddp.json"
    config.write_text(json.dumps({**common, "output": str(tmp_path / "two"), "batch_size": 2, "micro_batch": 1}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
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


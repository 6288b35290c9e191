"""LoRA adapters as a product: memory per adapter and serving overhead, against one full model per fine-tune.

The alternative to adapters is a full fine-tuned checkpoint per customer/domain; the same fine-tune
as an adapter costs a few MB and runs over one shared base. Measured in one run, on the same texts
(XQuAD-en questions and paragraphs, real lengths), through ``Embedder.encode``:

* ``base``    — the start model, torch fp32 (no adapter);
* ``merged``  — the adapter merged into a full checkpoint (peft ``merge_and_unload``): one full model
  per fine-tune, no LoRA compute — the peer configuration;
* ``adapter`` — ``Embedder(base, adapter=...)`` with ``--adapters`` adapters loaded over one shared base
  (what ``serve --model NAME=BASE+ADAPTER`` runs), requests alternating between them.

Memory: adapter file size, its parameters, and the process's resident memory after loading the base,
then each further adapter, vs after loading each further merged full model. Timing: texts/s, rounds
interleaved, the median counts; ratios adapter/merged and adapter/base. Adapters are random LoRA
weights of rank ``--rank`` (every linear layer; speed and memory do not depend on the values).
Writes ``docs/benchmarks/adapters-cpu.json`` and ``.md``::

    python bench/bench_adapters.py                  # MiniLM, 4 adapters of rank 16, 5 rounds
    python bench/bench_adapters.py --rounds 2 --texts 128   # quick check
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def texts(count: int) -> list[str]:
    rows = [json.loads(line)["text"] for name in ("queries.jsonl", "corpus.jsonl")
            for line in (DATA / "xquad" / "en" / name).read_text().splitlines() if line.strip()]
    return [rows[(i * 7919) % len(rows)] for i in range(count)]  # questions and paragraphs mixed


def write_adapters(model: str, rank: int, count: int, work: Path) -> list[Path]:
    """``count`` random LoRA adapters of ``model`` (what ``finetune --lora`` writes, with random weights)."""
    from pplx_embed import Embedder
    from pplx_embed.model.adapter import attach_lora

    out = []
    for k in range(count):
        torch.manual_seed(k)
        peft = attach_lora(Embedder(model, backend="torch").model, rank, base_name=model)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        peft.save_pretrained(work / f"adapter{k}")
        out.append(work / f"adapter{k}")
    return out


def write_merged(model: str, adapter: Path, out: Path) -> Path:
    """The adapter merged into a full checkpoint (the base's files with merged weights)."""
    from peft import PeftModel

    from pplx_embed import Embedder
    from pplx_embed.train.encoder import save_encoder

    base = Embedder(model, backend="torch")
    merged = PeftModel.from_pretrained(base.model, str(adapter)).merge_and_unload()
    save_encoder(merged, base.tokenizer, out, source=base.checkpoint.path)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "adapters-cpu.json"))
    args = ap.parse_args()
    from pplx_embed import Embedder
    from pplx_embed.engine.threads import cpu_description

    work = Path(tempfile.mkdtemp(prefix="pplx-adapters-"))
    adapters = write_adapters(args.model, args.rank, args.adapters, work)
    merged_dirs = [write_merged(args.model, a, work / f"merged{k}") for k, a in enumerate(adapters)]
    file_mb = (adapters[0] / "adapter_model.safetensors").stat().st_size / 1e6
    sample = texts(args.texts)

    def loaded(embedder):  # one encode touches every weight page (safetensors are memory-mapped until used)
        embedder.encode(sample[:2], truncation="right")
        return embedder

    memory = {"start": rss_mib()}
    base = loaded(Embedder(args.model, backend="torch", dtype="float32"))
    memory["base"] = rss_mib()
    views = []
    for k, a in enumerate(adapters):
        views.append(loaded(Embedder(args.model, adapter=str(a), dtype="float32")))
        memory[f"+adapter{k + 1}"] = rss_mib()
    merged = []
    for k, d in enumerate(merged_dirs):
        merged.append(loaded(Embedder(str(d), backend="torch", dtype="float32")))
        memory[f"+merged{k + 1}"] = rss_mib()
    lora_params = sum(p.numel() for n, p in views[0].model.shared.peft.named_parameters() if "lora_" in n)
    # the first adapter loads the shared base (the plain ``base`` above has its own copy): count the ones after it
    per_adapter = [memory[f"+adapter{k + 1}"] - memory[f"+adapter{k}"] for k in range(1, len(views))]
    per_merged = [memory[f"+merged{k + 1}"] - memory[f"+merged{k}"] for k in range(1, len(merged))]

    configs = {"base": lambda r: base, "merged": lambda r: merged[r % len(merged)],
               "adapter": lambda r: views[r % len(views)]}
    for embedder in (base, *views[:1], *merged[:1]):
        embedder.encode(sample[:32], truncation="right")  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, pick in configs.items():
            embedder = pick(r)
            started = time.perf_counter()
            for i in range(0, len(sample), 32):  # requests of 32 texts, alternating adapters across rounds
                embedder.encode(sample[i : i + 32], truncation="right")
            rates[name].append(len(sample) / (time.perf_counter() - started))
    median = {name: statistics.median(v) for name, v in rates.items()}
    record = {
        "benchmark": "bench_adapters",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": cpu_description(), "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "settings": vars(args),
        "adapter_file_mb": round(file_mb, 2), "adapter_parameters": lora_params,
        "base_parameters": sum(p.numel() for p in base.model.parameters()),
        "rss_mib": {k: round(v, 1) for k, v in memory.items()},
        "rss_per_extra_adapter_mib": round(statistics.mean(per_adapter), 1) if per_adapter else None,
        "rss_per_extra_merged_model_mib": round(statistics.mean(per_merged), 1) if per_merged else None,
        "texts_per_s": {k: round(v, 1) for k, v in median.items()}, "rounds": rates,
        "ratio_adapter_vs_merged": round(median["adapter"] / median["merged"], 3),
        "ratio_adapter_vs_base": round(median["adapter"] / median["base"], 3),
    }
    out = Path(args.out)
    out.write_text(json.dumps(record, indent=2))
    lines = [f"# LoRA adapters vs one full model per fine-tune ({record['date']})", "",
             f"{record['device']}; load average at start {record['load_average_at_start']}; model {args.model}, "
             f"rank {args.rank}, {args.adapters} adapters, {args.texts} XQuAD-en texts in requests of 32, "
             f"median of {args.rounds} rounds", "",
             "| | adapter (ours, shared base) | merged full model per fine-tune (peer) |", "|---|---:|---:|",
             f"| on disk per fine-tune | {file_mb:.1f} MB | "
             f"{sum(f.stat().st_size for f in merged_dirs[0].glob('*.safetensors')) / 1e6:.1f} MB |",
             f"| resident memory per extra fine-tune | {record['rss_per_extra_adapter_mib']} MiB | "
             f"{record['rss_per_extra_merged_model_mib']} MiB |",
             f"| texts/s (base alone: {median['base']:.1f}) | {median['adapter']:.1f} | {median['merged']:.1f} |",
             "", f"adapter / merged throughput: {record['ratio_adapter_vs_merged']}; adapter / base: "
             f"{record['ratio_adapter_vs_base']}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU benchmark of the embedding engine against sentence-transformers, measured in the same run.

Parts (texts are real: XQuAD-en questions and paragraphs, COVID-QA article chunks, from ../shared/data):

1. all-MiniLM-L6-v2: tokens/s and texts/s on short / long / mixed sets for sentence-transformers
   ``encode(batch_size=32)`` (fp32 torch, the peer) and our ``torch``, ``onnx`` and ``onnx-int8``
   backends; configurations alternate within each round and the best round counts (the machine may
   be shared). Then the accuracy price of ``onnx-int8``: mean cosine to fp32 and XQuAD-en nDCG@10.
2. A pplx-embed-v1-0.6B-shaped checkpoint (real config, random weights): tokens/s and peak RSS of
   our engine vs sentence-transformers on the same weights (each in its own process, so RSS is its
   own), and the time and peak RSS of single long inputs.

Writes ``docs/benchmarks/engine-cpu.md`` and ``.json`` (device, versions, date)::

    .venv/bin/python bench/bench_engine.py --quick          # a few minutes
    .venv/bin/python bench/bench_engine.py --long-tokens 2048,32768
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

PEER = "sentence-transformers"
BACKENDS = ("torch", "onnx", "onnx-int8")


# ---- data -------------------------------------------------------------------------------------
def _texts(path: Path, limit: int) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(limit), f)]


def text_sets(short: int, long: int) -> dict[str, list[str]]:
    """``short`` questions, ``long`` paragraphs/chunks (half XQuAD, half COVID-QA), and both shuffled."""
    questions = _texts(DATA / "xquad" / "en" / "queries.jsonl", short)
    passages = _texts(DATA / "xquad" / "en" / "corpus.jsonl", long // 2)
    passages += _texts(DATA / "covidqa-ctx" / "corpus.jsonl", long - len(passages))
    mixed = questions[: short // 2] + passages[: long // 2]
    random.Random(0).shuffle(mixed)
    return {"short": questions, "long": passages, "mixed": mixed}


# ---- machine facts ----------------------------------------------------------------------------
def environment() -> dict:
    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    from pplx_embed.engine.threads import cpu_model, physical_cores

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__, "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``; ``ru_maxrss`` would count the parent's RSS at fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- part 1: MiniLM ---------------------------------------------------------------------------
def bench_minilm(sets: dict[str, list[str]], rounds: int, backends: list[str], eval_queries: int) -> dict:
    from sentence_transformers import SentenceTransformer

    from pplx_embed import Embedder
    from pplx_embed.model.checkpoint import minilm_path

    t0 = time.perf_counter()
    ours = {b: Embedder("minilm", backend=b) for b in backends}
    load_s = time.perf_counter() - t0  # includes ONNX export when not cached yet
    peer = SentenceTransformer(str(minilm_path()), device="cpu")
    runners = {PEER: lambda texts: peer.encode(texts, batch_size=32, convert_to_numpy=True)}
    for b, embedder in ours.items():
        runners[b] = lambda texts, e=embedder: e.encode(texts, truncation="right")
    reference = ours.get("torch") or Embedder("minilm")
    out: dict = {"model": reference.name, "load_s_ours": round(load_s, 1), "sets": {}}
    for name, texts in sets.items():
        tokens = sum(len(ids) for ids in reference.tokenize(texts, truncation="right"))
        for run in runners.values():
            run(texts[:8])  # warm-up
        best = dict.fromkeys(runners, float("inf"))
        for _ in range(rounds):
            for label, run in runners.items():
                start = time.perf_counter()
                run(texts)
                best[label] = min(best[label], time.perf_counter() - start)
        rows = {label: {"seconds": round(s, 3), "tokens_per_s": round(tokens / s), "texts_per_s": round(len(texts) / s, 1),
                        "vs_peer": round(best[PEER] / s, 2)} for label, s in best.items()}
        out["sets"][name] = {"texts": len(texts), "tokens": tokens, "results": rows}
        print(f"[minilm] {name:5s} {len(texts)} texts {tokens} tokens: "
              + ", ".join(f"{k} {v['tokens_per_s']} tok/s ({v['vs_peer']}x)" for k, v in rows.items()), flush=True)
    out["accuracy"] = minilm_accuracy(ours, reference, peer, sets["mixed"], eval_queries)
    return out


def minilm_accuracy(ours: dict, reference, peer, texts: list[str], eval_queries: int) -> dict:
    """Mean/min cosine of each backend to our fp32 torch vectors (and the peer's), XQuAD-en nDCG@10."""
    from pplx_embed.eval.datasets import load_beir
    from pplx_embed.eval.metrics import evaluate

    fp32 = reference.encode(texts, truncation="right")
    vectors = {label: e.encode(texts, truncation="right") for label, e in ours.items()}
    vectors[PEER] = peer.encode(texts, batch_size=32)
    cos = {label: (v * fp32).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(fp32, axis=1))
           for label, v in vectors.items()}
    result = {"cosine_to_torch_fp32": {k: {"mean": round(float(c.mean()), 5), "min": round(float(c.min()), 5)}
                                       for k, c in cos.items()}}
    xquad = load_beir(DATA / "xquad" / "en")
    qids, queries = xquad.query_ids[:eval_queries], xquad.query_texts[:eval_queries]
    ndcg = {}
    for label, e in ours.items():
        docs = e.encode(xquad.corpus_texts, truncation="right")
        scores = e.encode(queries, truncation="right") @ docs.T
        run = {q: {xquad.corpus_ids[j]: float(s[j]) for j in np.argsort(-s)[:100]} for q, s in zip(qids, scores)}
        ndcg[label] = round(100 * evaluate({q: xquad.qrels[q] for q in qids}, run)["ndcg@10"], 2)
    result["xquad_en_ndcg@10"] = {"queries": len(qids), "corpus": len(xquad.corpus_ids), **ndcg}
    print(f"[minilm] accuracy: {json.dumps(result)}", flush=True)
    return result


# ---- part 2: pplx-embed-0.6B-shaped checkpoint ------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """One configuration on the 0.6B-shaped checkpoint, in its own process; prints one JSON line."""
    import torch

    from pplx_embed.engine.threads import physical_cores

    texts = json.loads(Path(args.texts).read_text())
    torch.set_num_threads(physical_cores())
    start = time.perf_counter()
    if args.worker == PEER:
        from sentence_transformers import SentenceTransformer

        import pplx_embed.model.encoder  # noqa: F401  registers bidirectional_pplx_qwen3 with transformers

        model = SentenceTransformer(args.checkpoint, device="cpu")
        count = lambda batch: sum(len(x) for x in model.tokenizer(batch)["input_ids"])  # noqa: E731
        run = lambda batch: model.encode(batch, batch_size=32)  # noqa: E731
    else:
        from pplx_embed import Embedder

        backend = args.worker.removesuffix("-bf16")
        dtype = "bfloat16" if args.worker.endswith("-bf16") else None
        model = Embedder(args.checkpoint, backend=backend, dtype=dtype)
        count = lambda batch: sum(model.count_tokens(batch))  # noqa: E731
        run = model.encode
    result = {"config": args.worker, "load_s": round(time.perf_counter() - start, 1)}
    run(texts[:2])
    tokens = count(texts)
    seconds = float("inf")
    for _ in range(2):  # best of two passes
        start = time.perf_counter()
        vectors = run(texts)
        seconds = min(seconds, time.perf_counter() - start)
    result.update(texts=len(texts), tokens=tokens, seconds=round(seconds, 2), tokens_per_s=round(tokens / seconds, 1),
                  peak_rss_mib=round(peak_rss_mib()), checksum=float(np.abs(vectors).sum()))
    if args.worker != PEER and args.long_tokens:
        from pplx_embed.engine.batching import Sequence

        ids = [i for ids in model.tokenize(json.loads(Path(args.long_text).read_text())) for i in ids]
        result["long"] = []
        for n in args.long_tokens:
            source = (ids * (n // max(len(ids), 1) + 1))[:n]
            start = time.perf_counter()
            model.engine.run([Sequence(source)])
            result["long"].append({"tokens": n, "seconds": round(time.perf_counter() - start, 1),
                                   "peak_rss_mib": round(peak_rss_mib())})
            print(json.dumps(result["long"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(result), flush=True)


def bench_pplx(workdir: Path, texts: list[str], long_text: list[str], long_tokens: list[int],
               configs: list[str], timeout: float) -> dict:
    from pplx_embed.model.synthetic import write_random_checkpoint

    checkpoint = workdir / "pplx-0.6b-random"
    if not (checkpoint / "model.safetensors").is_file() and not list(checkpoint.glob("*.safetensors")):
        print(f"[0.6b] writing a random 0.6B-shaped checkpoint to {checkpoint} ...", flush=True)
        write_random_checkpoint(checkpoint, "0.6b", seed=0)
    (workdir / "texts.json").write_text(json.dumps(texts))
    (workdir / "long.json").write_text(json.dumps(long_text))
    out: dict = {"checkpoint": "write_random_checkpoint(dir, '0.6b') (28 layers, hidden 1024, fp32)",
                 "texts": len(texts), "results": {}}
    for config in configs:
        cmd = [sys.executable, __file__, "--worker", config, "--checkpoint", str(checkpoint),
               "--texts", str(workdir / "texts.json"), "--long-text", str(workdir / "long.json")]
        if config != PEER and long_tokens:
            cmd += ["--long-tokens", ",".join(map(str, long_tokens))]
        print(f"[0.6b] {config} ...", flush=True)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            partial = [json.loads(line) for line in (exc.stderr or b"").decode().splitlines() if line.startswith("{")]
            out["results"][config] = {"error": f"stopped after {timeout:.0f} s", "long": partial}
            print(f"[0.6b] {config}: stopped after {timeout:.0f} s; long inputs done: {partial}", flush=True)
            continue
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            out["results"][config] = {"error": done.stderr.strip().splitlines()[-1:] or ["no output"]}
        else:
            out["results"][config] = json.loads(lines[-1])
        print(f"[0.6b] {config}: {out['results'][config]}", flush=True)
    peer = out["results"].get(PEER, {}).get("tokens_per_s")
    for config, row in out["results"].items():
        if peer and row.get("tokens_per_s"):
            row["vs_peer"] = round(row["tokens_per_s"] / peer, 2)
    return out


# ---- report -----------------------------------------------------------------------------------
def targets(minilm: dict) -> list[str]:
    """The issue's CPU targets, each with the measured figure and met / not met."""
    rows = minilm["sets"]["mixed"]["results"]
    acc = minilm["accuracy"]
    said = []
    if "torch" in rows:
        ratio = rows["torch"]["vs_peer"]
        said.append(f"torch ≥ 1.3x: {ratio}x ({'met' if ratio >= 1.3 else 'not met'})")
    if "onnx-int8" in rows:
        ratio = rows["onnx-int8"]["vs_peer"]
        cos = acc["cosine_to_torch_fp32"]["onnx-int8"]["mean"]
        ndcg = acc["xquad_en_ndcg@10"]
        drop = round(ndcg["torch"] - ndcg["onnx-int8"], 2) if "torch" in ndcg else None
        ok = ratio >= 2.5 and cos >= 0.99 and (drop is None or drop <= 0.5)
        said.append(f"onnx-int8 ≥ 2.5x with mean cosine ≥ 0.99 and nDCG@10 within 0.5: {ratio}x, cosine {cos}, "
                    f"nDCG@10 change {-drop if drop is not None else '—'} points ({'met' if ok else 'not met'})")
    return said


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# Engine benchmark on CPU",
        "",
        f"Run `{result['command']}` on {env['date']}.",
        "",
        f"Device: {env['cpu']}, {env['physical_cores']} physical cores ({env['logical_cpus']} logical), "
        f"no GPU; 1-min load average at start {env['load_average_at_start']:.1f} (a shared machine: the "
        "configurations alternate within each round and the best round counts, so ratios are fairer than "
        "absolute numbers). Versions: python " + env["python"] + ", torch " + env["torch"] + ", transformers "
        + env["transformers"] + ", sentence-transformers " + env["sentence_transformers"] + ", onnxruntime "
        + env["onnxruntime"] + ".",
        "",
    ]
    if "minilm" in result:
        m = result["minilm"]
        lines += [f"## {m['model']} — ours vs sentence-transformers `encode(batch_size=32)` fp32 torch", "",
                  f"{result['rounds']} rounds, best round counted. Token counts include special tokens, after "
                  "truncation to 256 (what both sides compute).", "",
                  "| set | texts | tokens | config | tokens/s | texts/s | vs peer |", "|---|---:|---:|---|---:|---:|---:|"]
        for name, s in m["sets"].items():
            for label, r in s["results"].items():
                lines.append(f"| {name} | {s['texts']} | {s['tokens']} | {label} | {r['tokens_per_s']} | "
                             f"{r['texts_per_s']} | {r['vs_peer']}x |")
        acc = m["accuracy"]
        lines += ["", "Targets of the issue, on the mixed set: " + "; ".join(targets(m)) + "."]
        lines += ["", "Accuracy against our fp32 torch vectors (mixed set) and XQuAD-en retrieval "
                  f"({acc['xquad_en_ndcg@10']['queries']} queries, {acc['xquad_en_ndcg@10']['corpus']} paragraphs):", "",
                  "| config | mean cosine | min cosine | XQuAD-en nDCG@10 |", "|---|---:|---:|---:|"]
        for label, c in acc["cosine_to_torch_fp32"].items():
            lines.append(f"| {label} | {c['mean']} | {c['min']} | {acc['xquad_en_ndcg@10'].get(label, '—')} |")
    if "pplx_0.6b" in result:
        p = result["pplx_0.6b"]
        lines += ["", "## pplx-embed-v1-0.6B-shaped checkpoint (random weights) — ours vs sentence-transformers", "",
                  f"{p['checkpoint']}; {p['texts']} XQuAD questions / passages (whole); each configuration "
                  "in its own process (peak RSS is that process's).", "",
                  "| config | texts | tokens | seconds | tokens/s | vs peer | peak RSS MiB | load s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, r in p["results"].items():
            if "error" in r and "tokens_per_s" not in r:
                lines.append(f"| {label} | — | — | — | — | — | — | {r['error']} |")
                continue
            lines.append(f"| {label} | {r['texts']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
                         f"{r.get('vs_peer', '—')}x | {r['peak_rss_mib']} | {r['load_s']} |")
        longs = [(label, x) for label, r in p["results"].items() for x in r.get("long", [])]
        if longs:
            lines += ["", "Single long inputs (one forward pass, our engine):", "",
                      "| config | tokens | seconds | peak RSS MiB |", "|---|---:|---:|---:|"]
            lines += [f"| {label} | {x['tokens']} | {x['seconds']} | {x['peak_rss_mib']} |" for label, x in longs]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by this script and ``pplx-embed bench``)."""
    parser.add_argument("--quick", action="store_true", help="small sets, 2 rounds, short long-inputs")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="our MiniLM backends (default: all)")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-pplx", action="store_true", help="skip the 0.6B-shaped checkpoint")
    parser.add_argument("--pplx-configs", default=f"torch,{PEER}", help="0.6B configurations: torch, torch-bf16 (bf16 weights on CPU), onnx, onnx-int8, "
                             f"{PEER} (default: torch,{PEER})")
    parser.add_argument("--pplx-texts", default=None, type=lambda v: tuple(int(x) for x in v.split(",")),
                        help="short,long texts for the 0.6B model (default 32,8; --quick 8,2)")
    parser.add_argument("--long-tokens", default=None, help="long single inputs on the 0.6B model, e.g. 2048,32768")
    parser.add_argument("--pplx-timeout", type=float, default=900, help="seconds per 0.6B configuration")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "pplx-embed-bench"))
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks" / "engine-cpu.md"))
    # worker mode (internal)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    parser.add_argument("--long-text", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, command: str = "python bench/bench_engine.py") -> int:
    """Run the benchmark with parsed options; writes the Markdown and JSON reports."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        args.long_tokens = [int(x) for x in args.long_tokens.split(",")] if args.long_tokens else []
        worker(args)
        return 0
    if not DATA.is_dir():
        raise SystemExit(f"data not found at {DATA}")
    rounds = args.rounds or (2 if args.quick else 3)
    sets = text_sets(*((128, 48) if args.quick else (512, 160)))
    long_tokens = [int(x) for x in (args.long_tokens or ("512" if args.quick else "2048,8192")).split(",") if x]
    args.pplx_texts = args.pplx_texts or ((8, 2) if args.quick else (32, 8))
    result: dict = {"command": command, "rounds": rounds, "environment": environment()}
    print(json.dumps(result["environment"]), flush=True)
    if not args.skip_minilm:
        result["minilm"] = bench_minilm(sets, rounds, args.backends.split(","), 300 if args.quick else 1190)
    if not args.skip_pplx:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        short, long = args.pplx_texts
        texts = sets["short"][:short] + sets["long"][:long]
        result["pplx_0.6b"] = bench_pplx(workdir, texts, sets["long"][-8:], long_tokens,
                                         args.pplx_configs.split(","), args.pplx_timeout)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown(result))
    output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(f"wrote {output} and {output.with_suffix('.json')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    return run(parser.parse_args(argv), " ".join(["python bench/bench_engine.py", *argv]))


if __name__ == "__main__":
    sys.exit(main())

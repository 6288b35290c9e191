"""CPU benchmark of the embedding engine against its peers, every configuration measured in the same run.

Texts are real (XQuAD-en questions and paragraphs, COVID-QA article chunks, from ../shared/data).

1. all-MiniLM-L6-v2 on short / long / mixed sets. Ours: ``auto`` (the default, decided from a fresh
   cache so its first-use probe cost is measured), ``torch`` fp32 / bf16, ``openvino`` fp32 / bf16,
   ``onnx``, and the int8-compute opt-ins ``openvino-int8`` and ``onnx-int8``. Peers:
   sentence-transformers ``encode(batch_size=32)`` with ``backend="torch"`` (fp32), ``"onnx"``,
   ``"openvino"``, its ONNX int8 export (``export_dynamic_quantized_onnx_model``) and fastembed on
   the same local ONNX export. Each configuration is a worker process (peers in their own virtual
   environments, see ``PEER_VENVS``); rounds alternate the configurations and the best round counts.
   Accuracy: cosine to our torch fp32 vectors, XQuAD-en nDCG@10.
2. A pplx-embed-v1-0.6B-shaped (or, ``--pplx-shape 4b``, 4B-shaped) checkpoint (real config, random weights),
   mixed-length texts in
   sorted batches of 32: ours vs sentence-transformers on the same weights in fp32 and bf16, and
   the fraction of this machine's matmul peak (a large ``torch.matmul``, same run) reached on
   512-token inputs.

Writes ``docs/benchmarks/engine-cpu.md`` and ``.json`` (CPU model and flags, versions, date)::

    python bench/bench_engine.py --quick
    python bench/bench_engine.py --skip-pplx --rounds 5

Peer environments (their optimum pins clash with our transformers), created once::

    python -m venv /work/peer-venv && echo $PWD/.venv/lib/python3.11/site-packages \
        > /work/peer-venv/lib/python3.11/site-packages/main-venv.pth   # torch from our venv, not a CUDA build
    /work/peer-venv/bin/pip install sentence-transformers==6.2.0 "optimum-intel[openvino]==2.2.0"
    (then pip uninstall torchvision: its CUDA build does not load against torch+cpu)
    /work/peer-venv-onnx: the same with "optimum-onnx[onnxruntime]==0.1.0" fastembed==0.9.1, and
    --no-deps transformers==4.57.6 huggingface_hub==0.36.2 tokenizers==0.22.2 datasets==4.4.1
    (optimum-onnx 0.1.0 needs transformers < 4.58)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PEER_VENVS = {"openvino": Path(os.environ.get("PEER_VENV", "/work/peer-venv")),
              "onnx": Path(os.environ.get("PEER_VENV_ONNX", "/work/peer-venv-onnx"))}
PEER = "st-torch"  # the baseline every ratio divides by: sentence-transformers fp32 torch
OURS = ("auto", "torch", "torch-bf16", "openvino", "openvino-bf16", "onnx", "openvino-int8", "openvino-int8-bf16",
        "onnx-int8")
PEERS = ("st-torch", "st-onnx", "st-onnx-int8", "st-openvino", "fastembed")
SETTLE_S = 1.0  # pause between two workers' timings (ONNX Runtime / OpenVINO threads spin for a while after a run)
INT8 = ("openvino-int8", "openvino-int8-bf16", "onnx-int8", "st-onnx-int8")


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
    import torch

    from pplx_embed.engine.backends import native_bf16
    from pplx_embed.engine.cache import versions
    from pplx_embed.engine.threads import cpu_description, cpu_flags, cpu_model, physical_cores

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cpu_description": cpu_description(), "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(), "native_bf16": native_bf16(cpu_flags()),
        "load_average_at_start": list(os.getloadavg()), "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        **versions("torch", "transformers", "sentence-transformers", "onnxruntime", "openvino", "nncf"),
    }


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- workers: one configuration per process, driven over stdin/stdout ---------------------------
def _load_config(label: str, model: str, workdir: Path, batch: int, our_batch: int | None):
    """``(encode(texts) -> float32 array, facts)`` for one configuration (``our_batch`` None: our defaults)."""
    if label.startswith("st-") or label == "fastembed":
        return _load_peer(label, model, workdir, batch)
    from pplx_embed import Embedder

    backend = label.removesuffix("-bf16")
    dtype = "bfloat16" if label.endswith("-bf16") else None
    embedder = Embedder(model, backend=backend, dtype=dtype, max_batch_size=our_batch)
    return (lambda texts: embedder.encode(texts, truncation="right")), {"engine": embedder.engine_info.to_dict()}


def _load_peer(label: str, model: str, workdir: Path, batch: int):
    import torch

    local = Path(model)
    if label in ("st-onnx", "st-onnx-int8", "st-openvino", "fastembed"):
        local = workdir / f"model-{label}"  # these export next to the weights: a copy, never site-packages
        if not local.is_dir():
            shutil.copytree(model, local)
    if label == "fastembed":
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType
        from sentence_transformers import SentenceTransformer

        if not (local / "onnx" / "model.onnx").is_file():
            SentenceTransformer(str(local), backend="onnx", device="cpu").save_pretrained(str(local))
        TextEmbedding.add_custom_model(model="local/minilm-onnx", pooling=PoolingType.MEAN, normalization=True,
                                       sources=ModelSource(hf="local/minilm-onnx"), dim=384,
                                       model_file="onnx/model.onnx")
        peer = TextEmbedding("local/minilm-onnx", specific_model_path=str(local), threads=torch.get_num_threads())
        return (lambda texts: np.stack(list(peer.embed(texts, batch_size=batch)))), {}
    from sentence_transformers import SentenceTransformer

    kwargs: dict = {}
    if label == "st-onnx-int8":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        config = "avx512_vnni" if "avx512_vnni" in Path("/proc/cpuinfo").read_text() else "avx2"
        target = local / "onnx" / f"model_qint8_{config}.onnx"
        if not target.is_file():
            st = SentenceTransformer(str(local), backend="onnx", device="cpu")
            st.save_pretrained(str(local))
            export_dynamic_quantized_onnx_model(st, config, str(local))
        kwargs = {"backend": "onnx", "model_kwargs": {"file_name": f"onnx/{target.name}"}}
    elif label in ("st-onnx", "st-openvino"):
        kwargs = {"backend": label[3:]}
    elif label == "st-bf16":
        kwargs = {"model_kwargs": {"torch_dtype": torch.bfloat16}}
    if "pplx" in str(model):
        import pplx_embed.model.encoder  # noqa: F401  registers bidirectional_pplx_qwen3 with transformers
    st = SentenceTransformer(str(local), device="cpu", **kwargs)
    if label in ("st-onnx", "st-openvino") and not (local / label[3:]).is_dir():
        st.save_pretrained(str(local))  # keep the export: later workers load it instead of exporting again
    return (lambda texts: st.encode(texts, batch_size=batch, convert_to_numpy=True).astype(np.float32)), {}


def worker(args: argparse.Namespace) -> None:
    """Load one configuration, then answer ``{"op": "time"|"vectors"|"quit", ...}`` lines with JSON lines."""
    import torch

    torch.set_num_threads(args.threads)
    sets = json.loads(Path(args.texts).read_text())
    start = time.perf_counter()
    encode, facts = _load_config(args.worker, args.model, Path(args.workdir), args.batch, args.our_batch or None)
    encode(sets["warmup"])
    print(json.dumps({"ready": True, "load_s": round(time.perf_counter() - start, 1), **facts}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        start = time.perf_counter()
        vectors = encode(sets[cmd["set"]])
        reply = {"seconds": time.perf_counter() - start, "peak_rss_mib": round(peak_rss_mib())}
        if cmd["op"] == "vectors":
            np.save(cmd["out"], vectors)
        print(json.dumps(reply), flush=True)


def physical_cores() -> int:
    from pplx_embed.engine.threads import physical_cores as cores

    return cores()


class Worker:
    """A configuration running in its own process (its own venv for peers)."""

    def __init__(self, label: str, model: str, texts: Path, workdir: Path, batch: int, our_batch: int,
                 env: dict | None = None):
        venv = PEER_VENVS["openvino" if label == "st-openvino" else "onnx"] if label in PEERS[1:] else None
        python = str(venv / "bin" / "python") if venv else sys.executable
        self.label = label
        self.proc = subprocess.Popen(
            [python, __file__, "--worker", label, "--model", model, "--texts", str(texts), "--workdir", str(workdir),
             "--batch", str(batch), "--our-batch", str(our_batch), "--threads", str(physical_cores())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})
        self.ready = self._reply()

    def _reply(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.label}: worker exited ({self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, op: str, name: str, out: Path | None = None) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, "set": name, "out": str(out) if out else None}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def start_workers(labels: list[str], model: str, texts: Path, workdir: Path, batch: int,
                  our_batch: int = 0) -> dict[str, Worker]:
    """Peers encode in batches of ``batch``; ours with ``max_batch_size=our_batch`` (0: our defaults)."""
    workers = {}
    for label in labels:
        print(f"[start] {label} ...", flush=True)
        env = {"PPLX_EMBED_CACHE": str(workdir / "cache")}
        if label == "auto":  # a fresh cache: the first-use decision (probe and conversion) is part of its load
            env["PPLX_EMBED_CACHE"] = tempfile.mkdtemp(prefix="auto-cache-", dir=workdir)
        try:
            workers[label] = Worker(label, model, texts, workdir, batch, our_batch, env)
            print(f"[start] {label}: {json.dumps(workers[label].ready)[:600]}", flush=True)
        except RuntimeError as exc:
            print(f"[start] {label} failed: {exc}", flush=True)
    return workers


# ---- part 1: MiniLM ---------------------------------------------------------------------------
def bench_minilm(workdir: Path, sets: dict[str, list[str]], rounds: int, labels: list[str], queries: int) -> dict:
    from pplx_embed import Embedder
    from pplx_embed.eval.datasets import load_beir
    from pplx_embed.eval.metrics import evaluate
    from pplx_embed.model.checkpoint import minilm_path

    xquad = load_beir(DATA / "xquad" / "en")
    reference = Embedder("minilm", backend="torch")
    texts = {**sets, "warmup": sets["mixed"][:8], "queries": xquad.query_texts[:queries], "corpus": xquad.corpus_texts}
    (workdir / "minilm-texts.json").write_text(json.dumps(texts))
    tokens = {name: sum(map(len, reference.tokenize(texts[name], truncation="right"))) for name in sets}
    workers = start_workers(labels, str(minilm_path()), workdir / "minilm-texts.json", workdir, 32)
    out: dict = {"model": reference.name, "load": {k: w.ready for k, w in workers.items()}, "sets": {}}
    try:
        for name, texts_of_set in sets.items():
            times: dict[str, list[float]] = {label: [] for label in workers}
            for _ in range(rounds):
                for label, w in workers.items():
                    time.sleep(SETTLE_S)  # the previous worker's runtime threads stop spinning before this one starts
                    times[label].append(w.ask("time", name)["seconds"])
            best = {label: min(t) for label, t in times.items()}
            median = {label: float(np.median(t)) for label, t in times.items()}
            base, base_median = best.get(PEER), median.get(PEER)
            rows = {label: {"seconds": round(s, 3), "tokens_per_s": round(tokens[name] / s),
                            "texts_per_s": round(len(texts_of_set) / s, 1),
                            "vs_st_torch": round(base / s, 2) if base else None,
                            "median_tokens_per_s": round(tokens[name] / median[label]),
                            "median_vs_st_torch": round(base_median / median[label], 2) if base_median else None}
                    for label, s in best.items()}
            out["sets"][name] = {"texts": len(texts_of_set), "tokens": tokens[name], "results": rows}
            print(f"[minilm] {name} ({load_now()}): " + ", ".join(f"{k} {v['vs_st_torch']}x" for k, v in rows.items()),
                  flush=True)
        out["accuracy"] = {}
        vectors = {}
        for label, w in workers.items():
            for name in ("mixed", "queries", "corpus"):
                w.ask("vectors", name, workdir / f"{label}-{name}.npy")
            vectors[label] = {n: np.load(workdir / f"{label}-{n}.npy") for n in ("mixed", "queries", "corpus")}
    finally:
        for w in workers.values():
            w.close()
    fp32 = reference.encode(sets["mixed"], truncation="right")
    qids = xquad.query_ids[:queries]
    for label, v in vectors.items():
        cos = (v["mixed"] * fp32).sum(1) / (np.linalg.norm(v["mixed"], axis=1) * np.linalg.norm(fp32, axis=1))
        scores = v["queries"] @ v["corpus"].T
        run = {q: {xquad.corpus_ids[j]: float(s[j]) for j in np.argsort(-s)[:100]} for q, s in zip(qids, scores)}
        ndcg = evaluate({q: xquad.qrels[q] for q in qids}, run)["ndcg@10"]
        out["accuracy"][label] = {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6),
                                  "xquad_en_ndcg@10": round(100 * ndcg, 2)}
    out["xquad"] = {"queries": len(qids), "corpus": len(xquad.corpus_ids)}
    print(f"[minilm] accuracy: {json.dumps(out['accuracy'])}", flush=True)
    return out


def load_now() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


# ---- part 2: pplx-embed-0.6B-shaped checkpoint ------------------------------------------------
def matmul_peak(dtype_name: str, n: int = 4096, reps: int = 6) -> float:
    """This machine's matmul throughput (FLOP/s) on a large square ``torch.matmul``, best of ``reps``."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def forward_flops(config: dict, tokens: int, length: int) -> float:
    """FLOPs of a Qwen3 encoder forward: 2 × non-embedding parameters per token + attention scores and values."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    per_layer = h * heads * head_dim * 2 + h * kv * head_dim * 2 + 3 * h * inter
    return tokens * (2 * layers * per_layer + 4 * layers * heads * head_dim * length)


def bench_pplx(workdir: Path, texts: list[str], labels: list[str], mfu_batch: int, shape: str = "0.6b") -> dict:
    """Ours vs sentence-transformers on a random checkpoint of a published shape (4B: bf16 weights, 8 GB)."""
    import torch
    from transformers import AutoTokenizer

    from pplx_embed.model.synthetic import write_random_checkpoint

    checkpoint = workdir / f"pplx-{shape}-random"
    weights = "bf16" if shape == "4b" else "fp32"  # 4B in fp32 is 16 GB: written and loaded in bf16
    if not list(checkpoint.glob("*.safetensors")):
        print(f"[{shape}] writing a random {shape}-shaped checkpoint to {checkpoint} ...", flush=True)
        write_random_checkpoint(checkpoint, shape, seed=0, dtype=torch.bfloat16 if weights == "bf16" else torch.float32)
    config = json.loads((checkpoint / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(texts)["input_ids"]  # Qwen3 adds no special tokens
    longest = max(ids, key=len)
    fixed = tokenizer.decode((longest * (512 // len(longest) + 1))[:512])
    sets = {"mixed": texts, "warmup": texts[:4], "fixed512": [fixed] * mfu_batch}
    (workdir / "pplx-texts.json").write_text(json.dumps(sets))
    fixed_tokens = sum(map(len, tokenizer(sets["fixed512"])["input_ids"]))
    tokens = sum(map(len, ids))
    out: dict = {"checkpoint": (f"write_random_checkpoint(dir, '{shape}') ({config['num_hidden_layers']} layers, "
                                f"hidden {config['hidden_size']}, {weights} weights)"),
                 "shape": shape, "texts": len(texts), "tokens": tokens, "batch": 32, "results": {}}
    peaks = {d: matmul_peak(d) for d in ("float32", "bfloat16")}
    out["matmul_peak_tflops"] = {d: round(p / 1e12, 3) for d, p in peaks.items()}
    print(f"[{shape}] matmul peak (TFLOP/s): {out['matmul_peak_tflops']} ({load_now()})", flush=True)
    for label in labels:  # one at a time: each holds a whole model
        workers = start_workers([label], str(checkpoint), workdir / "pplx-texts.json", workdir, 32, 32)
        if label not in workers:
            out["results"][label] = {"error": "failed to start"}
            continue
        w = workers[label]
        try:
            seconds = w.ask("time", "mixed")["seconds"]
            mfu_s = w.ask("time", "fixed512")
        except RuntimeError as exc:  # e.g. killed for memory: the other configurations' figures still count
            out["results"][label] = {"error": str(exc)}
            continue
        finally:
            w.close()
        # sentence-transformers loads a checkpoint in its stored dtype: on bf16 weights even st-torch computes in bf16
        bf16 = "bf16" in label or (label.startswith("st-") and weights == "bf16")
        dtype = "bfloat16" if bf16 or w.ready.get("engine", {}).get("dtype") == "bfloat16" else "float32"
        flops = forward_flops(config, fixed_tokens, 512) / mfu_s["seconds"]
        out["results"][label] = {
            "load_s": w.ready["load_s"], "engine": w.ready.get("engine"), "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "peak_rss_mib": mfu_s["peak_rss_mib"],
            "tflops_at_512": round(flops / 1e12, 3), "compute_dtype": dtype,
            "fraction_of_matmul_peak": round(flops / peaks[dtype], 3)}
        print(f"[{shape}] {label}: {out['results'][label]} ({load_now()})", flush=True)
    peers = [r["tokens_per_s"] for k, r in out["results"].items() if k.startswith("st-") and "tokens_per_s" in r]
    for row in out["results"].values():
        if peers and "tokens_per_s" in row:
            row["vs_best_st"] = round(row["tokens_per_s"] / max(peers), 2)
    return out


# ---- report -----------------------------------------------------------------------------------
def verdicts(result: dict) -> list[str]:
    """The issue's targets, each with the measured figure and met / not met."""
    said = []
    m = result.get("minilm")
    if m and "auto" in m["sets"]["mixed"]["results"]:
        acc = m["accuracy"]
        for name, s in m["sets"].items():
            rows = s["results"]
            peers = {k: r["tokens_per_s"] for k, r in rows.items() if k in PEERS and k not in INT8}
            if not peers:
                continue
            best_peer = max(peers, key=peers.get)
            ratio = round(rows["auto"]["tokens_per_s"] / peers[best_peer], 2)
            said.append(f"{name}: auto {ratio}x the best float peer ({best_peer}), {rows['auto']['vs_st_torch']}x "
                        f"st-torch; targets 1.1x and 3x → {'met' if ratio >= 1.1 else 'not met'} / "
                        f"{'met' if rows['auto']['vs_st_torch'] >= 3 else 'not met'}")
            if "median_tokens_per_s" in rows["auto"]:
                medians = {k: rows[k]["median_tokens_per_s"] for k in peers}
                top = max(medians, key=medians.get)
                ratio = round(rows["auto"]["median_tokens_per_s"] / medians[top], 2)
                said.append(f"{name}, median rounds: auto {ratio}x the best float peer ({top}), "
                            f"{rows['auto']['median_vs_st_torch']}x st-torch")
        said.append(f"auto cosine to fp32: mean {acc['auto']['mean_cosine']}, min {acc['auto']['min_cosine']} "
                    f"(target ≥ 0.999: {'met' if acc['auto']['min_cosine'] >= 0.999 else 'not met'})")
        mixed = m["sets"]["mixed"]["results"]
        for label in INT8[:3]:
            if label in mixed and label in acc:
                fp32 = acc["torch"] if "torch" in acc else acc[PEER]  # both are fp32 torch
                drop = round(fp32["xquad_en_ndcg@10"] - acc[label]["xquad_en_ndcg@10"], 2)
                ok = mixed[label]["vs_st_torch"] >= 5 and acc[label]["mean_cosine"] >= 0.99 and drop <= 0.5
                said.append(f"{label} (int8 compute): {mixed[label]['vs_st_torch']}x st-torch "
                            f"(median rounds {mixed[label].get('median_vs_st_torch')}x), mean cosine "
                            f"{acc[label]['mean_cosine']}, nDCG@10 change {-drop:+} points; target ≥ 5x within the "
                            f"guard → {'met' if ok else 'not met'}")
    for key in [k for k in result if k.startswith("pplx_")]:
        p = result[key]
        ours = {k: r for k, r in p["results"].items() if not k.startswith("st-") and "tokens_per_s" in r}
        if ours:
            best = max(ours, key=lambda k: ours[k]["tokens_per_s"])
            r = ours[best]
            said.append(f"{key[5:].upper()}: ours at best ({best}) {r.get('vs_best_st')}x sentence-transformers' best "
                        f"(target 1.5x "
                        f"→ {'met' if (r.get('vs_best_st') or 0) >= 1.5 else 'not met'}); "
                        f"{round(100 * r['fraction_of_matmul_peak'])}% of the {r['compute_dtype']} matmul peak at "
                        f"512 tokens (target 50% → {'met' if r['fraction_of_matmul_peak'] >= 0.5 else 'not met'})")
    return said


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = ["# Engine benchmark on CPU", "", f"Run `{result['command']}` on {env['date']}.", "",
             f"Device: {env['cpu_description']} ({env['logical_cpus']} logical CPUs), no GPU; native bf16: "
             f"{env['native_bf16']}. Load average at start {env['load_average_at_start']} and during the run "
             "(a shared machine: configurations alternate within each round, the best round counts; ratios "
             "are fairer than absolute numbers). Ours: torch " + str(env["torch"]) + ", transformers "
             + str(env["transformers"]) + ", openvino " + str(env["openvino"]) + ", onnxruntime "
             + str(env["onnxruntime"]) + ", nncf " + str(env["nncf"]) + ".", ""]
    if result.get("peer_versions"):
        lines += ["Peers (own virtual environments, same torch): " + "; ".join(
            f"{k}: {', '.join(f'{p} {v}' for p, v in vs.items())}" for k, vs in result["peer_versions"].items()), ""]
    lines += ["Targets of the issue: " + "; ".join(verdicts(result)) + ".", ""]
    if "minilm" in result:
        m = result["minilm"]
        auto = m["load"].get("auto", {}).get("engine", {})
        lines += [f"## {m['model']}", "", (f"{result['rounds']} rounds (configurations alternate within each), "
                  "best round counted, and the median round beside it. "
                  "Peers at their default batches of 32 "
                  "(sentence-transformers `encode(batch_size=32)`, fastembed `batch_size=32`); ours at our defaults "
                  "(token budget 16,384, at most 256 sequences, length-sorted). "
                  "Tokens include special tokens, after truncation to 256."), "",
                  (f"`auto` chose **{auto.get('backend')} {auto.get('dtype')}"
                  f"{' in ' + str(auto['streams']) + ' streams' if auto.get('streams') else ''}**; "
                  "its first load (probe and conversion, "
                  f"fresh cache) took {m['load'].get('auto', {}).get('load_s')} s. Candidates measured:"), "",
                  "| backend | dtype | streams | probe s | mean cosine | min cosine | passed | build s |",
                  "|---|---|---|---:|---:|---:|---|---:|"]
        for c in auto.get("auto", {}).get("candidates", []):
            lines.append(f"| {c['backend']} | {c['dtype']} | {'throughput' if c.get('throughput') else 'one'} | "
                         f"{c.get('seconds', '—')} | {c.get('mean_cosine', '—')} | "
                         f"{c.get('min_cosine', '—')} | {c.get('passed', c.get('error', '—'))} | "
                         f"{c.get('build_s')} |")
        lines += ["", "| set | texts | tokens | config | tokens/s | texts/s | vs st-torch | median tokens/s | "
                  "median vs st-torch |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        for name, s in m["sets"].items():
            for label, r in s["results"].items():
                lines.append(f"| {name} | {s['texts']} | {s['tokens']} | {label} | {r['tokens_per_s']} | "
                             f"{r['texts_per_s']} | {r['vs_st_torch']}x | {r.get('median_tokens_per_s', '—')} | "
                             f"{r.get('median_vs_st_torch', '—')}x |")
        lines += ["", (f"Accuracy: cosine to our torch fp32 vectors (mixed set); XQuAD-en retrieval "
                  f"({m['xquad']['queries']} queries, {m['xquad']['corpus']} paragraphs)."), "",
                  "| config | mean cosine | min cosine | XQuAD-en nDCG@10 | load s |", "|---|---:|---:|---:|---:|"]
        for label, a in m["accuracy"].items():
            lines.append(f"| {label} | {a['mean_cosine']} | {a['min_cosine']} | {a['xquad_en_ndcg@10']} | "
                         f"{m['load'][label]['load_s']} |")
    for key in [k for k in result if k.startswith("pplx_")]:
        p = result[key]
        lines += ["", f"## pplx-embed-v1-{key[5:].upper()}-shaped checkpoint (random weights)", "",
                  (f"{p['checkpoint']}; {p['texts']} mixed XQuAD questions and paragraphs (3:1) "
                  f"({p['tokens']} tokens), sorted batches of 32, one pass after a warm-up; each configuration in "
                  f"its own process. Matmul peak of this machine (4096² `torch.matmul`, same run): "
                  f"{p['matmul_peak_tflops']} TFLOP/s. The last columns: a batch of 512-token inputs, FLOP/s "
                  "reached and its fraction of the peak of the configuration's compute dtype."), "",
                  "| config | tokens/s | vs best ST | load s | peak RSS MiB | TFLOP/s at 512 | of peak |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, r in p["results"].items():
            if "tokens_per_s" not in r:
                lines.append(f"| {label} | {r.get('error')} | | | | | |")
                continue
            lines.append(f"| {label} | {r['tokens_per_s']} | {r.get('vs_best_st', '—')}x | {r['load_s']} | "
                         f"{r['peak_rss_mib']} | {r['tflops_at_512']} | {round(100 * r['fraction_of_matmul_peak'])}% "
                         f"({r['compute_dtype']}) |")
    return "\n".join(lines) + "\n"


def peer_versions() -> dict:
    found = {}
    for name, venv in PEER_VENVS.items():
        python = venv / "bin" / "python"
        if python.is_file():
            code = ("import json; from importlib.metadata import version as v; print(json.dumps({p: v(p) for p in "
                    "['sentence-transformers', 'transformers', 'torch', 'optimum', "
                    + ("'optimum-intel', 'openvino'" if name == "openvino" else "'optimum-onnx', 'onnxruntime', "
                       "'fastembed'") + "]}))")
            done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
            found[str(venv)] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-200:]}
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--quick", action="store_true", help="small sets, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--configs", default=",".join(PEERS + OURS), help="MiniLM configurations (default: all)")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-pplx", action="store_true", help="skip the pplx-embed-shaped checkpoint")
    parser.add_argument("--pplx-shape", choices=("0.6b", "4b"), default="0.6b",
                        help="published shape of the random checkpoint (4b: bf16 weights, needs ~20 GB RAM)")
    parser.add_argument("--pplx-configs", default="st-torch,st-bf16,torch-bf16,openvino-bf16",
                        help="0.6B configurations (ours: auto, torch, torch-bf16, openvino, openvino-bf16; "
                             "peers: st-torch, st-bf16)")
    parser.add_argument("--pplx-texts", type=int, default=None, help="mixed texts for the 0.6B model (default 256)")
    parser.add_argument("--mfu-batch", type=int, default=8, help="512-token inputs in the peak-fraction batch")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "pplx-embed-bench"))
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks" / "engine-cpu.md"))
    for name in ("worker", "model", "texts", "batch", "our-batch", "threads"):  # worker mode (internal)
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS,
                            type=str if name in ("worker", "model", "texts") else int)


def run(args: argparse.Namespace, command: str = "python bench/bench_engine.py") -> int:
    """Run the benchmark with parsed options; writes the Markdown and JSON reports."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT / "src"))
    if args.worker:
        worker(args)
        return 0
    if not DATA.is_dir():
        raise SystemExit(f"data not found at {DATA}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rounds = args.rounds or (2 if args.quick else 3)
    sets = text_sets(*((128, 48) if args.quick else (512, 160)))
    result: dict = {"command": command, "rounds": rounds, "environment": environment(),
                    "peer_versions": peer_versions()}
    print(json.dumps(result["environment"]), flush=True)
    if not args.skip_minilm:
        result["minilm"] = bench_minilm(workdir, sets, rounds, args.configs.split(","), 300 if args.quick else 1190)
    if not args.skip_pplx:
        n = args.pplx_texts or (64 if args.quick else 256)
        texts = sets["short"][: n - n // 4] + sets["long"][: n // 4]  # questions and XQuAD paragraphs, 3:1
        random.Random(1).shuffle(texts)
        result[f"pplx_{args.pplx_shape}"] = bench_pplx(workdir, texts, args.pplx_configs.split(","), args.mfu_batch,
                                                      args.pplx_shape)
    result["environment"]["load_average_at_end"] = list(os.getloadavg())
    output = Path(args.output)
    from pplx_embed.atomic import write_text

    write_text(output.with_suffix(".json"), json.dumps(result, indent=2))
    write_text(output, markdown(result))
    print("\n".join(verdicts(result)))
    print(f"wrote {output} and {output.with_suffix('.json')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    return run(parser.parse_args(argv), " ".join(["python bench/bench_engine.py", *argv]))


if __name__ == "__main__":
    sys.exit(main())

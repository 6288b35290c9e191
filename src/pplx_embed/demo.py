"""``pplx-embed demo``: the main job on the built-in default model, end to end in a minute."""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

import numpy as np

from pplx_embed.options import EmbedderOptions, cache_dir

DOCUMENTS = [
    "Scientists explore the universe driven by curiosity.",
    "Children learn through curious exploration.",
    "Historical discoveries began with curious questions.",
    "Animals use curiosity to adapt and survive.",
    "Philosophy examines the nature of curiosity.",
]
QUERY = "Why are kids so curious?"
CONTEXT_DOCS = [
    ["Curiosity begins in childhood with endless questions about the world.",
     "As we grow, curiosity drives us to explore new ideas and challenge assumptions.",
     "Scientific breakthroughs often start with a simple curious question."],
    ["The curiosity rover explores Mars, searching for signs of ancient life.",
     "Each discovery on Mars sparks new questions about our place in the universe."],
]


XQUAD_EN = Path("../shared/data/xquad/en")  # the team's shared data, beside the repository


def run(model: str | EmbedderOptions | None = None, out: Path = Path("out/demo"),
        eval_data: Path | None = XQUAD_EN) -> None:
    """Embeddings, a searchable index, the server and an eval report, on the default (or given) model."""
    options = model if isinstance(model, EmbedderOptions) else EmbedderOptions.from_env(model=model)
    from pplx_embed.embedder import Embedder

    embedder = Embedder(options=options)
    out.mkdir(parents=True, exist_ok=True)
    print("== 1. embeddings ==")
    engine = embedder.engine_info.to_dict()
    chosen = " (chosen by auto: fastest within the accuracy guard)" if engine["requested"] == "auto" else ""
    print(f"model: {embedder.name}  dim={embedder.dimension}  context={embedder.max_length} tokens  "
          f"device={embedder.device}  engine={engine['backend']}:{engine['dtype']}{chosen}")
    print(f"\nquery: {QUERY!r}")
    print(f"{'precision':<10}{'bytes/vector':>14}  ranking of the documents (best first)")
    precisions = ("float", "int8", "binary")
    docs_all, query_all = embedder.encode_all(DOCUMENTS, precisions), embedder.encode_all([QUERY], precisions)
    for precision in precisions:
        docs, query = docs_all[precision], query_all[precision]
        scores = embedder.similarity(query, docs)[0]
        order = np.argsort(-scores)
        print(f"{precision:<10}{docs[0].nbytes:>14}  " + " > ".join(f"#{i}({scores[i]:.2f})" for i in order))
    small = embedder.encode(DOCUMENTS, quantization="binary", dimensions=min(128, embedder.dimension))
    print(f"binary + Matryoshka {8 * small.shape[1]} dims: {small[0].nbytes} bytes/vector")
    for i, text in enumerate(DOCUMENTS):
        print(f"  #{i} {text}")
    chunks = embedder.encode_contextual(CONTEXT_DOCS, quantization="int8")
    print(f"\nlate chunking: {len(CONTEXT_DOCS)} documents -> {[c.shape for c in chunks]} int8 chunk embeddings")
    search_index(embedder, out / "index")
    serve_once(embedder, out / "index")
    reports = None
    if eval_data is not None and eval_data.is_dir():
        reports = evaluate(embedder, eval_data, out / "eval")
    else:
        print(f"\n== 4. eval report == skipped: no data set at {eval_data} (see docs/eval.md)")
    playground(options.model or embedder.name, out / "index", reports)


def search_index(embedder, path: Path) -> None:
    """Build a persistent binary+int8 index of the sample texts and search it."""
    from pplx_embed.index import Index

    print(f"\n== 2. searchable index at {path} ==")
    shutil.rmtree(path, ignore_errors=True)
    index = Index.create(path, embedder.name, embedder=embedder)
    index.add(DOCUMENTS, ids=[f"doc{i}" for i in range(len(DOCUMENTS))],
              metadata=[{"kind": "sentence"}] * len(DOCUMENTS))
    for hit in index.search(QUERY, k=3):
        print(f"  {hit.score:.3f}  {hit.id}  {hit.text}")
    print(f"  stats: {index.stats()}")
    index.close()


def serve_once(embedder, index: Path) -> None:
    """Start the Perplexity-compatible server on loopback with the demo index, embed and search through it, stop it."""
    import httpx

    from pplx_embed.client import Client
    from pplx_embed.serve.app import ServeConfig
    from pplx_embed.serve.background import serve_in_thread

    print("\n== 3. Perplexity-compatible server ==")
    config = ServeConfig(models=[(None, embedder)], indexes=[("demo", str(index))])
    with serve_in_thread(config) as (url, _), Client(url) as client:
        wire = client.embed(DOCUMENTS, quantization="int8")
        same = np.array_equal(wire, embedder.encode(DOCUMENTS, quantization="int8"))
        print(f"  POST {url}/v1/embeddings (base64_int8): {wire.shape} int8, identical to the Python API: {same}")
        found = httpx.post(f"{url}/v1/indexes/demo/search", json={"query": QUERY, "k": 1}, timeout=60).json()
        hit, timings = found["data"][0]["hits"][0], found["timings"]
        print(f"  POST {url}/v1/indexes/demo/search: {hit['id']} ({hit['score']:.3f}) in {timings['total_ms']:.1f} ms")
        page = httpx.get(f"{url}/ui", timeout=60)
        print(f"  GET {url}/ui: {page.status_code} (the search playground, docs/ui.md)")


def playground(model: str, index: Path, reports: Path | None) -> None:
    """The command that keeps a server with the demo index running, and the page to open."""
    command = f"pplx-embed serve --model {shlex.quote(str(model))} --index demo={shlex.quote(str(index))}"
    if reports is not None:
        command += f" --reports {shlex.quote(str(reports))}"
    print("\n== 5. search playground ==")
    print(f"  keep a server running:  {command} --port 8000")
    print("  then open:              http://127.0.0.1:8000/ui?index=demo   (docs/ui.md)")


def evaluate(embedder, data: Path, out: Path) -> Path:
    """Retrieval quality at every precision on a BEIR set, written as JSON + Markdown + plots."""
    from pplx_embed.eval.cache import EmbeddingCache
    from pplx_embed.eval.runner import run as run_eval
    from pplx_embed.eval.runner import write_report
    from pplx_embed.eval.tasks import Settings

    print(f"\n== 4. eval report on {data.name} ==")
    start = time.perf_counter()
    settings = Settings(truncation="right", cache=EmbeddingCache(cache_dir("eval")), show_progress_bar=True)
    records = run_eval(embedder, data, settings)
    write_report(records, embedder, data, out, time.perf_counter() - start, settings, generator="pplx-embed demo")
    for r in records:
        print(f"  {r['precision']:<15} {r['dimensions']:>5}d  nDCG@10 {100 * r['metrics']['ndcg@10']:6.2f}")
    print(f"  report: {out / 'report.md'}")
    return out

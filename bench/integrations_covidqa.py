"""A RAG retrieval on the shared COVID-QA documents through the LangChain integration: contextual (late-chunked)
vs independent chunks (docs/integrations.md).

Two ``PplxVectorStore``s over the same chunks of covidqa-ctx (98 scientific articles, 1,909 chunks): one
filled with ``add_texts`` (each chunk embedded alone), one with ``add_contextual_documents`` (each article's
chunks embedded together, late chunking; queries as one-chunk documents, as the model card says). Every
question retrieves its top 10 through ``similarity_search``; the chunk holding the answer is the relevant one.
Scores: nDCG@10, Recall@10, Acc@1, MRR@10 (``pplx_embed.eval.metrics``), plus one question where the two
stores disagree, to show what a RAG prompt would receive. Quality only: timings here are not benchmarks.

    .venv/bin/python bench/integrations_covidqa.py                          # MiniLM, int8, all documents
    .venv/bin/python bench/integrations_covidqa.py --model pplx-embed-context-v1-0.6b --docs 20

Writes docs/benchmarks/integrations-covidqa.json (and prints a Markdown table).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(data: Path, docs: int | None) -> tuple[list[tuple[str, str, list[str]]], object]:
    """The articles (id, text rebuilt from its chunks at their offsets, chunks) and the BEIR set (queries, qrels)."""
    from pplx_embed.eval.datasets import load_beir

    ds = load_beir(data)
    articles: dict[str, tuple[str, list[str]]] = {}
    for line in (data / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        text, chunks = articles.get(row["doc_id"], ("", []))
        articles[row["doc_id"]] = (text + " " * (row["char_start"] - len(text)) + row["text"], chunks + [row["text"]])
    out = [(doc_id, text, chunks) for doc_id, (text, chunks) in articles.items()][:docs]
    kept = {f"{d}#{i}" for d, _, chunks in out for i in range(len(chunks))}
    ds.qrels = {q: j for q, j in ds.qrels.items() if set(j) & kept}
    keep = [i for i, q in enumerate(ds.query_ids) if q in ds.qrels]
    ds.query_ids, ds.query_texts = [ds.query_ids[i] for i in keep], [ds.query_texts[i] for i in keep]
    return out, ds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "covidqa-ctx"))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--precision", default="int8", choices=["float", "int8", "binary"])
    ap.add_argument("--docs", type=int, default=None, help="only the first N articles (default: all)")
    ap.add_argument("--work", default="/tmp/pplx-integrations-covidqa")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "integrations-covidqa.json"))
    args = ap.parse_args()

    from langchain_core.documents import Document

    from pplx_embed.eval.metrics import evaluate
    from pplx_embed.eval.report import run_meta
    from pplx_embed.integrations.langchain import PplxEmbeddings, PplxVectorStore

    articles, ds = load(Path(args.data), args.docs)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    settings = {"model": args.model, "precision": args.precision, "truncation": "right"}
    started = time.perf_counter()

    independent = PplxVectorStore(PplxEmbeddings(**settings), work / "independent")
    independent.add_texts([c for _, _, chunks in articles for c in chunks],
                          [{"doc_id": d, "position": i} for d, _, chunks in articles for i in range(len(chunks))],
                          ids=[f"{d}#{i}" for d, _, chunks in articles for i in range(len(chunks))])
    contextual = PplxVectorStore(PplxEmbeddings(**settings, contextual=True), work / "contextual")
    contextual.add_contextual_documents([Document(page_content=text) for _, text, _ in articles],
                                        chunks=[chunks for _, _, chunks in articles], ids=[d for d, _, _ in articles])

    results, hits = {}, {}
    for name, store in (("independent", independent), ("contextual", contextual)):
        hits[name] = {q: store.similarity_search(t, k=10) for q, t in zip(ds.query_ids, ds.query_texts)}
        run = {q: {d.id: 10.0 - r for r, d in enumerate(found)} for q, found in hits[name].items()}
        results[name] = {k: round(100 * v, 2) for k, v in evaluate(ds.qrels, run).items()
                         if k in ("ndcg@10", "recall@10", "accuracy@1", "mrr@10")}

    example = None
    for q, text in zip(ds.query_ids, ds.query_texts):  # the first question the two stores answer differently
        tops = {name: hits[name][q][0] for name in hits}
        right = {name: top.id in ds.qrels[q] for name, top in tops.items()}
        if right["contextual"] != right["independent"]:
            example = {"question": text, "relevant": sorted(ds.qrels[q]),
                       **{name: {"id": top.id, "right": right[name], "text": top.page_content[:300]}
                          for name, top in tops.items()}}
            break

    seconds = time.perf_counter() - started
    command = " ".join(["bench/integrations_covidqa.py", *sys.argv[1:]])
    record = {"run": run_meta(PplxEmbeddings(**settings).source.embedder(), command, seconds,
                              load_average=list(os.getloadavg())),
              "settings": {**settings, "documents": len(articles), "chunks": sum(len(c) for _, _, c in articles),
                           "queries": len(ds.query_ids)},
              "results": results, "example": example}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"| chunks | nDCG@10 | R@10 | Acc@1 | MRR@10 |  ({args.model}, {args.precision}, {len(articles)} articles, "
          f"{record['settings']['chunks']} chunks, {len(ds.query_ids)} questions)")
    print("|---|---|---|---|---|")
    for name, m in results.items():
        print(f"| {name} | {m['ndcg@10']:.1f} | {m['recall@10']:.1f} | {m['accuracy@1']:.1f} | {m['mrr@10']:.1f} |")
    print(json.dumps(example, indent=1, ensure_ascii=False))
    independent.close()
    contextual.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

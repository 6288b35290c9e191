"""``make demo``'s job, end to end: embeddings, index, server round-trip, eval report."""

from __future__ import annotations

import json

from pplx_embed import demo


def test_demo_runs_every_stage(tmp_path, shared_data, capsys):
    xquad_slice = tmp_path / "xquad-en-slice"
    (xquad_slice / "qrels").mkdir(parents=True)
    source = shared_data / "xquad" / "en"
    queries = (source / "queries.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    (xquad_slice / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (xquad_slice / "corpus.jsonl").write_text((source / "corpus.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    ids = {json.loads(q)["_id"] for q in queries}
    qrels = [line for line in (source / "qrels" / "test.tsv").read_text().splitlines()[1:]
             if line.split("\t")[0] in ids]
    (xquad_slice / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")

    demo.run("minilm", tmp_path / "out", xquad_slice)
    out = capsys.readouterr().out
    assert "identical to the Python API: True" in out
    assert "doc1  Children learn through curious exploration." in out.split("== 2.")[1]  # best hit for the query
    results = json.loads((tmp_path / "out" / "eval" / "results.json").read_text())
    ndcg = {r["precision"]: r["metrics"]["ndcg@10"] for r in results["results"]}
    assert {r["model"] for r in results["results"]} == {"sentence-transformers/all-MiniLM-L6-v2"}
    assert set(ndcg) == {"float", "int8", "binary", "binary+rescore"} and ndcg["float"] > 0.8
    assert (tmp_path / "out" / "eval" / "report.md").is_file()
    assert "/v1/indexes/demo/search: doc1" in out and "/ui: 200" in out
    playground = out.split("== 5. search playground ==")[1]
    assert f"pplx-embed serve --model minilm --index demo={tmp_path / 'out' / 'index'} " \
           f"--reports {tmp_path / 'out' / 'eval'} --port 8000" in playground
    assert "http://127.0.0.1:8000/ui?index=demo" in playground

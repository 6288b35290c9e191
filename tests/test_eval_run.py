"""End to end: `pplx-embed eval` / `report` with MiniLM on small slices of ../shared/data, and the
MTEB adapter on a local task."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pplx_embed.cli import main


def _slice_beir(src, dst, n_queries, extra_docs=0, docs=None):
    """The first ``n_queries`` judged queries, their relevant rows (+ ``extra_docs`` distractors), or
    for contextual sets every chunk of the given ``docs``."""
    (dst / "qrels").mkdir(parents=True)
    corpus = [json.loads(line) for line in (src / "corpus.jsonl").read_text().splitlines()]
    qrels = [line.split("\t") for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    if docs is not None:
        keep = [c for c in corpus if c["doc_id"] in docs]
        ids = {c["_id"] for c in keep}
        qrels = [r for r in qrels if r[1] in ids][:n_queries]
    else:
        qrels = qrels[:n_queries]
        need = {r[1] for r in qrels}
        keep = [c for c in corpus if c["_id"] in need] + [c for c in corpus if c["_id"] not in need][:extra_docs]
    qids = {r[0] for r in qrels}
    queries = [q for q in (src / "queries.jsonl").read_text().splitlines() if json.loads(q)["_id"] in qids]
    (dst / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in keep))
    (dst / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (dst / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                            + "".join("\t".join(r) + "\n" for r in qrels))
    return dst


@pytest.fixture(scope="module")
def xquad_slice(shared_data, tmp_path_factory):
    return _slice_beir(shared_data / "xquad" / "en", tmp_path_factory.mktemp("xq") / "xquad-en", 24, extra_docs=10)


def test_eval_runs_every_precision_and_dimension_and_reuses_the_cache(minilm, xquad_slice, tmp_path, capsys):
    args = ["eval", "--model", "minilm", "--data", str(xquad_slice), "-q", "float,int8,binary,binary+rescore",
            "-d", "128,full", "--truncation", "right", "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main(args + ["--output", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {(r["precision"], r["dimensions"]): r for r in data["results"]}
    assert set(rows) == {(p, d) for p in ("float", "int8", "binary", "binary+rescore") for d in (128, 384)}
    for r in rows.values():
        assert r["model"] == "sentence-transformers/all-MiniLM-L6-v2" and r["truncation"] == "right"
        assert set(r["metrics"]) == {"ndcg@10", "accuracy@1", "recall@1", "recall@10", "recall@100", "recall@1000",
                                     "mrr@10", "map"}
        assert r["queries"] == 24 and r["corpus"] >= 10
    assert rows[("float", 384)]["metrics"]["ndcg@10"] > 0.6  # MiniLM finds English XQuAD paragraphs
    assert rows[("binary", 384)]["bytes"] == 48 and rows[("int8", 128)]["bytes"] == 128
    assert data["runs"][0]["cache"] == {"hits": 0, "misses": 2}
    report_md = (tmp_path / "out" / "report.md").read_text()
    assert "| binary + int8 rescore | 128 |" in report_md and "truncation='right'" in report_md
    assert (tmp_path / "out" / "quality_vs_bytes.png").read_bytes()[:4] == b"\x89PNG"
    assert "nDCG@10" in capsys.readouterr().out

    assert main(args + ["--output", str(tmp_path / "again")]) == 0  # same texts, same model: no forward pass
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["runs"][0]["cache"] == {"hits": 2, "misses": 0}
    assert [r["metrics"] for r in again["results"]] == [r["metrics"] for r in data["results"]]

    md = tmp_path / "docs" / "quality.md"
    assert main(["report", str(tmp_path / "out" / "results.json"), "--output", str(md)]) == 0
    text = md.read_text()
    assert "## What the numbers mean for choosing settings" in text
    assert "![quality_vs_bytes](quality/quality_vs_bytes.png)" in text
    assert json.loads((tmp_path / "docs" / "quality" / "results.json").read_text())["results"] == data["results"]


def test_contextual_eval_compares_independent_and_late_chunks(minilm, shared_data, tmp_path):
    from pplx_embed.eval import tasks
    from pplx_embed.eval.datasets import load_beir

    full = load_beir(shared_data / "covidqa-ctx")
    small = sorted(full.documents, key=lambda d: len(d[1]))[:2]  # the two shortest articles
    ds = load_beir(_slice_beir(shared_data / "covidqa-ctx", tmp_path / "ctx", 12, docs={d for d, _ in small}))
    s = tasks.Settings(precisions=("float", "int8"), truncation="right")
    rows = tasks.contextual(minilm, ds, s)
    assert [(r["mode"], r["precision"]) for r in rows] == [("independent", "float"), ("independent", "int8"),
                                                          ("late", "float"), ("late", "int8")]
    assert all(r["documents"] == 2 and 0 <= r["metrics"]["ndcg@10"] <= 1 for r in rows)
    assert rows[0]["metrics"]["recall@10"] > 0.3
    with pytest.raises(ValueError, match="truncation='right'"):  # long chunks are refused unless cut explicitly
        tasks.contextual(minilm, ds, tasks.Settings(precisions=("float",)))


def test_sts_spearman_on_stsb_slice(minilm, shared_data, tmp_path):
    lines = (shared_data / "stsb" / "en-test.tsv").read_text().splitlines()[:121]
    (tmp_path / "en-test.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "sts"
    assert main(["eval", "--model", "minilm", "--data", str(tmp_path / "en-test.tsv"), "--no-cache", "--quiet",
                 "-q", "float,binary", "--output", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [(r["task"], r["precision"], r["pairs"]) for r in rows] == [("sts", "float", 120), ("sts", "binary", 120)]
    assert rows[0]["metrics"]["spearman"] > 60  # MiniLM scores ~82 on the full STSb test


def test_cli_errors_are_one_line_with_the_file_and_line(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path / "missing"), "--model", "minilm"]) == 2
    assert "data not found" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence1\tsentence2\tscore\na\tb\tx\n")
    assert main(["eval", "--data", str(bad), "--model", "minilm", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("bad.tsv:2: score 'x' is not a number") and "\n" not in err
    assert main(["report", str(tmp_path / "none.json")]) == 2
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(bad), "-q", "fp16"])


def test_mteb_adapter_matches_our_eval_on_a_local_task(minilm, xquad_slice):
    mteb = pytest.importorskip("mteb")
    from pplx_embed.eval import tasks
    from pplx_embed.eval.datasets import load_beir
    from pplx_embed.eval.mteb import MTEBEncoder, local_retrieval_task

    model = MTEBEncoder(embedder=minilm, truncation="right")
    assert isinstance(model, mteb.models.EncoderProtocol)
    batches = [{"text": ["a question?", ""], "query": ["a question?", ""]}, {"text": ["Instruct: x\nQuery: y"],
                                                                             "query": ["y"]}]
    vectors = model.encode(batches)
    np.testing.assert_allclose(vectors[0], minilm.encode("a question?"), atol=1e-6)
    assert not vectors[1].any()  # empty text: zero vector
    np.testing.assert_allclose(vectors[2], minilm.encode("y"), atol=1e-6)  # no instruction prefix reaches the model

    result = mteb.evaluate(model, [local_retrieval_task(xquad_slice)], cache=None, show_progress_bar=False)
    ours = tasks.query_to_doc(minilm, load_beir(xquad_slice), tasks.Settings(precisions=("float",), truncation="right"))
    assert result.task_results[0].scores["test"][0]["ndcg_at_10"] == pytest.approx(ours[0]["metrics"]["ndcg@10"],
                                                                                   abs=1e-4)


def test_over_long_texts_are_refused_before_anything_is_embedded(minilm, xquad_slice, tmp_path, capsys):
    data = tmp_path / "long"
    shutil.copytree(xquad_slice, data)
    rows = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines()]
    rows[-1]["text"] = "curiosity " * 600  # far beyond MiniLM's 256 tokens; queries come first and fit
    (data / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "cache"
    assert main(["eval", "--model", "minilm", "--data", str(data), "--cache", str(cache), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "corpus rows are longer than" in err and "--truncation right" in err and len(err.splitlines()) == 1
    assert not cache.exists() or not any(cache.rglob("*.npy"))  # not even the queries were embedded


def test_query_filter_keeps_the_matching_queries_and_names_them(minilm, xquad_slice, tmp_path, capsys):
    data = tmp_path / "kinds"
    shutil.copytree(xquad_slice, data)
    queries = [json.loads(line) for line in (data / "queries.jsonl").read_text().splitlines()]
    for i, q in enumerate(queries):
        q["kind"] = "even" if i % 2 == 0 else "odd"
        q["n"] = i
    (data / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    args = ["eval", "--model", "minilm", "--data", str(data), "-q", "float", "--truncation", "right", "--no-cache",
            "--quiet", "--output", str(tmp_path / "out")]
    assert main(args + ["--query-filter", "kind=even"]) == 0
    (record,) = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert record["queries"] == sum(q["kind"] == "even" for q in queries)
    assert record["dataset"].endswith("[kind='even']")
    assert "Acc@1" in capsys.readouterr().out
    assert main(args + ["--query-filter", "kind=odd", "--query-filter", "n=1"]) == 0  # JSON values; all must hold
    (record,) = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert record["queries"] == 1
    assert main(args + ["--query-filter", "kind=none"]) == 2
    assert "no query has kind='none'" in capsys.readouterr().err


def test_cross_lingual_needs_two_languages(minilm, xquad_slice, tmp_path, capsys):
    one = tmp_path / "one"
    shutil.copytree(xquad_slice, one / "en")
    for data in (xquad_slice, one):
        assert main(["eval", "--model", "minilm", "--data", str(data), "--cross-lingual", "--no-cache"]) == 2
        err = capsys.readouterr().err
        assert "--cross-lingual needs" in err and len(err.splitlines()) == 1

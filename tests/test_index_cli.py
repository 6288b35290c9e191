"""``pplx-embed index create|add|search|stats|delete`` end to end on a real (tiny) checkpoint."""

from __future__ import annotations

import json

import pytest

from pplx_embed.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_index_cli_end_to_end(tmp_path, tiny_pplx_dir, capsys):
    model = str(tiny_pplx_dir)
    ix = str(tmp_path / "ix")
    rows = [{"id": "a", "text": "red apples and pears", "lang": "en"},
            {"id": "b", "text": "blue ocean waves", "metadata": {"lang": "en", "year": 2020}},
            {"_id": "c", "text": "rote Äpfel", "lang": "de"}]
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")

    code, out, _ = run(capsys, "index", "create", ix, "--model", model)
    assert code == 0 and json.loads(out)["dimensions"] == 64
    code, _, err = run(capsys, "index", "add", ix, str(data), "--quiet")
    assert code == 0 and "added 3 items" in err, err
    code, out, _ = run(capsys, "index", "search", ix, "blue ocean waves", "-k", "2")
    result = json.loads(out)
    assert code == 0 and result["hits"][0]["id"] == "b"
    assert result["hits"][0]["metadata"] == {"lang": "en", "year": 2020}
    code, out, _ = run(capsys, "index", "search", ix, "red apples and pears", "--filter", "lang=de")
    assert code == 0 and [h["id"] for h in json.loads(out)["hits"]] == ["c"]
    code, out, _ = run(capsys, "index", "search", ix, "ocean", "--filter", "year=2020")
    assert [h["id"] for h in json.loads(out)["hits"]] == ["b"]

    # re-adding an existing id is refused (nothing written); --upsert replaces
    code, _, err = run(capsys, "index", "add", ix, str(data), "--quiet")
    assert code == 2 and "already in the index" in err and err.count("\n") == 1
    code, _, _ = run(capsys, "index", "add", ix, str(data), "--quiet", "--upsert")
    assert code == 0
    code, out, _ = run(capsys, "index", "delete", ix, "a", "zzz", "--compact")
    assert json.loads(out) == {"deleted": 1, "not_found": 1, "compacted_rows": 4, "items": 2}
    code, out, _ = run(capsys, "index", "stats", ix)
    stats = json.loads(out)
    assert stats["items"] == 2 and stats["tombstones"] == 0 and stats["model"] == model

    # an inverted-file index (exact until it is big enough to train) and a search that sets nprobe
    code, out, _ = run(capsys, "index", "create", str(tmp_path / "ivf"), "--model", model, "--first-stage", "ivf")
    assert code == 0
    assert run(capsys, "index", "add", str(tmp_path / "ivf"), str(data), "--quiet")[0] == 0
    code, out, _ = run(capsys, "index", "search", str(tmp_path / "ivf"), "blue ocean waves", "-k", "1", "--nprobe", "4")
    assert code == 0 and json.loads(out)["hits"][0]["id"] == "b"
    code, out, _ = run(capsys, "index", "stats", str(tmp_path / "ivf"))
    assert json.loads(out)["first_stage"] == "ivf"
    many = tmp_path / "many.jsonl"  # enough to train it: the add compacts, and says how the probe was calibrated
    many.write_text("".join(json.dumps({"id": f"m{i}", "text": f"note {i} about topic {i % 97}"}) + "\n"
                            for i in range(10_000)), encoding="utf-8")
    code, _, err = run(capsys, "index", "add", str(tmp_path / "ivf"), str(many), "--quiet")
    stats = json.loads(run(capsys, "index", "stats", str(tmp_path / "ivf"))[1])
    assert code == 0 and stats["first_stage_index"] == "IndexBinaryIVF" and stats["probe_share"] is not None
    assert f"{stats['lists']} inverted lists" in err and f"; a query probes {stats['nprobe']}, which hold " in err

    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "d1", "chunks": ["First part.", "Second part."], "src": "x"}) + "\n")
    code, _, err = run(capsys, "index", "add", ix, str(docs), "--documents", "--quiet")
    assert code == 2 and "not late-chunked documents" in err and err.count("\n") == 1  # the index holds texts
    ctx = str(tmp_path / "ctx")
    assert run(capsys, "index", "create", ctx, "--model", model, "--contextual")[0] == 0
    code, _, err = run(capsys, "index", "add", ctx, str(docs), "--documents", "--quiet")
    assert code == 0 and "added 2 chunks" in err
    code, out, _ = run(capsys, "index", "search", ctx, "Second part.", "--filter", "src=x", "-k", "1")
    hit = json.loads(out)["hits"][0]
    assert hit["doc_id"] == "d1" and hit["position"] in (0, 1)


ERRORS = [
    (["index", "stats", "{tmp}/missing"], "no index at"),
    (["index", "search", "{tmp}/ix", "   "], "is empty"),
    (["index", "search", "{tmp}/ix", "q", "--filter", "novalue"], "key=value"),
    (["index", "search", "{tmp}/ix", "q", "--model", "minilm"], "holds vectors of"),
    (["index", "add", "{tmp}/ix", "{tmp}/bad.jsonl"], "bad.jsonl:2: not valid JSON"),
    (["index", "add", "{tmp}/ix", "{tmp}/noid.jsonl"], "noid.jsonl:1: missing a string 'id' field"),
    (["index", "add", "{tmp}/ix", "{tmp}/nothere.jsonl"], "file not found"),
    (["index", "create", "{tmp}/ix", "--model", "{model}"], "already exists"),
    (["index", "create", "{tmp}/other", "--model", "{model}", "-d", "32"], "dimensions must be between"),
]


def test_index_cli_errors_are_one_line(tmp_path, tiny_pplx_dir, capsys):
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "text": "fine"}\n{oops\n')
    (tmp_path / "noid.jsonl").write_text('{"text": "no id"}\n')
    assert main(["index", "create", str(tmp_path / "ix"), "--model", str(tiny_pplx_dir)]) == 0
    capsys.readouterr()
    for argv, message in ERRORS:
        code, _, err = run(capsys, *[a.format(tmp=tmp_path, model=tiny_pplx_dir) for a in argv])
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert main(["index", "stats", str(tmp_path / "ix")]) == 0  # nothing was written by the failures
    assert json.loads(capsys.readouterr().out)["items"] == 0


@pytest.fixture(params=["directory", "milvus", "pgvector"])
def location(request, tmp_path):
    """An index location of each backend, as a user types it (skipped when the backend's packages are missing)."""
    if request.param == "directory":
        return str(tmp_path / "ix")
    if request.param == "milvus":
        pytest.importorskip("milvus_lite")
        return f"milvus:{tmp_path / 'lite.db'}#cli"
    return f"pgserver:{request.getfixturevalue('pg_parent') / 'cli'}#cli_{tmp_path.name[-12:].replace('-', '_')}"


def test_index_cli_on_every_backend_location(location, tmp_path, tiny_pplx_dir, capsys):
    model = str(tiny_pplx_dir)
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": t, "lang": lang}) + "\n" for i, t, lang in
                            [("a", "red apples and pears", "en"), ("b", "blue ocean waves", "en"),
                             ("c", "rote Äpfel", "de")]), encoding="utf-8")
    code, out, err = run(capsys, "index", "create", location, "--model", model)
    assert code == 0 and json.loads(out)["model"] == model, err
    assert run(capsys, "index", "add", location, str(data), "--quiet", "--batch-size", "2")[0] == 0
    code, out, _ = run(capsys, "index", "search", location, "blue ocean waves", "-k", "2")
    assert code == 0 and json.loads(out)["hits"][0]["id"] == "b"
    code, out, _ = run(capsys, "index", "search", location, "red apples", "--filter", "lang=de")
    assert [h["id"] for h in json.loads(out)["hits"]] == ["c"]
    code, out, _ = run(capsys, "index", "stats", location)
    assert code == 0 and json.loads(out)["items"] == 3
    code, out, _ = run(capsys, "index", "check", location)
    assert code == 0 and json.loads(out)["ok"]
    code, out, _ = run(capsys, "index", "delete", location, "a")
    assert code == 0 and json.loads(out)["items"] == 2
    code, _, err = run(capsys, "index", "create", location, "--model", model)
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    code, _, err = run(capsys, "index", "create", f"{location}x", "--model", model, "--first-stage",
                       "flat" if location.startswith("pgserver:") else "hnsw")
    assert code == 2 and "first stage" in err and err.count("\n") == 1


def test_query_model_pairing(tmp_path, tiny_pplx_dir, tiny_pplx, qwen3_tokenizer, capsys):
    """An index of one model's vectors can record a query model of the same dimension; text queries use it."""
    from pplx_embed import Embedder
    from pplx_embed.index import Index
    from pplx_embed.model.synthetic import write_random_checkpoint

    query_dir = write_random_checkpoint(tmp_path / "query-model", "tiny", seed=1, tokenizer=qwen3_tokenizer)
    queries = Embedder(str(query_dir))
    texts = ["red apples and pears", "blue ocean waves", "rote Äpfel", "green grass", "a small cat"]
    path = tmp_path / "paired"
    code, out, err = run(capsys, "index", "create", str(path), "--model", str(tiny_pplx_dir),
                         "--query-model", str(query_dir))
    assert code == 0 and json.loads(out)["query_model"] == str(query_dir), err
    with Index.open(str(path), embedder=tiny_pplx) as ix:
        ix.add(texts, ids=[f"t{i}" for i in range(5)])
        ix.use(queries)
        by_text = ix.search("blue ocean", 5)
        by_vector = ix.search(queries.encode("blue ocean"), 5, model=str(query_dir))
        assert [(h.id, round(h.score, 4)) for h in by_text] == [(h.id, round(h.score, 4)) for h in by_vector]
        with pytest.raises(ValueError, match="cannot use the embedder"):
            ix.use(Embedder("minilm"))
    code, out, _ = run(capsys, "index", "search", str(path), "blue ocean", "-k", "5")
    result = json.loads(out)
    assert code == 0 and result["query_model"] == str(query_dir)
    assert [h["id"] for h in result["hits"]] == [h.id for h in by_text]
    code, _, err = run(capsys, "index", "create", str(tmp_path / "bad"), "--model", str(tiny_pplx_dir),
                       "--query-model", "minilm")
    assert code == 2 and "--query-model" in err and "dimensions" in err

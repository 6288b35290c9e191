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
from pplx_embed.model.checkpoint import minilm_path


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
            sidecar = json.loads(out.with_suffix(".json").read_text())
            assert sidecar["model"] == str(tiny_pplx_dir) and sidecar["engine"] == "torch:float32"
        elif name.endswith(".jsonl"):
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            got = np.array([r["embedding"] for r in rows], dtype=np.int8)
            assert {(r["model"], r["engine"]) for r in rows} == {(str(tiny_pplx_dir), "torch:float32")}
        else:
            table = pq.read_table(out)
            got = np.array(table.column("embedding").to_pylist(), dtype=np.int8)
            assert table.schema.metadata[b"model"].decode() == str(tiny_pplx_dir)
            assert table.schema.metadata[b"engine"] == b"torch:float32"
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
        (["info", "{noweights}"], "has no weights"),
        (["embed", "{texts}", "-o", "{tmp}/x.npy", "-m", "minilm", "--device", "tpu9"], "unknown device 'tpu9'"),
        (["embed", "{texts}", "-o", "{tmp}/x.npy", "-m", "minilm", "--device", "cuda:7"], "is not available"),
        (["eval", "--data", "{tmp}/nothing", "-m", "minilm"], "data not found"),
        (["report", "{tmp}/no-results.json"], "results file not found"),
    ],
)
def test_bad_input_gives_one_clear_line(args, message, texts_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json}\n')
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    for name in ("config.json", "modules.json", "tokenizer.json", "tokenizer_config.json"):
        (noweights / name).write_bytes((minilm_path() / name).read_bytes())
    args = [a.format(texts=texts_file, tmp=tmp_path, bad=bad, empty=empty, noweights=noweights) for a in args]
    result = cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.npy").exists()


STARVED = """
import re, resource, sys
from pathlib import Path
import pplx_embed.cli, torch, transformers  # the libraries are in, the model is not
size = int(re.search(r"VmSize:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 32 * 2**20, resource.RLIM_INFINITY))
sys.exit(pplx_embed.cli.main(sys.argv[1:]))
"""


def test_a_bug_is_exit_1_with_one_line_and_debug_prints_the_traceback(texts_file, tmp_path):
    """User errors (InputError; an OS error on a path the user named) are status 2; anything else is ours:
    status 1, one line, --debug for more. Here: a process left 32 MB of address space to load a model in."""
    script = tmp_path / "starved.py"
    script.write_text(STARVED)
    args = ["embed", str(texts_file), "-o", str(tmp_path / "x.npy"), "-m", "minilm", "--quiet"]

    def starved(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=300)

    result = starved(*args)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("pplx-embed: internal error: ") and "rerun with --debug" in result.stderr
    debug = starved(*args, "--debug")  # accepted after the command as well as before it
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    blocker = tmp_path / "a-file"  # an output place that cannot be: the user's to fix
    blocker.write_text("not a directory")
    result = cli("embed", str(texts_file), "-o", str(blocker / "x.npy"), "-m", "minilm", "--quiet")
    assert result.returncode == 2 and result.stderr == f"pplx-embed: error: File exists: {blocker}\n", result.stderr


def test_usage_errors_are_status_2_and_bench_is_a_script_now():
    for argv in (["embed"], ["bench"], ["eval", "--data", "x", "--max-batch-tokens", "0"]):
        with pytest.raises(SystemExit) as exc:
            cli(*argv)
        assert exc.value.code == 2


def test_model_flags_reach_every_command():
    """One declaration (EmbedderOptions.add_arguments): the same flags on every command that loads a model."""
    from pplx_embed.cli import build_parser

    flags = ["--backend", "onnx", "--dtype", "float32", "--device", "cpu", "--max-batch-tokens", "512",
             "--max-batch-size", "8", "--truncation", "left"]
    parser = build_parser()
    commands = [["embed", "in.txt", "-o", "o.npy"], ["info"], ["demo"], ["eval", "--data", "d"],
                ["index", "create", "ix"], ["index", "add", "ix", "in.jsonl"], ["index", "search", "ix", "q"],
                ["batch", "in.jsonl", "-o", "out"]]
    for command in commands:
        args = parser.parse_args(command + flags)
        assert (args.backend, args.dtype, args.device, args.max_batch_tokens, args.max_batch_size,
                args.truncation) == ("onnx", "float32", "cpu", 512, 8, "left"), command


def test_finetune_help_explains_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sampled at random" in text and "drops the last partial batch" in text
    assert "--batch-size BATCH_SIZE pairs per step" in text and "(default: 32)" in text
    assert "default 5e-5, with --lora 5e-4" in text and "--merge-start T" in text and "(default: auto)" in text
    from pplx_embed.cli import build_parser

    finetune = build_parser()._subparsers._group_actions[0].choices["finetune"]
    assert [a.dest for a in finetune._actions if not a.help] == []

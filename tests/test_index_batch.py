"""``pplx-embed batch``: Ray Data batch embedding (local Ray, or a cluster with --ray-address), resumable from its
manifest, exact outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from pplx_embed.cli import main  # noqa: E402
from pplx_embed.errors import InputError  # noqa: E402
from pplx_embed.index.batch import embed_files, read_parts  # noqa: E402
from pplx_embed.options import EmbedderOptions  # noqa: E402


def test_ray_batch_embedding_writes_exact_codes_and_resumes(tmp_path, tiny_pplx, tiny_pplx_dir, capsys):
    texts = [f"document number {i} about {'cats' if i % 2 else 'rockets'}" for i in range(10)]
    src, other = tmp_path / "in.jsonl", tmp_path / "other.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    other.write_text(json.dumps({"id": "o0", "text": "a row of another file"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    # a part file the manifest does not hold (a killed run's, another model's ...): computed again, not trusted
    (out / "part-00000-000000000008.parquet").write_bytes(b"not a finished part")
    args = ["batch", str(src), str(other), "-o", str(out), "--model", str(tiny_pplx_dir), "--rows-per-file", "4",
            "--num-cpus", "1", "--actors", "1", "--quiet"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"output": str(out), "parts": 4, "skipped": 0, "written": 4}
    assert not ray.is_initialized()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["key"] == {"model": str(tiny_pplx_dir), "dimensions": "full", "quantizations": ["int8", "binary"],
                               "field": "text", "rows_per_file": 4, "truncation": "right"}
    assert sorted(manifest["parts"]) == ["part-00000-000000000000.parquet", "part-00000-000000000004.parquet",
                                         "part-00000-000000000008.parquet", "part-00001-000000000000.parquet"]
    assert manifest["parts"]["part-00000-000000000008.parquet"]["rows"] == 2
    table, meta = read_parts(str(out))
    assert meta == {"model": str(tiny_pplx_dir), "dimensions": "64", "quantizations": "int8,binary"}
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(10)] + ["o0"]
    int8 = np.array(table.column("int8").to_pylist(), dtype=np.int8)
    binary = np.stack([np.frombuffer(b, np.uint8) for b in table.column("binary").to_pylist()])
    assert np.array_equal(int8, tiny_pplx.encode(texts + ["a row of another file"], "int8"))
    assert np.array_equal(binary, tiny_pplx.encode(texts + ["a row of another file"], "binary"))
    # nothing left to do: returns without starting Ray
    assert embed_files([str(src), str(other)], str(out), options=EmbedderOptions(model=str(tiny_pplx_dir)),
                       rows_per_file=4) == {"output": str(out), "parts": 4, "skipped": 4, "written": 0}
    # another key (model, dimensions, precision, ...) never reuses these parts
    with pytest.raises(InputError, match=r"holds another run's embeddings: dimensions 'full' \(now 32\)"):
        embed_files([str(src)], str(out), options=EmbedderOptions(model=str(tiny_pplx_dir)), rows_per_file=4,
                    dimensions=32)
    with pytest.raises(InputError, match=r"quantizations \['int8', 'binary'\] \(now \['int8'\]\)"):
        embed_files([str(src)], str(out), options=EmbedderOptions(model=str(tiny_pplx_dir)), rows_per_file=4,
                    quantizations=("int8",))
    with pytest.raises(ValueError, match="no 'body' column"):
        embed_files([str(src)], str(tmp_path / "o2"), field="body")
    with pytest.raises(InputError, match="input not found"):
        embed_files([str(tmp_path / "missing.jsonl")], str(tmp_path / "o3"))
    with pytest.raises(SystemExit) as exited:
        main(args[:-5] + ["--actors", "3:2"])
    assert exited.value.code == 2 and "MIN <= MAX" in capsys.readouterr().err


def test_killed_batch_resumes_without_recomputing_finished_parts(tmp_path, minilm, ray_cluster):
    """SIGKILL a real `pplx-embed batch` on a Ray cluster midway, run it again: only the missing parts run."""
    address, env = ray_cluster
    texts = [f"row {i}: a sentence about {'cats' if i % 3 else 'rockets'} and resumable batch jobs " * 3
             for i in range(10 * 16)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pplx_embed.cli", "batch", str(src), "-o", str(out), "--model", "minilm",
           "--rows-per-file", "16", "--ray-address", address, "--actors", "1", "--quiet"]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    manifest, deadline = out / "_manifest.json", time.monotonic() + 600
    recorded: dict = {}
    while len(recorded) < 2:  # two parts finished and recorded: kill it in the middle of the others
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        if manifest.exists():
            recorded = json.loads(manifest.read_text())["parts"]
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    recorded = json.loads(manifest.read_text())["parts"]
    assert 2 <= len(recorded) < 10, "the run finished before it was killed: make the parts longer"
    stamps = {name: (out / name).stat() for name in recorded}

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == {"output": str(out), "parts": 10, "skipped": len(recorded), "written": 10 - len(recorded)}
    for name, before in stamps.items():  # the finished parts were not computed again
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    table, _ = read_parts(str(out))
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(len(texts))]
    assert np.array_equal(np.array(table.column("int8").to_pylist(), np.int8), minilm.encode(texts, "int8"))


def test_ray_batch_straight_into_an_index(tmp_path, tiny_pplx, tiny_pplx_dir, capsys):
    texts = [f"a note about {'cats' if i % 2 else 'rockets'} number {i}" for i in range(9)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"n{i}", "text": t, "lang": "en", "n": i}) + "\n"
                           for i, t in enumerate(texts)))
    out, index = tmp_path / "out", tmp_path / "idx"
    args = ["batch", str(src), "-o", str(out), "--model", str(tiny_pplx_dir), "--rows-per-file", "4",
            "--num-cpus", "1", "--index", str(index), "--quiet"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 3 and summary["indexed_rows"] == 9 and summary["items"] == 9
    from pplx_embed.index import Index

    ix = Index.open(str(index), embedder=tiny_pplx)
    assert ix.info()["model"] == str(tiny_pplx_dir) and ix.dimensions == 64
    # the stored codes are the model's own, bit for bit, with text and metadata
    stored = ix.get([f"n{i}" for i in range(9)], "int8")
    assert np.array_equal(np.stack([stored[f"n{i}"] for i in range(9)]), tiny_pplx.encode(texts, "int8"))
    stored = ix.get(["n3"], "binary")["n3"]
    assert np.array_equal(stored, tiny_pplx.encode([texts[3]], "binary")[0])
    hit = ix.search(tiny_pplx.encode([texts[4]])[0], 1)[0]
    assert (hit.id, hit.text, hit.metadata) == ("n4", texts[4], {"lang": "en", "n": 4})
    ix.close()
    # running again (resume) re-upserts the same rows: nothing doubles
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 9
    # parts of another model are refused
    other = Index.create(str(tmp_path / "other"), "another-model", 64)
    other.close()
    assert main(args[:-3] + ["--index", str(tmp_path / "other"), "--quiet"]) == 2
    assert "another-model" in capsys.readouterr().err

"""``pplx-embed batch``: Ray Data batch embedding on a local Ray cluster, resumable, exact outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from pplx_embed.cli import main  # noqa: E402
from pplx_embed.errors import InputError  # noqa: E402
from pplx_embed.index.batch import embed_files, read_parts  # noqa: E402


def test_ray_batch_embedding_writes_exact_codes_and_resumes(tmp_path, tiny_pplx, tiny_pplx_dir, capsys):
    texts = [f"document number {i} about {'cats' if i % 2 else 'rockets'}" for i in range(10)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out"
    out.mkdir()
    # a part left by an earlier, interrupted run: it is kept, not embedded again
    done = out / "part-00000-000000000008.parquet"
    done.write_bytes(b"already written")
    code = main(["batch", str(src), "-o", str(out), "--model", str(tiny_pplx_dir), "--rows-per-file", "4",
                 "--num-cpus", "1", "--quiet"])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"output": str(out), "parts": 3, "skipped": 1, "written": 2}
    assert done.read_bytes() == b"already written" and not ray.is_initialized()
    done.unlink()
    table, meta = read_parts(str(out))
    assert meta == {"model": str(tiny_pplx_dir), "dimensions": "64", "quantizations": "int8,binary"}
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(8)]
    int8 = np.array(table.column("int8").to_pylist(), dtype=np.int8)
    binary = np.stack([np.frombuffer(b, np.uint8) for b in table.column("binary").to_pylist()])
    assert np.array_equal(int8, tiny_pplx.encode(texts[:8], "int8"))
    assert np.array_equal(binary, tiny_pplx.encode(texts[:8], "binary"))
    # nothing left to do: returns without starting Ray
    (out / "part-00000-000000000008.parquet").write_bytes(b"x")
    assert embed_files([str(src)], str(out), rows_per_file=4)["written"] == 0
    with pytest.raises(ValueError, match="no 'body' column"):
        embed_files([str(src)], str(tmp_path / "o2"), field="body")
    with pytest.raises(InputError, match="input not found"):
        embed_files([str(tmp_path / "missing.jsonl")], str(tmp_path / "o3"))


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

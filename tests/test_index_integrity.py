"""The embedded index against an operator: readers during compaction in another process, damaged files,
lost WAL, hostile metadata and filters, a full disk. Damage is one clear error, never a wrong answer."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from pplx_embed.cli import main
from pplx_embed.errors import InputError
from pplx_embed.index import Index, IndexDamagedError

DIM = 128
ROUNDS = 30  # add, delete and compact rounds of the writer process (exact first stage)


def vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((n, DIM))).astype(np.float32)


def make(path, n: int = 1000, **options) -> np.ndarray:
    """An index of ``n`` vectors (compacted: ``first_stage="ivf"`` trains its inverted file)."""
    x = vectors(n, 0)
    with Index.create(str(path), "synthetic-model", DIM, **options) as ix:
        ix.add(ids=[f"v{i}" for i in range(n)], vectors=x, texts=[f"text {i}" for i in range(n)],
               metadata=[{"i": i} for i in range(n)])
        ix.compact()
    return x


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


WRITER = """
import sys
import numpy as np
from pplx_embed.index import Index

path, rounds, grow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ix = Index.open(path)
if grow:  # enough new rows that the first compaction trains the inverted file again (4x the rows)
    x = np.random.default_rng(99).standard_normal((grow, %d)).astype(np.float32) * 0.3
    ix.add(ids=[f"grow{i}" for i in range(grow)], vectors=x)
for r in range(rounds):
    x = np.random.default_rng(100 + r).standard_normal((300, %d)).astype(np.float32) * 0.3
    ix.add(ids=[f"churn{r}-{i}" for i in range(300)], vectors=x)
    if r:
        ix.delete([f"churn{r - 1}-{i}" for i in range(300)])
    ix.compact()
    print(r, ix.stats()["lists"], flush=True)
ix.close()
""" % (DIM, DIM)


@pytest.mark.parametrize("first_stage", ["flat", "ivf"])
def test_reader_in_another_process_sees_whole_generations_during_compaction(tmp_path, first_stage):
    """ivf: 12,000 rows, trained; the writer adds 40,000 so that its first compaction trains a new inverted
    file (k-means, new lists) while the reader searches, then every compaction rewrites the rows' lists."""
    path = tmp_path / "ix"
    n, grow, rounds = (12_000, 40_000, 10) if first_stage == "ivf" else (2000, 0, ROUNDS)
    x = make(path, n, first_stage=first_stage)
    reader = Index.open(str(path))
    lists = reader.stats()["lists"]
    assert (lists is not None) == (first_stage == "ivf")
    assert reader.search(x[0], 1)[0].id == "v0"  # warm: the reader is searching before the writer starts
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rounds), str(grow)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = np.random.default_rng(1)
    queries = errors = wrong = 0
    deadline = time.monotonic() + 300
    try:
        while writer.poll() is None and time.monotonic() < deadline:
            picked = rng.integers(0, n, 8)
            try:
                for j, hits in zip(picked, reader.search_many(x[picked], 3)):
                    wrong += hits[0].id != f"v{j}" or hits[0].text != f"text {j}" or hits[0].metadata != {"i": j}
                hit = reader.search(x[picked[0]], 1, filter={"i": int(picked[0])})
                wrong += [h.id for h in hit] != [f"v{picked[0]}"]
            except Exception as exc:  # noqa: BLE001 (counted: a reader must never fail while another process compacts)
                errors += 1
                print(type(exc).__name__, exc)
            queries += 9
    finally:
        out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    done = [line.split() for line in out.splitlines()]
    assert [r for r, _ in done] == [str(r) for r in range(rounds)]
    assert errors == 0 and wrong == 0 and queries > 100
    stats = reader.stats()  # the reader follows to the last generation (flat: round 0 drops nothing, no compaction;
    assert stats["generation"] == (rounds + 1 if first_stage == "ivf" else rounds - 1)  # ivf: make() trained it)
    assert stats["items"] == n + grow + 300 and stats["tombstones"] == 0
    if first_stage == "ivf":  # trained again once, for the grown size, and kept since
        assert {int(lists) for _, lists in done} == {stats["lists"]} and stats["lists"] > 2 * lists - 2
    assert reader.check()["items"] == n + grow + 300
    suffixes = ("binary", "int8") + (("lists", "spill") if first_stage == "ivf" else ())  # no clusters: spilled
    assert (stats["spilled"] or 0) > 0 if first_stage == "ivf" else stats["spilled"] is None
    assert sorted(p.name for p in path.glob("vectors.*")) == [f"vectors.{stats['generation']}.{s}" for s in suffixes]
    reader.close()


def overwrite(file, offset: int, data: bytes) -> None:
    with open(file, "r+b") as f:
        f.seek(offset)
        f.write(data)


def damage_int8(path, row: int) -> None:
    overwrite(next(path.glob("vectors.*.int8")), row * DIM,
              np.random.default_rng(5).integers(-127, 127, DIM, dtype=np.int8).tobytes())


def damage_binary(path, row: int) -> None:
    with open(next(path.glob("vectors.*.binary")), "r+b") as f:
        f.seek(row * DIM // 8)
        f.write(bytes(255 - b for b in f.read(DIM // 8)[:1]))


def sql(path, *statements: str) -> None:
    conn = sqlite3.connect(path / "index.sqlite")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


DAMAGE = {  # name -> (how, what the error says, whether open already refuses it)
    "int8 bytes": (lambda p: damage_int8(p, 7), "do not match their checksum", False),
    "binary bytes": (lambda p: damage_binary(p, 7), "do not match their checksum", True),
    "dimensions edited": (lambda p: sql(p, "UPDATE manifest SET value = '64' WHERE key = 'dimensions'"),
                          "facts do not match", True),
    "ids swapped": (lambda p: sql(p, "UPDATE items SET id = 'tmp' WHERE id = 'v7'",
                                  "UPDATE items SET id = 'v7' WHERE id = 'v8'",
                                  "UPDATE items SET id = 'v8' WHERE id = 'tmp'"), "does not match its checksum", False),
    "count -1": (lambda p: sql(p, "UPDATE manifest SET value = '-1' WHERE key = 'count'"), "negative", True),
    "row past the count": (lambda p: sql(p, "UPDATE items SET row = 5000 WHERE id = 'v9'"), "outside", True),
    "truncated vectors": (lambda p: os.truncate(next(p.glob("vectors.*.int8")), 100 * DIM), "fewer than", True),
    "sqlite garbage": (lambda p: (p / "index.sqlite").write_bytes(os.urandom(8192)), "not a readable", True),
    "sqlite header": (lambda p: overwrite(p / "index.sqlite", 0, b"\0" * 100), "not a readable", True),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damage_is_one_clear_error_never_a_wrong_answer(tmp_path, capsys, case):
    path = tmp_path / "ix"
    x = make(path)
    how, message, on_open = DAMAGE[case]
    how(path)
    if on_open:
        with pytest.raises(IndexDamagedError, match=message):
            Index.open(str(path))
    else:
        ix = Index.open(str(path))  # the cheap checks pass; the first search that reads the damage stops
        with pytest.raises(IndexDamagedError, match=message):
            ix.search(x[7], 3)
        assert ix.search(x[900], 1, filter={"i": 900})[0].id == "v900"  # undamaged blocks still answer
        ix.close()
    for command in ("check", "stats"):
        if command == "stats" and not on_open:
            continue
        code, out, err = cli(capsys, "index", command, str(path))
        assert code == 2 and message in err and err.count("\n") == 1 and not out, (command, err)


IVF_DAMAGE = {  # an index with a trained inverted file: its rows' lists and its coarse stage are checked too
    "lists bytes": (lambda p: overwrite(next(p.glob("vectors.*.lists")), 7 * 4, b"\x01\x02\x03\x04"),
                    "do not match their checksum"),
    "lists truncated": (lambda p: os.truncate(next(p.glob("vectors.*.lists")), 100), "fewer than"),
    "coarse stage bytes": (lambda p: sql(p, "UPDATE coarse SET quantizer = CAST(zeroblob(length(quantizer)) AS BLOB)"),
                           "coarse stage does not match its checksum"),
    "coarse stage lost": (lambda p: sql(p, "DELETE FROM coarse"), "coarse stage is missing"),
    "calibrated probe": (lambda p: sql(p, "UPDATE probe SET nprobe = nprobe + 1"),
                         "calibrated probe does not match its checksum"),
    "spill bytes": (lambda p: overwrite(next(p.glob("vectors.*.spill")), 9 * 4, b"\x01\x02\x03\x04"),
                    "do not match their checksum"),
    "spill threshold": (lambda p: sql(p, "UPDATE spill SET threshold = threshold - 0.1"),
                        "spill threshold does not match its checksum"),
    "spill threshold lost": (lambda p: sql(p, "DELETE FROM spill"), "spill threshold is missing"),
}


@pytest.mark.parametrize("case", list(IVF_DAMAGE))
def test_damage_to_the_inverted_file_is_one_clear_error(tmp_path, capsys, case):
    path = tmp_path / "ix"
    x = make(path, 12_000, first_stage="ivf")
    with Index.open(str(path)) as ix:
        assert ix.stats()["first_stage_index"] == "IndexBinaryIVF" and ix.search(x[7], 1)[0].id == "v7"
    how, message = IVF_DAMAGE[case]
    how(path)
    with pytest.raises(IndexDamagedError, match=message):
        Index.open(str(path))
    code, out, err = cli(capsys, "index", "check", str(path))
    assert code == 2 and err.count("\n") == 1 and not out, err


@pytest.mark.parametrize("kind", ["lists", "spill"])
def test_a_list_number_out_of_range_is_refused_at_every_search(tmp_path, kind):
    """A lists (or spill lists) file rewritten with its block hash (past what checksums catch): the first stage
    refuses it on every search, never answering from a half-built inverted file."""
    import xxhash

    path = tmp_path / "ix"
    x = make(path, 12_000, first_stage="ivf")  # rows without clusters: the partition spills
    lists_file = next(path.glob(f"vectors.*.{kind}"))
    block = np.fromfile(lists_file, dtype=np.int32, count=128)
    block[7] = 1_000_000
    overwrite(lists_file, 0, block.tobytes())
    digest = xxhash.xxh3_64_intdigest(block.tobytes())
    sql(path, f"UPDATE blocks SET hash = {digest - (1 << 64) if digest >> 63 else digest} "
              f"WHERE precision = '{kind}' AND block = 0")
    ix = Index.open(str(path))
    for _ in range(2):
        with pytest.raises(IndexDamagedError, match="names a list outside"):
            ix.search(x[9000], 1)
    ix.close()


def test_intact_index_checks_clean(tmp_path, capsys):
    path = tmp_path / "ix"
    make(path, store_float=True)
    code, out, _ = cli(capsys, "index", "check", str(path))
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["items"] == 1000
    assert report["blocks_verified"] == {"binary": 8, "int8": 8, "float": 8}


ADD_AND_HOLD = """
import sys, time
import numpy as np
from pplx_embed.index import Index

ix = Index.open(sys.argv[1])
ix.add(ids=["acked"], vectors=np.full((1, %d), 0.2, np.float32))
print("ok", flush=True)
time.sleep(60)
""" % DIM


def test_lost_wal_after_an_acknowledged_add_is_reported(tmp_path):
    path = tmp_path / "ix"
    make(path, 10)
    child = subprocess.Popen([sys.executable, "-c", ADD_AND_HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ok"
    child.send_signal(signal.SIGKILL)
    child.wait()
    wal = path / "index.sqlite-wal"
    assert wal.exists() and wal.stat().st_size > 0  # the acknowledged add lives only in the WAL
    wal.unlink()
    with pytest.raises(IndexDamagedError, match="was index.sqlite-wal deleted"):
        Index.open(str(path))


def test_hostile_metadata_filters_and_ids_are_refused_and_nothing_is_written(tmp_path, capsys, tiny_pplx_dir):
    path = tmp_path / "ix"
    x = make(path, 10)
    ix = Index.open(str(path))
    deep: dict = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    bad_metadata = [deep, {"n": 10**30}, {"x": float("nan")}, {"bad key!": 1}, {"l": list(range(20_000))}, "text"]
    for meta in bad_metadata:
        with pytest.raises(InputError):
            ix.add(ids=["new"], vectors=x[:1], metadata=[meta])
    for where in ({f"k{i}": 1 for i in range(700)}, {"n": 10**30}, {"n": float("inf")}, {"n": [1]}, {"bad key!": 1}):
        with pytest.raises(InputError):
            ix.search(x[0], 1, filter=where)
    for ids in (["x" * 2000], [""], [3], "abc"):
        with pytest.raises(InputError):
            ix.add(ids=ids, vectors=x[:1] if not isinstance(ids, str) else x[:3])
    for k in (0, -1, 10**9, True, 2.5):
        with pytest.raises(InputError):
            ix.search(x[0], k)
    assert len(ix) == 10 and ix.search(x[3], 1)[0].id == "v3"
    ix.close()

    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"id": "n", "text": "t", "metadata": ' + '{"a": ' * 5000 + "1" + "}" * 5001 + "\n")
    too_deep = tmp_path / "deep.jsonl"  # valid JSON, deeper than metadata may go
    too_deep.write_text(json.dumps({"id": "n", "text": "t", "metadata": {"a": json.loads("[" * 40 + "]" * 40)}}))
    many = [f"k{i}=1" for i in range(700)]
    path = tmp_path / "cli"
    assert cli(capsys, "index", "create", str(path), "--model", str(tiny_pplx_dir))[0] == 0
    for argv, message in [
        (["index", "add", str(path), str(nested), "--quiet"], "nested too deeply"),
        (["index", "add", str(path), str(too_deep), "--quiet"], "nested deeper than 32"),
        (["index", "search", str(path), "q", "--filter", "n=1000000000000000000000000000000"], "64-bit"),
        (["index", "search", str(path), "q", *[a for kv in many for a in ("--filter", kv)]], "at most 32"),
        (["index", "search", str(path), "q", "--filter", "n=1e999"], "finite"),
    ]:
        code, _, err = cli(capsys, *argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    with pytest.raises(SystemExit) as exit_:  # argparse: usage and the error, status 2
        main(["index", "add", str(path), str(nested), "--batch-size", "0"])
    assert exit_.value.code == 2 and "--batch-size: expected a positive integer, got '0'" in capsys.readouterr().err
    assert json.loads(cli(capsys, "index", "stats", str(path))[1])["items"] == 0


FILL_DISK = """
import resource, signal, sys
import numpy as np
from pplx_embed.index import Index
from pplx_embed.errors import InputError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like a full disk
ix = Index.open(sys.argv[1])
size = max(f.stat().st_size for f in ix.path.iterdir() if f.is_file())
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 4096, size + 4096))
try:
    ix.add(ids=[f"big{i}" for i in range(5000)], vectors=np.ones((5000, %d), np.float32))
except InputError as exc:
    print("refused:", exc)
""" % DIM


def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path):
    path = tmp_path / "ix"
    x = make(path, 300)
    done = subprocess.run([sys.executable, "-c", FILL_DISK, str(path)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: cannot write") and "the batch was not added" in done.stdout, done.stdout
    with Index.open(str(path)) as ix:
        assert len(ix) == 300 and ix.search(x[5], 1)[0].id == "v5"
        ix.add(ids=["after"], vectors=x[:1] + 1)  # the torn tail is dropped by the next add
        assert ix.check()["items"] == 301

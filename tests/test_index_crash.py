"""A writer SIGKILLed mid-ingest or mid-compaction leaves an index with exactly its acknowledged batches,
nothing torn: with an exact first stage and with a trained inverted file (whose rows' lists are written
with each batch, and which a compaction trains again)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pplx_embed.index import Index
from pplx_embed.model.quantization import to_int8

BATCH, DIM = 3000, 256

WRITER = """
import sys
import numpy as np
from pplx_embed.index import Index

path, first = sys.argv[1], int(sys.argv[2])
ix = Index.open(path)
b = first
while True:
    x = np.random.default_rng(b).standard_normal((%d, %d)).astype(np.float32) * 0.3
    ix.add(ids=[f"b{b}-{i}" for i in range(len(x))], vectors=x, metadata=[{"batch": b}] * len(x))
    print(b, flush=True)  # acknowledged: add() returned
    b += 1
""" % (BATCH, DIM)


def batch_vectors(b: int) -> np.ndarray:
    return np.random.default_rng(b).standard_normal((BATCH, DIM)).astype(np.float32) * 0.3


def seeded(path: str, first_stage: str, batches: int) -> list[int]:
    """A new index holding ``batches`` acknowledged batches; ``ivf``: compacted, so its inverted file is trained."""
    ix = Index.create(path, "synthetic-model", DIM, store_float=True, first_stage=first_stage)
    for b in range(batches):
        x = batch_vectors(b)
        ix.add(ids=[f"b{b}-{i}" for i in range(BATCH)], vectors=x, metadata=[{"batch": b}] * BATCH)
    if first_stage == "ivf":
        ix.compact()
        assert ix.stats()["first_stage_index"] == "IndexBinaryIVF"
    ix.close()
    return list(range(batches))


def check_batches(ix, expected: list[int]) -> None:
    for b in expected:
        x = batch_vectors(b)
        for i in (0, BATCH - 1):
            assert np.array_equal(ix.get([f"b{b}-{i}"], "int8")[f"b{b}-{i}"], to_int8(x[i]))
        assert ix.search(x[BATCH // 2], 1)[0].id == f"b{b}-{BATCH // 2}"


@pytest.mark.parametrize("first_stage", ["flat", "ivf"])
def test_sigkill_mid_ingest_keeps_exactly_the_acknowledged_batches(tmp_path, first_stage):
    path = str(tmp_path / "ix")
    acked = seeded(path, first_stage, 4 if first_stage == "ivf" else 0)  # ivf: 12,000 rows, trained
    rng = random.Random(0)
    for _ in range(2):
        first = acked[-1] + 1 if acked else 0
        child = subprocess.Popen([sys.executable, "-c", WRITER, path, str(first)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        want = rng.randint(2, 4)
        got = []
        while len(got) < want:
            line = child.stdout.readline()
            assert line, child.stderr.read()
            got.append(int(line))
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside the next add
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        got += [int(x) for x in rest.split()]
        assert child.returncode == -signal.SIGKILL
        acked += got

        ix = Index.open(path)  # opens fine after the kill
        present = {int(h.metadata["batch"]) for h in ix.search_many(np.zeros((1, DIM), np.float32) + 0.1, 1)[0]}
        n = len(ix)
        in_flight = acked[-1] + 1
        stored_batches = n // BATCH
        assert n % BATCH == 0, "a batch was half-written"
        assert stored_batches in (len(acked), len(acked) + 1)  # the in-flight batch may have committed unacked
        stats = ix.stats()
        assert stats["vector_rows"] == n  # no stray rows past the committed count
        assert stats["first_stage_index"] == ("IndexBinaryIVF" if first_stage == "ivf" else "IndexBinaryFlat")
        expected = acked + ([in_flight] if stored_batches > len(acked) else [])
        check_batches(ix, expected)
        assert present <= set(expected)
        if stored_batches > len(acked):
            acked.append(in_flight)  # it committed; the next writer continues after it
        ix.close()
    # and the index keeps working: a new batch lands after the recovered ones
    ix = Index.open(path)
    ix.add(ids=["after"], vectors=batch_vectors(999)[:1])
    assert ix.search(batch_vectors(999)[0], 1)[0].id == "after"
    assert len(ix) == len(acked) * BATCH + 1
    assert ix.check()["items"] == len(acked) * BATCH + 1
    ix.close()


COMPACTOR = """
import sys
from pplx_embed.index import Index

ix = Index.open(sys.argv[1])
print("ready", flush=True)
ix.compact()
print("done", flush=True)
"""


def test_sigkill_mid_compaction_leaves_the_old_or_the_new_generation_whole(tmp_path):
    """A compaction that trains the inverted file (k-means, assignment, new files) killed at any moment: the
    index opens with every item, answers through whichever generation committed, and compacts again."""
    path = str(tmp_path / "ix")
    acked = seeded(path, "auto", 0)
    ix = Index.open(path)
    for b in range(20):  # 60,000 rows: auto trains an inverted file at compaction
        x = batch_vectors(b)
        ix.add(ids=[f"b{b}-{i}" for i in range(BATCH)], vectors=x, metadata=[{"batch": b}] * BATCH)
        acked.append(b)
    ix.delete([f"b0-{i}" for i in range(BATCH)])  # and there are tombstones to drop
    ix.close()
    generations = set()
    for delay in (0.0, 0.3, 0.8, 1.5, 3.0):
        child = subprocess.Popen([sys.executable, "-c", COMPACTOR, path], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.communicate()
        with Index.open(path) as ix:
            stats = ix.stats()
            generations.add((stats["generation"], stats["first_stage_index"]))
            assert stats["items"] == 19 * BATCH
            check_batches(ix, acked[1:])
            assert "b0-0" not in {h.id for h in ix.search(batch_vectors(0)[0], 5)}  # deleted stays deleted
            if stats["generation"]:
                break
    with Index.open(path) as ix:
        ix.compact()  # finishes (or has nothing left to do)
        stats = ix.stats()
        assert (stats["first_stage_index"], stats["tombstones"], stats["items"]) == ("IndexBinaryIVF", 0, 19 * BATCH)
        assert stats["probe_share"] is not None and not ix.needs_compaction  # calibrated in the same commit
        assert stats["spilled"] > 0  # rows without clusters: the partition spills (its spill lists in the commit)
        assert ix.check()["items"] == 19 * BATCH
        check_batches(ix, acked[1:])
        files = sorted(p.name for p in ix.path.glob("vectors.*"))  # the old generation's are gone
        assert files == [f"vectors.{stats['generation']}.{s}" for s in ("binary", "float32", "int8", "lists", "spill")]
    assert (0, "IndexBinaryFlat") in generations  # at least one kill landed before the commit

"""A writer SIGKILLed mid-ingest leaves an index with exactly its acknowledged batches, nothing torn."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

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


def test_sigkill_mid_ingest_keeps_exactly_the_acknowledged_batches(tmp_path):
    path = str(tmp_path / "ix")
    Index.create(path, "synthetic-model", DIM, store_float=True).close()
    rng = random.Random(0)
    acked: list[int] = []
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
        assert ix.stats()["vector_rows"] == n  # no stray rows past the committed count
        expected = acked + ([in_flight] if stored_batches > len(acked) else [])
        for b in expected:
            x = batch_vectors(b)
            for i in (0, BATCH - 1):
                assert np.array_equal(ix.get([f"b{b}-{i}"], "int8")[f"b{b}-{i}"], to_int8(x[i]))
            assert ix.search(x[BATCH // 2], 1)[0].id == f"b{b}-{BATCH // 2}"
        assert present <= set(expected)
        if stored_batches > len(acked):
            acked.append(in_flight)  # it committed; the next writer continues after it
        ix.close()
    # and the index keeps working: a new batch lands after the recovered ones
    ix = Index.open(path)
    ix.add(ids=["after"], vectors=batch_vectors(999)[:1])
    assert ix.search(batch_vectors(999)[0], 1)[0].id == "after"
    assert len(ix) == len(acked) * BATCH + 1
    ix.close()

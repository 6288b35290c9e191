"""Reading line-oriented input (text lines, JSON lines): errors name ``file:line`` and say what to fix."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pplx_embed.errors import InputError


def iter_lines(path: str | Path, error: type[Exception] = InputError) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 file, without its line ending (``-`` reads stdin).

    A missing file, or bytes that are not UTF-8 (a binary file, another encoding), raise ``error`` naming
    the file and line.
    """
    path = str(path)
    if path != "-" and not Path(path).is_file():
        raise error(f"file not found: {path}")
    f = getattr(sys.stdin, "buffer", sys.stdin) if path == "-" else open(path, "rb")
    try:
        for number, raw in enumerate(f, 1):
            try:
                text = raw if isinstance(raw, str) else raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                            "save the file as UTF-8") from None
            yield number, (text.removeprefix("\ufeff") if number == 1 else text).rstrip("\r\n")
    finally:
        if path != "-":
            f.close()


def iter_jsonl(path: str | Path, error: type[Exception] = InputError) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file (``-`` reads stdin).

    A missing file, text that is not UTF-8, invalid JSON or a line that is not an object raises ``error``
    with a message a person can act on.
    """
    for number, line in iter_lines(path, error):
        if not line.strip():
            continue
        row = parse_json_line(line, f"{path}:{number}", error)
        if not isinstance(row, dict):
            raise error(f"{path}:{number}: expected a JSON object per line")
        yield number, row


def parse_json_line(line: str, where: str, error: type[Exception] = InputError) -> Any:
    """The JSON value of one line; ``error`` naming ``where`` if it is not JSON (or nested too deeply, or holds
    a number too long to convert)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise error(f"{where}: not valid JSON ({str(exc).split(':')[0]})") from None
    return row

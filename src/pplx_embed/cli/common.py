"""What every command group shares: model-loading flags and reading input texts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pplx_embed.errors import InputError
from pplx_embed.jsonl import iter_lines, parse_json_line
from pplx_embed.options import EmbedderOptions


def add_model_args(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """The :class:`~pplx_embed.options.EmbedderOptions` flags: how every command loads a model."""
    EmbedderOptions.add_arguments(parser, model=model)


def load_embedder(args: argparse.Namespace):
    """An :class:`~pplx_embed.Embedder` from the ``add_model_args`` options (environment filling gaps)."""
    from pplx_embed.embedder import Embedder

    return Embedder(options=EmbedderOptions.from_args(args))


def existing_path(path: str | Path, what: str = "file") -> Path:
    """``path`` if it exists, else an :class:`InputError` naming it."""
    if not Path(path).exists():
        raise InputError(f"{what} not found: {path}")
    return Path(path)


def field_values(pairs: list[str], flag: str) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs → {field: value}; a value is JSON when it parses (``n=3`` is a number), else a string."""
    where: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"{flag} takes key=value, got {pair!r}")
        try:
            where[key] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON (or too deep, or too many digits): the text itself
            where[key] = value
    return where


def read_texts(path: str, field: str = "text") -> list[str]:
    """Texts from a ``.jsonl`` file (``field`` of each object, or a bare string per line) or a UTF-8 text file
    (one per line); ``-`` reads stdin."""
    if path != "-" and not Path(path).is_file():
        raise InputError(f"input file not found: {path}")
    name = "stdin" if path == "-" else path
    is_jsonl = name.endswith((".jsonl", ".json"))
    texts = []
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        if not is_jsonl:
            texts.append(line)
            continue
        row = parse_json_line(line, f"{name}:{number}")
        value = row if isinstance(row, str) else row.get(field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            raise InputError(f"{name}:{number}: expected a string or an object with a string {field!r} field")
        texts.append(value)
    if not texts:
        raise InputError(f"{name} holds no texts")
    return texts

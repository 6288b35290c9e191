"""The engine's on-disk cache: exported models and auto decisions under ``$PPLX_EMBED_CACHE``.

Every entry is keyed by what determines it (checkpoint files, versions, CPU flags, ...) and
appears in one rename (``pplx_embed.atomic``), so a crash leaves nothing half-written and two
processes building the same entry at once both end with a complete one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from pplx_embed.atomic import atomic_path
from pplx_embed.options import cache_dir

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".json")


def cache_root(kind: str) -> Path:
    """``$PPLX_EMBED_CACHE/<kind>``, default ``~/.cache/pplx-embed/<kind>`` (see ``options.cache_dir``)."""
    return cache_dir(kind)


def checkpoint_files(path: Path) -> list[tuple[str, int, int]]:
    """``(name, size, mtime_ns)`` of a checkpoint's weight and config files: a changed checkpoint changes them."""
    path = Path(path).resolve()
    files = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of ``packages`` (``None`` where not installed)."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def digest(facts: dict) -> str:
    """A short stable hash of JSON-able ``facts``."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


def entry_name(name: str, tag: str, key: str) -> str:
    """``<name>-<tag>-<key>`` with the model name made filesystem-safe."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return f"{slug[-60:].strip('-.')}-{tag}-{key}"


def cached_directory(entry: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``entry`` when ``entry/marker`` exists, else ``build(tmp)`` fills a temporary directory renamed to ``entry``.

    When another process renames its own build into place first, that one is kept and ours dropped.
    """
    if (entry / marker).is_file():
        return entry
    try:
        with atomic_path(entry, directory=True) as work:
            build(work)
    except OSError:  # FileExistsError or ENOTEMPTY: another process finished the same entry first
        if not (entry / marker).is_file():
            raise
    return entry

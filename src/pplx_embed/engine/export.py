"""The export skeleton shared by the ONNX Runtime and OpenVINO backends (as sentence-transformers shares its
backend helpers): one cached export per checkpoint and variant.

A variant is the backend's name (the float32 export) or ``<name>-int8`` (quantized from the cached float32
export, so both variants cost one export). An entry lives under ``$PPLX_EMBED_CACHE/<name>``, keyed by the
checkpoint's files, the variant, the export format and the versions of the libraries that make it; it
appears in one rename (``engine.cache.cached_directory``), so a crash leaves nothing half-written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pplx_embed.engine.cache import cache_root, cached_directory, checkpoint_files, digest, entry_name, versions


@dataclass(frozen=True)
class ExportKind:
    """What one backend exports: its name (cache folder, float variant), the file it writes, its format version
    (bump when the exported graph changes) and the libraries whose versions decide the export."""

    name: str
    marker: str
    format: int
    libraries: tuple[str, ...]

    @property
    def variants(self) -> tuple[str, str]:
        return self.name, f"{self.name}-int8"


def export_key(kind: ExportKind, checkpoint_path: Path, variant: str, facts: dict | None = None,
               libraries: tuple[str, ...] = ()) -> str:
    """Hash of what determines an export: checkpoint files (size, mtime), variant, format, versions, facts."""
    return digest({"path": str(Path(checkpoint_path).resolve()), "variant": variant, "format": kind.format,
                   "files": checkpoint_files(checkpoint_path), **versions(*kind.libraries, *libraries),
                   **(facts or {})})


def prepare_export(kind: ExportKind, checkpoint_path: Path, variant: str, name: str | None,
                   export: Callable[[Path], None], quantize: Callable[[Path, Path], None],
                   facts: dict | None = None, libraries: tuple[str, ...] = ()) -> Path:
    """The cached export file of ``checkpoint_path`` in ``variant``, made first if needed.

    ``export(target)`` writes the float32 export; ``quantize(source, target)`` the int8 one from it. ``facts``
    (also part of the key) and the variant are recorded in the entry's ``export.json``; ``libraries`` adds
    versions that decide only this variant (e.g. the quantizer's).
    """
    if variant not in kind.variants:
        raise ValueError(f"unknown {kind.name} variant {variant!r}; choose one of {', '.join(kind.variants)}")
    facts = facts or {}
    key = export_key(kind, checkpoint_path, variant, facts, libraries)
    entry = cache_root(kind.name) / entry_name(name or Path(checkpoint_path).name, variant, key)

    def build(work: Path) -> None:
        target = work / kind.marker
        if variant == kind.name:
            export(target)
        else:
            quantize(prepare_export(kind, checkpoint_path, kind.name, name, export, quantize, facts), target)
        (work / "export.json").write_text(json.dumps({"checkpoint": str(checkpoint_path), "variant": variant,
                                                      **facts}, indent=2))

    return cached_directory(entry, kind.marker, build) / kind.marker

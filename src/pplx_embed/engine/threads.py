"""Thread settings that fit the machine: intra-op threads = physical cores this process may use."""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads count once).

    ``PPLX_EMBED_THREADS`` overrides it. Reads ``/proc/cpuinfo`` on Linux; elsewhere falls back to
    the number of usable logical CPUs.
    """
    override = os.environ.get("PPLX_EMBED_THREADS")
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"PPLX_EMBED_THREADS must be a positive integer, got {override!r}")
        return int(override)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(len(allowed), 1)
    cores, cpu, package = set(), None, "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            cpu, package = int(value), "0"
        elif key == "physical id":
            package = value
        elif key == "core id" and cpu in allowed:
            cores.add((package, value))
    return max(len(cores) or len(allowed), 1)


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for benchmark records."""
    import platform

    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


# Instruction sets that decide which engine configuration is fastest (bf16 / int8 matrix units).
NOTABLE_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                 "amx_tile", "avx512_fp16")


def cpu_flags() -> frozenset[str]:
    """All CPU feature flags of this machine (``/proc/cpuinfo``; empty where unknown)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_description() -> str:
    """``model, N physical cores, flags: ...`` (the notable ones): what every benchmark figure records."""
    flags = cpu_flags()
    notable = [f for f in NOTABLE_FLAGS if f in flags]
    return f"{cpu_model()}, {physical_cores()} physical cores, flags: {' '.join(notable) or 'none notable'}"

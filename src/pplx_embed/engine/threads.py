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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for benchmark records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()

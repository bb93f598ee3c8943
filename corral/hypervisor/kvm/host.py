"""Facts about the node the KVM driver needs: memory and CPU time.

What the QEMU binary can do (version, options, machine types, devices) is probed and cached
by :mod:`corral.hypervisor.kvm.probe`.
"""

from __future__ import annotations

import os

from corral.common.errors import HypervisorError


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """``/proc/meminfo`` as key -> KiB.

    Raises:
        HypervisorError: it cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise HypervisorError(f"cannot read {path}: {exc.strerror}") from exc
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


def cpu_time(pid: int, proc: str = "/proc") -> float:
    """Seconds of CPU (user + system) a process used; 0.0 when unreadable."""
    try:
        with open(os.path.join(proc, str(pid), "stat"), encoding="utf-8") as fh:
            fields = fh.read().rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    except (OSError, IndexError, ValueError):
        return 0.0
    return ticks / os.sysconf("SC_CLK_TCK")

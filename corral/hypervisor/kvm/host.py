"""Facts about the node the KVM driver needs: QEMU's version and machine types, memory, CPU time.

QEMU is asked once per binary (and again only when the binary changes: the cache key holds its
mtime), with ``LC_ALL=C`` since the output is parsed. Parsers are separate functions so tests
can feed them captured output (tests/data/hypervisor/).
"""

from __future__ import annotations

import os
import re
import threading

from corral.common.errors import CommandError, ErrorKind, HypervisorError
from corral.common.runcmd import Runner

QUERY_TIMEOUT = 30.0


def parse_version(text: str) -> str:
    """``7.2.22`` from ``qemu-system-x86_64 --version`` output ("" when not found)."""
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else ""


def parse_machines(text: str) -> set[str]:
    """Machine names and aliases from ``qemu-system-x86_64 -machine help``."""
    names: set[str] = set()
    for line in text.splitlines():
        if not line.strip() or line.startswith("Supported machines"):
            continue
        names.add(line.split()[0])
        m = re.search(r"\(alias of (\S+?)\)", line)
        if m:
            names.add(m.group(1))
    return names


class QemuFacts:
    """Cached answers of a QEMU binary to ``--version`` and ``-machine help``."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._cache: dict[tuple[str, str, float], str] = {}
        self._lock = threading.Lock()

    def _ask(self, binary: str, option: list[str]) -> str:
        try:
            mtime = os.stat(binary).st_mtime
        except OSError as exc:
            raise HypervisorError(
                f"QEMU binary {binary!r} not found: {exc.strerror}", kind=ErrorKind.ENVIRONMENT
            ) from exc
        key = (" ".join(option), binary, mtime)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            out = self.runner([binary, *option], timeout=QUERY_TIMEOUT, c_locale=True).stdout
        except CommandError as exc:
            raise HypervisorError(
                f"cannot query QEMU ({binary} {' '.join(option)}): {exc}",
                kind=ErrorKind.ENVIRONMENT,
            ) from exc
        with self._lock:
            self._cache[key] = out
        return out

    def version(self, binary: str) -> str:
        """The version of a QEMU binary (``7.2.22``).

        Raises:
            HypervisorError: the binary is missing or cannot be run.
        """
        return parse_version(self._ask(binary, ["--version"]))

    def machines(self, binary: str) -> set[str]:
        """Machine types (and aliases) a QEMU binary supports.

        Raises:
            HypervisorError: the binary is missing or cannot be run.
        """
        return parse_machines(self._ask(binary, ["-machine", "help"]))


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

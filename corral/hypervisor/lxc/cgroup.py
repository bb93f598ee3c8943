"""Container cgroups: where the controllers are (v1, v2 or hybrid), limits and statistics.

The node's layout is read from the mount table: each cgroup v1 hierarchy is a ``cgroup``
mount whose super options name its controllers; the v2 (unified) hierarchy is the
``cgroup2`` mount, whose ``cgroup.controllers`` lists the controllers it offers. A hybrid host
(this project's CI: v1 controllers plus an empty ``unified`` mount) has both; a controller is
used where it is actually enabled.

A running container's cgroups are those of its init process (``/proc/<pid>/cgroup``), so the
driver never guesses LXC's naming (``lxc.payload.<name>``, suffixes on name clashes). The
paths found at start are kept in the instance's runtime file for the cleanup after the
process is gone.

Pure parsers (:func:`layout_from_mountinfo`, :func:`parse_proc_cgroup`, :func:`parse_cpu_list`,
:func:`format_cpu_list`) are unit tested with captured text; :class:`ContainerCgroup` reads and
writes the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import time
from collections.abc import Iterable, Mapping

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.lxc.mounts import MountEntry, read_mountinfo

MIB = 1024 * 1024
#: cgroup v1 "no limit" shows as a huge number (PAGE_COUNTER_MAX pages); treat as unlimited.
V1_UNLIMITED = 1 << 62
#: Key used for the v2 hierarchy in :func:`parse_proc_cgroup` results.
V2 = ""
# NOTE: super options of a v1 cgroup mount also carry flags that are not controllers.
_V1_FLAGS = frozenset({"rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode"})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CgroupLayout:
    """Where the cgroup controllers of this node are mounted."""

    #: v1 controller -> mount point of its hierarchy
    v1: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: mount point of the v2 hierarchy, "" if none
    v2_mount: str = ""
    #: controllers enabled in the v2 hierarchy
    v2_controllers: frozenset[str] = frozenset()

    def version_of(self, controller: str) -> int | None:
        """1 or 2: which hierarchy serves ``controller`` (v1 wins on hybrid hosts); None."""
        if controller in self.v1:
            return 1
        if self.v2_mount and controller in self.v2_controllers:
            return 2
        return None

    @property
    def pure_v2(self) -> bool:
        """True on a unified-only host (no v1 controller hierarchies)."""
        return not self.v1 and bool(self.v2_mount)

    def controllers(self) -> set[str]:
        """Every controller available in either hierarchy."""
        return set(self.v1) | (set(self.v2_controllers) if self.v2_mount else set())


def layout_from_mountinfo(entries: Iterable[MountEntry], v2_controllers: str) -> CgroupLayout:
    """Build the layout from mount entries and the v2 root's ``cgroup.controllers`` text.

    Named v1 hierarchies (``name=systemd``) carry no controller and are ignored.
    """
    v1: dict[str, str] = {}
    v2_mount = ""
    for entry in entries:
        if entry.fstype == "cgroup":
            for opt in entry.super_options.split(","):
                if opt and "=" not in opt and opt not in _V1_FLAGS:
                    v1.setdefault(opt, entry.mount_point)
        elif entry.fstype == "cgroup2" and not v2_mount:
            v2_mount = entry.mount_point
    return CgroupLayout(
        v1=v1,
        v2_mount=v2_mount,
        v2_controllers=frozenset(v2_controllers.split()) if v2_mount else frozenset(),
    )


def detect_layout(mountinfo: str = "/proc/self/mountinfo") -> CgroupLayout:
    """The layout of this node.

    Raises:
        HypervisorError: the mount table cannot be read.
    """
    entries = read_mountinfo(mountinfo)
    v2_text = ""
    for e in entries:
        if e.fstype == "cgroup2":
            controllers = os.path.join(e.mount_point, "cgroup.controllers")
            with contextlib.suppress(OSError), open(controllers, encoding="utf-8") as fh:
                v2_text = fh.read()
            break
    return layout_from_mountinfo(entries, v2_text)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as controller -> path; the v2 path under the key ``""``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[V2] = path
            continue
        for ctl in controllers.split(","):
            if ctl and not ctl.startswith("name="):
                out[ctl] = path
    return out


def parse_cpu_list(text: str) -> frozenset[int]:
    """A kernel CPU list (``0-2,4``) as a set; empty text is the empty set.

    Raises:
        ValueError: malformed text.
    """
    cpus: set[int] = set()
    for item in text.strip().split(","):
        item = item.strip()
        if not item:
            continue
        low, _, high = item.partition("-")
        start, end = int(low), int(high) if high else int(low)
        if start > end:
            raise ValueError(f"bad CPU range {item!r}")
        cpus.update(range(start, end + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """A CPU set in the kernel's list syntax, with ranges (``{0,1,2,4}`` -> ``0-2,4``)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cpu_stat_usec(text: str) -> int:
    """``usage_usec`` of a v2 ``cpu.stat`` file (0 when absent)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec" and value.strip().isdigit():
            return int(value)
    return 0


# --- one container's cgroups ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerCgroup:
    """The cgroups of one container: controller -> path inside its hierarchy."""

    layout: CgroupLayout
    paths: Mapping[str, str]

    @classmethod
    def of_pid(cls, layout: CgroupLayout, pid: int, *, proc: str = "/proc") -> ContainerCgroup:
        """The cgroups of process ``pid`` (the container's init).

        Raises:
            HypervisorError: kind WRONG_STATE when the process is gone.
        """
        try:
            with open(os.path.join(proc, str(pid), "cgroup"), encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise HypervisorError(
                f"cannot read the cgroups of process {pid}: {exc.strerror}",
                kind=ErrorKind.WRONG_STATE,
            ) from exc
        return cls(layout, parse_proc_cgroup(text))

    def dir_of(self, controller: str) -> str:
        """The cgroup directory that holds ``controller``'s files.

        Raises:
            HypervisorError: kind ENVIRONMENT when the controller is not available.
        """
        version = self.layout.version_of(controller)
        if version == 1:
            rel = self.paths.get(controller)
            base = self.layout.v1[controller]
        elif version == 2:
            rel = self.paths.get(V2)
            base = self.layout.v2_mount
        else:
            rel = None
            base = ""
        if rel is None:
            raise HypervisorError(
                f"the {controller} cgroup controller is not available on this node",
                kind=ErrorKind.ENVIRONMENT,
                controller=controller,
            )
        return os.path.join(base, rel.lstrip("/"))

    def read(self, controller: str, name: str) -> str:
        """The content of a cgroup file.

        Raises:
            HypervisorError: the controller is missing or the file cannot be read.
        """
        path = os.path.join(self.dir_of(controller), name)
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise HypervisorError(f"cannot read {path}: {exc.strerror}", path=path) from exc

    def write(self, controller: str, name: str, value: str) -> None:
        """Write a cgroup file.

        Raises:
            HypervisorError: kind INVALID when the kernel refuses the value (EINVAL, EBUSY:
                e.g. a memory limit below what the container cannot give back), else
                ENVIRONMENT.
        """
        path = os.path.join(self.dir_of(controller), name)
        try:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(value)
        except OSError as exc:
            kind = (
                ErrorKind.INVALID
                if exc.errno in (errno.EINVAL, errno.EBUSY, errno.ERANGE)
                else ErrorKind.ENVIRONMENT
            )
            raise HypervisorError(
                f"cannot write {value!r} to {path}: {exc.strerror}", kind=kind, path=path
            ) from exc

    # --- memory ---------------------------------------------------------------------------

    def _memory_limit_file(self) -> str:
        return "memory.limit_in_bytes" if self.layout.version_of("memory") == 1 else "memory.max"

    def memory_limit(self) -> int | None:
        """The memory limit in bytes, None when unlimited.

        Raises:
            HypervisorError: the file cannot be read.
        """
        text = self.read("memory", self._memory_limit_file())
        if text == "max":
            return None
        value = int(text)
        return None if value >= V1_UNLIMITED else value

    def set_memory_limit(self, mib: int) -> None:
        """Set the memory limit to ``mib`` MiB (the kernel reclaims down to it or refuses).

        Raises:
            HypervisorError: kind INVALID when the kernel refuses (see :meth:`write`).
        """
        self.write("memory", self._memory_limit_file(), str(mib * MIB))

    def memory_usage(self) -> int:
        """Bytes of memory the container uses now (0 when unreadable)."""
        name = (
            "memory.usage_in_bytes" if self.layout.version_of("memory") == 1 else "memory.current"
        )
        try:
            return int(self.read("memory", name))
        except (HypervisorError, ValueError):
            return 0

    # --- CPUs -----------------------------------------------------------------------------

    def cpuset(self) -> frozenset[int]:
        """The CPUs the container may run on (``cpuset.cpus``; v2 ``cpuset.cpus.effective``).

        Raises:
            HypervisorError: the file cannot be read or parsed.
        """
        name = "cpuset.cpus" if self.layout.version_of("cpuset") == 1 else "cpuset.cpus.effective"
        text = self.read("cpuset", name)
        try:
            return parse_cpu_list(text)
        except ValueError as exc:
            raise HypervisorError(f"unreadable cpuset {text!r}: {exc}") from exc

    def set_cpuset(self, cpus: Iterable[int]) -> None:
        """Restrict the container to ``cpus``.

        Raises:
            HypervisorError: kind INVALID when the kernel refuses (CPUs outside the parent's).
        """
        self.write("cpuset", "cpuset.cpus", format_cpu_list(cpus))

    def cpu_time(self) -> float:
        """Seconds of CPU the container used (0.0 when unreadable)."""
        try:
            if self.layout.version_of("cpuacct") == 1:
                return int(self.read("cpuacct", "cpuacct.usage")) / 1e9
            return parse_cpu_stat_usec(self.read("cpu", "cpu.stat")) / 1e6
        except (HypervisorError, ValueError):
            return 0.0

    # --- processes ------------------------------------------------------------------------

    def pids(self) -> set[int]:
        """Every process in the container's cgroups (empty when they are gone)."""
        found: set[int] = set()
        for controller in ("pids", "memory", "cpuset", "freezer", "cpu"):
            try:
                text = self.read(controller, "cgroup.procs")
            except HypervisorError:
                continue
            found.update(int(p) for p in text.split() if p.isdigit())
        if V2 in self.paths and self.layout.v2_mount:
            path = os.path.join(self.layout.v2_mount, self.paths[V2].lstrip("/"))
            with contextlib.suppress(OSError, ValueError):
                for root, _dirs, files in os.walk(path):
                    if "cgroup.procs" in files:
                        with open(os.path.join(root, "cgroup.procs"), encoding="utf-8") as fh:
                            found.update(int(p) for p in fh.read().split())
        return found

    def kill_all(self, *, timeout: float = 5.0) -> set[int]:
        """SIGKILL every process of the container and wait until they are gone.

        Returns:
            The pids still alive after ``timeout`` (empty on success).
        """
        deadline = time.monotonic() + timeout
        left = self.pids()
        while left and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
            left = self.pids()
        return left

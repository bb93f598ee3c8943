"""Where a KVM instance's files live, and the versioned runtime file saved at start.

Layout (documented in docs/hypervisors/kvm.md)::

    <run_dir>/<instance>/qmp.sock       QMP monitor (UNIX socket, QEMU is the server)
    <run_dir>/<instance>/serial.sock    serial console (UNIX socket, QEMU is the server)
    <run_dir>/<instance>/qemu.pid       written by QEMU itself (-pidfile)
    <run_dir>/<instance>/runtime.json   this module's KvmRuntime, mode 0600
    <run_dir>/<instance>/qmp-events.in  FIFO QEMU's event monitor reads (kvm/events.py)
    <run_dir>/<instance>/qmp-events.out QMP events QEMU wrote (why it exited)
    <run_dir>/<instance>/stopping       present while Corral stops the guest
    <run_dir>/<instance>/migration.json an outgoing or incoming migration in progress
    <run_dir>/.<instance>.lock          per-instance lock (flock), removed when released
    <log_dir>/<instance>.serial.log     everything the guest printed on its serial console
    <log_dir>/<instance>.serial.log.1   the log of the previous start
    <log_dir>/<instance>.qemu.log       QEMU's own stderr while it starts (-daemonize)

The run directory is volatile (``/run`` on a host) and is removed when the instance stops;
the logs live under the node's log directory and are kept after a stop, so a guest that failed
to boot can still be diagnosed.

The runtime file records exactly how the guest was started (argv, accelerator, QEMU version,
disks, NICs with their host taps) so that stop/reboot/hotplug/migration (issue 3) reuse it
instead of recomputing it from parameters that may have changed since. It is a versioned
dataclass: :func:`upgrade` brings any older layout to :data:`RUNTIME_VERSION` when read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.common.fileio import write_atomic
from corral.hypervisor.base import InstanceSpec

#: The layout written by this code. Bump it (and add a step to ``_UPGRADES``) whenever a
#: field is renamed or changes meaning; a new field with a default needs no bump.
RUNTIME_VERSION = 1

#: Linux limits UNIX socket paths to 107 bytes plus the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InstanceLayout:
    """Paths of one instance's runtime files (pure: nothing is created)."""

    run_dir: str
    log_dir: str
    name: str

    @property
    def dir(self) -> str:
        """The per-instance runtime directory."""
        return os.path.join(self.run_dir, self.name)

    @property
    def qmp_socket(self) -> str:
        """QMP monitor socket."""
        return os.path.join(self.dir, "qmp.sock")

    @property
    def serial_socket(self) -> str:
        """Serial console socket."""
        return os.path.join(self.dir, "serial.sock")

    @property
    def pidfile(self) -> str:
        """QEMU's pid file."""
        return os.path.join(self.dir, "qemu.pid")

    @property
    def runtime_file(self) -> str:
        """The saved :class:`KvmRuntime`."""
        return os.path.join(self.dir, "runtime.json")

    @property
    def events_pipe(self) -> str:
        """Prefix of QEMU's event monitor pipe: ``.in`` (a FIFO) and ``.out`` (the log)."""
        return os.path.join(self.dir, "qmp-events")

    @property
    def events_log(self) -> str:
        """QMP events QEMU wrote (greeting, then one JSON object per line)."""
        return self.events_pipe + ".out"

    @property
    def stop_marker(self) -> str:
        """Present while Corral itself stops the guest (so its exit is not the guest's)."""
        return os.path.join(self.dir, "stopping")

    @property
    def migration_file(self) -> str:
        """The state of an outgoing (or incoming) migration, JSON."""
        return os.path.join(self.dir, "migration.json")

    @property
    def lock_file(self) -> str:
        """The per-instance lock file (outside the instance dir, which gets removed)."""
        return os.path.join(self.run_dir, f".{self.name}.lock")

    @property
    def serial_log(self) -> str:
        """The serial console log of the current (or last) start."""
        return os.path.join(self.log_dir, f"{self.name}.serial.log")

    @property
    def qemu_log(self) -> str:
        """QEMU's stderr while it starts."""
        return os.path.join(self.log_dir, f"{self.name}.qemu.log")

    def socket_problem(self) -> str | None:
        """Why the sockets cannot be created at these paths, or None."""
        for path in (self.qmp_socket, self.serial_socket):
            if len(os.fsencode(path)) > MAX_SOCKET_PATH:
                return (
                    f"socket path {path!r} is longer than {MAX_SOCKET_PATH} bytes "
                    "(use a shorter root directory or instance name)"
                )
        return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DiskRuntime:
    """One disk as it was given to QEMU, with the ids needed to unplug it later."""

    index: int
    uuid: str
    path: str
    format: str  # raw | qcow2
    mode: str  # rw | ro
    node_name: str  # the format blockdev node (the device's drive=)
    file_node_name: str  # the protocol blockdev node under it
    device_id: str
    # PCI placement (kvm/hotplug.py): the bus given to QEMU (pc: "pci.0", q35: the
    # pcie-root-port id) and the slot on pc; empty/None while QEMU placed it by itself.
    bus: str = ""
    slot: int | None = None
    hotplugged: bool = False  # added to the running guest (its args are in ``argv`` too)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NicRuntime:
    """One NIC as it was given to QEMU, with its host-side tap (empty: no backend)."""

    index: int
    uuid: str
    mac: str
    mode: str  # bridged | routed
    link: str  # bridge (bridged) or routing table (routed); may be empty
    tap: str  # host tap device name; "" when the NIC has no network backend
    netdev_id: str  # "" when the NIC has no network backend
    device_id: str
    bus: str = ""  # as DiskRuntime.bus
    slot: int | None = None
    hotplugged: bool = False
    link_up: bool = True  # the carrier the guest sees (QMP set_link), re-applied at restarts


@dataclasses.dataclass(kw_only=True)
class KvmRuntime:
    """How one instance was started; saved as JSON in ``runtime.json``."""

    version: int = RUNTIME_VERSION
    name: str
    uuid: str
    argv: list[str]  # without -S (see ``paused_at_start``)
    accel: str  # kvm | tcg, what was actually used
    accel_reason: str = ""
    qemu_version: str = ""
    machine: str = ""
    pid: int | None = None
    spec: InstanceSpec
    disks: list[DiskRuntime] = dataclasses.field(default_factory=list)
    nics: list[NicRuntime] = dataclasses.field(default_factory=list)
    paused_at_start: bool = False
    start_time: float = 0.0
    hvparams: dict[str, Any] = dataclasses.field(default_factory=dict)  # filled, as used
    #: q35: the spare pcie-root-ports no device uses (None: not computed yet, see
    #: kvm/pci.py ``free_root_ports``); kept up to date by hotplug.
    free_ports: list[str] | None = None
    #: security_model / use_chroot state (kvm/security.py): "uid", "gid", "user", "chroot",
    #: "owned" ([path, uid, gid] to restore at stop); empty when QEMU runs as root.
    security: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form."""
        return {
            "version": self.version,
            "name": self.name,
            "uuid": self.uuid,
            "argv": list(self.argv),
            "accel": self.accel,
            "accel_reason": self.accel_reason,
            "qemu_version": self.qemu_version,
            "machine": self.machine,
            "pid": self.pid,
            "spec": self.spec.model_dump(mode="json"),
            "disks": [dataclasses.asdict(d) for d in self.disks],
            "nics": [dataclasses.asdict(n) for n in self.nics],
            "paused_at_start": self.paused_at_start,
            "start_time": self.start_time,
            "hvparams": dict(self.hvparams),
            "free_ports": None if self.free_ports is None else list(self.free_ports),
            "security": dict(self.security),
        }

    def to_json(self) -> str:
        """The text written to ``runtime.json``."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KvmRuntime:
        """Read a runtime of any known version (older ones are upgraded first).

        Raises:
            HypervisorError: kind FAULT when the data is not a runtime, or is newer than this
                code understands.
        """
        data = upgrade(data)
        try:
            return cls(
                version=data["version"],
                name=data["name"],
                uuid=data["uuid"],
                argv=[str(a) for a in data["argv"]],
                accel=data["accel"],
                accel_reason=data.get("accel_reason", ""),
                qemu_version=data.get("qemu_version", ""),
                machine=data.get("machine", ""),
                pid=data.get("pid"),
                spec=InstanceSpec.model_validate(data["spec"]),
                disks=[DiskRuntime(**d) for d in data.get("disks", [])],
                nics=[NicRuntime(**n) for n in data.get("nics", [])],
                paused_at_start=bool(data.get("paused_at_start", False)),
                start_time=float(data.get("start_time", 0.0)),
                hvparams=dict(data.get("hvparams", {})),
                free_ports=(
                    None if data.get("free_ports") is None else [str(p) for p in data["free_ports"]]
                ),
                security=dict(data.get("security") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HypervisorError(
                f"runtime data is not valid: {exc}", kind=ErrorKind.FAULT
            ) from exc

    @classmethod
    def from_json(cls, text: str) -> KvmRuntime:
        """Parse ``runtime.json`` text; see :meth:`from_dict`.

        Raises:
            HypervisorError: kind FAULT for text that is not JSON or not a runtime.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HypervisorError(f"runtime file is not JSON: {exc}", kind=ErrorKind.FAULT) from exc
        if not isinstance(data, dict):
            raise HypervisorError("runtime file does not hold an object", kind=ErrorKind.FAULT)
        return cls.from_dict(data)


#: version N -> function turning a version-N dict into a version-(N+1) dict. Empty while
#: version 1 is the only layout ever written; a future change adds e.g. ``1: _v1_to_v2``.
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Bring runtime data of any older version to :data:`RUNTIME_VERSION` (a new dict).

    Raises:
        HypervisorError: kind FAULT when the version is missing, unknown, or newer than this
            code (a downgraded node must not misread a newer runtime: it stops such guests by
            pid only).
    """
    out = dict(data)
    version = out.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise HypervisorError(f"runtime has no valid version: {version!r}", kind=ErrorKind.FAULT)
    if version > RUNTIME_VERSION:
        raise HypervisorError(
            f"runtime version {version} is newer than this Corral understands ({RUNTIME_VERSION})",
            kind=ErrorKind.FAULT,
        )
    while version < RUNTIME_VERSION:
        step = _UPGRADES.get(version)
        if step is None:
            raise HypervisorError(
                f"no upgrade from runtime version {version}", kind=ErrorKind.FAULT
            )
        out = step(out)
        version += 1
        out["version"] = version
    return out


def save_runtime(layout: InstanceLayout, runtime: KvmRuntime) -> None:
    """Write ``runtime.json`` atomically with mode 0600.

    Raises:
        HypervisorError: the file cannot be written.
    """
    try:
        write_atomic(layout.runtime_file, runtime.to_json(), mode=0o600)
    except OSError as exc:
        raise HypervisorError(
            f"cannot write runtime file {layout.runtime_file}: {exc.strerror}",
            path=layout.runtime_file,
        ) from exc


def load_runtime(layout: InstanceLayout) -> KvmRuntime | None:
    """Read ``runtime.json``; None if there is none.

    Raises:
        HypervisorError: the file exists but cannot be read or parsed.
    """
    try:
        with open(layout.runtime_file, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HypervisorError(
            f"cannot read runtime file {layout.runtime_file}: {exc.strerror}",
            path=layout.runtime_file,
        ) from exc
    return KvmRuntime.from_json(text)


class InstanceLock:
    """An exclusive ``flock`` on an instance's lock file, as a context manager.

    Serialises start/stop/reboot/cleanup of one instance across threads and processes (two
    node daemons never share a run dir, but a CLI tool and the daemon might). ``with`` yields
    True when the lock is held; with ``wait=False`` it yields False at once when it is busy.
    The file is removed on release; a waiter that locked a file removed meanwhile retries on a
    fresh one, so no lock file is left behind.

    Raises:
        HypervisorError: kind TEMP_NO_RESOURCES after ``timeout`` seconds of waiting, or the
            lock file cannot be created.
    """

    def __init__(self, layout: InstanceLayout, *, wait: bool = True, timeout: float = 600.0):
        self.layout = layout
        self.wait = wait
        self.timeout = timeout
        self._fd: int | None = None

    def _try_once(self) -> int | None:
        """Lock the file at the lock path; the fd, or None when busy."""
        path = self.layout.lock_file
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise HypervisorError(f"cannot create lock file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise HypervisorError(f"cannot lock {path}: {exc.strerror}") from exc
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released and removed by its holder meanwhile: try the new file
            os.close(fd)
            return self._try_once()
        return fd

    def __enter__(self) -> bool:
        os.makedirs(self.layout.run_dir, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            self._fd = self._try_once()
            if self._fd is not None:
                return True
            if not self.wait:
                return False
            if time.monotonic() > deadline:
                raise HypervisorError(
                    f"instance {self.layout.name} is busy with another operation",
                    kind=ErrorKind.TEMP_NO_RESOURCES,
                )
            time.sleep(0.05)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.layout.lock_file)
        os.close(self._fd)
        self._fd = None

"""The LXC tools (``lxc-start``, ``lxc-info``, ``lxc-stop``, ...) and the instance runtime file.

Containers live in the driver's own LXC path (``-P <run_dir>``): each instance has
``<run_dir>/<name>/config`` (the generated lxc.conf), ``rootfs/`` (the mounted disk 0) and
``runtime.json`` (:class:`LxcRuntime`). Nothing global is used: no ``lxc-net``, no default
``lxcbr0``, no container in ``/var/lib/lxc``.

LXC's own messages go to a per-instance log file (``lxc.log.file``); a failed start quotes
its last lines (:func:`log_tail`), since ``lxc-start -d`` itself only says "The container
failed to start".
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from typing import Any

from corral.common import fileio
from corral.common.errors import CommandError, ErrorKind, HypervisorError
from corral.common.runcmd import Runner
from corral.hypervisor.base import AttachedDisk, InstanceSpec

log = logging.getLogger(__name__)

#: Seconds for the short LXC commands (info, freeze, kill).
TOOL_TIMEOUT = 30.0
#: A clean stop request is repeated this often: a guest may miss the first one while its
#: init is still starting (PID 1 ignores signals it has no handler for yet).
STOP_RETRY = 1.0
RUNTIME_VERSION = 1
_ERROR_LINE = re.compile(r"\b(ERROR|WARN)\b")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InstanceFiles:
    """Where one instance's files are."""

    lxcpath: str
    log_dir: str
    name: str

    @property
    def dir(self) -> str:
        """``<lxcpath>/<name>``: LXC's container directory."""
        return os.path.join(self.lxcpath, self.name)

    @property
    def config(self) -> str:
        """The generated lxc.conf."""
        return os.path.join(self.dir, "config")

    @property
    def rootfs(self) -> str:
        """Mount point of disk 0."""
        return os.path.join(self.dir, "rootfs")

    @property
    def runtime(self) -> str:
        """The :class:`LxcRuntime` JSON file."""
        return os.path.join(self.dir, "runtime.json")

    @property
    def console_log(self) -> str:
        """Everything the container printed on its console (this start)."""
        return os.path.join(self.log_dir, f"{self.name}.console.log")

    @property
    def lxc_log(self) -> str:
        """LXC's own log of this container."""
        return os.path.join(self.log_dir, f"{self.name}.lxc.log")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LxcRuntime:
    """What a running instance was started with (versioned; see :func:`load_runtime`)."""

    version: int = RUNTIME_VERSION
    spec: InstanceSpec
    disks: tuple[AttachedDisk, ...]
    #: loop devices the driver attached for disk 0 (detached at stop)
    loop_devices: tuple[str, ...] = ()
    #: controller -> cgroup path of the container's init ("" = v2), for the cleanup
    cgroups: dict[str, str] = dataclasses.field(default_factory=dict)
    pid: int | None = None
    started: float = 0.0

    def to_json(self) -> str:
        """JSON text of this runtime."""
        return json.dumps(
            {
                "version": self.version,
                "spec": self.spec.model_dump(),
                "disks": [d.model_dump() for d in self.disks],
                "loop_devices": list(self.loop_devices),
                "cgroups": self.cgroups,
                "pid": self.pid,
                "started": self.started,
            },
            indent=1,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LxcRuntime:
        """Read a runtime written by any version (older versions are upgraded).

        Raises:
            ValueError: unreadable data or a version newer than this code.
        """
        version = int(data.get("version", 1))
        if version > RUNTIME_VERSION:
            raise ValueError(f"runtime version {version} is newer than this Corral")
        return cls(
            version=RUNTIME_VERSION,
            spec=InstanceSpec.model_validate(data["spec"]),
            disks=tuple(AttachedDisk.model_validate(d) for d in data.get("disks", [])),
            loop_devices=tuple(str(d) for d in data.get("loop_devices", [])),
            cgroups={str(k): str(v) for k, v in dict(data.get("cgroups", {})).items()},
            pid=data.get("pid"),
            started=float(data.get("started", 0.0)),
        )


def save_runtime(files: InstanceFiles, runtime: LxcRuntime) -> None:
    """Write the runtime file atomically.

    Raises:
        HypervisorError: it cannot be written.
    """
    try:
        fileio.write_atomic(files.runtime, runtime.to_json(), mode=0o600)
    except OSError as exc:
        raise HypervisorError(f"cannot write {files.runtime}: {exc}") from exc


def load_runtime(files: InstanceFiles) -> LxcRuntime | None:
    """The runtime file, or None when there is none or it is unreadable (logged)."""
    try:
        with open(files.runtime, encoding="utf-8") as fh:
            return LxcRuntime.from_dict(json.load(fh))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable runtime file %s: %s", files.runtime, exc)
        return None


def log_tail(path: str, *, lines: int = 12, since: int = 0) -> str:
    """The last error/warning lines LXC wrote to ``path`` after byte ``since`` (or its tail)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            fh.seek(since)
            text = fh.read()
    except OSError:
        return ""
    all_lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in all_lines if _ERROR_LINE.search(line)]
    return "\n".join((errors or all_lines)[-lines:])


def parse_info(text: str) -> dict[str, str]:
    """``lxc-info`` output (``Key:   value`` lines) as lower-case key -> value."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out.setdefault(key.strip().lower(), value.strip())
    return out


class LxcTools:
    """The LXC command-line tools on one LXC path (the driver's run directory)."""

    def __init__(self, runner: Runner, lxcpath: str) -> None:
        """Use ``runner`` for the commands and ``lxcpath`` as ``-P``."""
        self.runner = runner
        self.lxcpath = lxcpath

    def _argv(self, tool: str, name: str, *args: str) -> list[str]:
        return [tool, "-P", self.lxcpath, "-n", name, *args]

    def start(self, name: str, config: str, *, timeout: float) -> None:
        """``lxc-start -d`` (daemonized; it returns once the container runs or failed).

        Raises:
            CommandError: lxc-start failed (its stderr; the details are in LXC's log file).
        """
        self.runner(self._argv("lxc-start", name, "-f", config, "-d"), timeout=timeout)

    def wait(self, name: str, state: str, *, timeout: float) -> bool:
        """Wait until the container is in ``state`` (RUNNING, STOPPED...); False on timeout."""
        secs = max(1, round(timeout))
        res = self.runner(
            self._argv("lxc-wait", name, "-s", state, "-t", str(secs)),
            timeout=secs + TOOL_TIMEOUT,
            check=False,
        )
        return res.rc == 0

    def info(self, name: str) -> tuple[str, int | None]:
        """The container's state (``RUNNING``, ``FROZEN``, ``STOPPED``...) and init pid.

        A container LXC does not know is ``STOPPED``.

        Raises:
            HypervisorError: lxc-info could not be run.
        """
        try:
            res = self.runner(
                self._argv("lxc-info", name, "-s", "-p"),
                timeout=TOOL_TIMEOUT,
                check=False,
                c_locale=True,
            )
        except CommandError as exc:
            raise HypervisorError(f"cannot query container {name}: {exc}") from exc
        if res.rc != 0:
            return "STOPPED", None
        fields = parse_info(res.stdout)
        pid_text = fields.get("pid", "")
        return fields.get("state", "STOPPED").upper(), int(pid_text) if pid_text.isdigit() else None

    def request_stop(self, name: str, *, timeout: float) -> bool:
        """Ask the container's init to halt (SIGPWR) until it stops or ``timeout`` passed.

        The request is repeated every :data:`STOP_RETRY` seconds. Returns whether it stopped.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            chunk = max(1, int(min(left, STOP_RETRY) + 0.999))
            res = self.runner(
                self._argv("lxc-stop", name, "--nokill", "-t", str(chunk)),
                timeout=chunk + TOOL_TIMEOUT,
                check=False,
                c_locale=True,
            )
            if res.rc == 0:
                return True
            if "is not running" in res.stderr or "doesn't exist" in res.stderr:
                return True

    def kill(self, name: str) -> None:
        """``lxc-stop -k``: SIGKILL the container's init (a stopped one is fine).

        Raises:
            HypervisorError: lxc-stop failed and the container still runs.
        """
        res = self.runner(
            self._argv("lxc-stop", name, "-k"), timeout=TOOL_TIMEOUT, check=False, c_locale=True
        )
        if res.rc != 0 and self.info(name)[0] != "STOPPED":
            raise HypervisorError(
                f"cannot kill container {name}: {res.stderr.strip()}", kind=ErrorKind.ENVIRONMENT
            )

    def freeze(self, name: str, *, frozen: bool) -> None:
        """``lxc-freeze`` / ``lxc-unfreeze``.

        Raises:
            HypervisorError: the tool failed.
        """
        tool = "lxc-freeze" if frozen else "lxc-unfreeze"
        try:
            self.runner(self._argv(tool, name), timeout=TOOL_TIMEOUT, c_locale=True)
        except CommandError as exc:
            raise HypervisorError(f"{tool} {name} failed: {exc}") from exc

    def console_argv(self, name: str) -> list[str]:
        """The command that attaches a terminal to the container's console."""
        return self._argv("lxc-console", name, "-t", "0")

    def attach_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """The command that runs ``argv`` inside the container."""
        return [*self._argv("lxc-attach", name), "--", *argv]


def remove_files(files: InstanceFiles) -> None:
    """Remove the config, runtime file and the (unmounted, empty) rootfs directory."""
    for path in (files.runtime, files.config):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for path in (files.rootfs, files.dir):
        with contextlib.suppress(OSError):
            os.rmdir(path)

"""Helpers for the KVM lifecycle and migration tests: a node root, its driver and its guests.

The guest is Corral's busybox OS kernel + initrd (``guest_kernel`` fixture) booted from RAM:
it prints ``CORRAL-GUEST-UP <hostname> <uptime>`` once per boot and runs a shell on its serial
console. Every QEMU a test starts is registered with the ``guest_reaper`` watchdog and killed
by pid in teardown (:meth:`GuestRoot.kill_all`).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

from corral.common import daemonize
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceSpec
from corral.hypervisor.kvm.cmdline import argv_names_instance
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.process import pid_alive, pid_cmdline, read_pidfile
from corral.rpc.client import NodeAddress

REPO = Path(__file__).resolve().parents[2]

BOOT_TIMEOUT = 90.0
UP = "CORRAL-GUEST-UP"


def guest_spec(kernel: Path, name: str, *, memory: int = 128, **hv: object) -> InstanceSpec:
    """An instance booting the busybox guest from RAM (no disk needed)."""
    params: dict[str, object] = {
        "kernel_path": str(kernel / "vmlinuz"),
        "initrd_path": str(kernel / "initrd.img"),
        "root_path": "",
        "kernel_args": f"corral.hostname={name} panic=-1",
        "shutdown_timeout": 30,
    }
    params.update(hv)
    return InstanceSpec(
        name=name,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.corral.test")),
        hypervisor="kvm",
        hvparams=params,
        memory=memory,
        min_memory=memory // 2,
        vcpus=1,
    )


class GuestRoot:
    """One node root: its driver and helpers to watch and type into its guests' consoles."""

    def __init__(self, root: str, reaper: Path) -> None:
        self.root = root
        self.paths = Paths(root)
        self.reaper = reaper
        self.kvm = Kvm.from_paths(self.paths)

    def register(self, name: str) -> int | None:
        """Hand the guest's pid to the session reaper; returns it."""
        pid = read_pidfile(self.kvm._layout(name).pidfile)
        if pid is not None:
            with open(self.reaper, "a", encoding="utf-8") as fh:
                fh.write(f"{pid}\n")
        return pid

    def pid(self, name: str) -> int | None:
        return read_pidfile(self.kvm._layout(name).pidfile)

    def serial(self, name: str) -> str:
        try:
            return Path(self.kvm._layout(name).serial_log).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(
        self, name: str, pattern: str, *, start: int = 0, timeout: float = BOOT_TIMEOUT
    ) -> re.Match[str]:
        """Wait until ``pattern`` appears in the serial log after offset ``start``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.serial(name)[start:])
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(
            f"{pattern!r} not on the console of {name} within {timeout}s; "
            f"tail:\n{self.serial(name)[-1500:]}"
        )

    def connect_console(self, name: str) -> socket.socket:
        """A connection to the guest's serial console socket (one client at a time).

        NOTE: input sent while the guest is paused waits in the socket only as long as the
        connection stays open: QEMU drops what it did not read when the client leaves.
        """
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.kvm._layout(name).serial_socket)
        return s

    def type(self, name: str, line: str) -> None:
        """Type a line into the guest's serial console (its UNIX socket)."""
        with self.connect_console(name) as s:
            s.sendall(b"\r" + line.encode() + b"\r")
            time.sleep(0.3)

    def ask(self, name: str, command: str, pattern: str, *, timeout: float = 30) -> re.Match[str]:
        """Type ``command`` and wait for ``pattern`` in the output that follows it."""
        start = len(self.serial(name))
        self.type(name, command)
        return self.wait_serial(name, pattern, start=start, timeout=timeout)

    def uptime(self, name: str) -> float:
        """The guest's own uptime (seconds), asked on its console."""
        tag = f"U{time.monotonic_ns() % 10**9}"
        found = self.ask(
            name, f"echo {tag}-$(cut -d' ' -f1 /proc/uptime)-END", rf"{tag}-([0-9.]+)-END"
        )
        return float(found.group(1))

    def kill_all(self) -> None:
        """SIGKILL every QEMU of this root, by the pids in its pid files."""
        run_dir = self.kvm.run_dir
        for name in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
            pid = read_pidfile(os.path.join(run_dir, name, "qemu.pid"))
            if pid and pid_alive(pid) and argv_names_instance(pid_cmdline(pid) or [], name):
                os.kill(pid, signal.SIGKILL)


# --- node daemons on loopback addresses ---------------------------------------------------------


class NodeDaemon:
    """A real ``corral-noded`` in its own root, on its own 127.x address (mutual TLS)."""

    def __init__(self, paths: Paths, name: str, host: str, port: int) -> None:
        self.paths = paths
        self.name = name
        self.host = host
        self.port = port
        self.pid: int | None = None

    @property
    def log_file(self) -> str:
        return os.path.join(self.paths.log_dir, "corral-noded.log")

    @property
    def address(self) -> NodeAddress:
        return NodeAddress(self.name, self.host, self.port)

    def start(self) -> None:
        """Start the daemon (detached); returns once it serves."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "corral.node.daemon", "--root", self.paths.root]
        argv += ["--bind", self.host, "--port", str(self.port), "--foreground"]
        argv += ["--log-file", self.log_file, "--log-level", "debug"]
        self.pid = daemonize.start_daemon(
            argv, self.paths.pid_file("corral-noded"), self.log_file, env=env
        )

    def stop(self) -> None:
        """Stop the daemon (SIGKILL if it does not stop in time); never raises."""
        with contextlib.suppress(Exception):
            daemonize.stop_daemon(self.paths.pid_file("corral-noded"), timeout=10)
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def log(self) -> str:
        try:
            return Path(self.log_file).read_text(errors="replace")
        except FileNotFoundError:
            return ""


def free_port(host: str) -> int:
    """A TCP port nobody listens on at ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def loopback_pair() -> tuple[str, str]:
    """Two distinct random 127.x.y.z addresses."""
    a = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    while True:
        b = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        if b != a:
            return a, b

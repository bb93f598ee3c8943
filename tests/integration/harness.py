"""A real single-host Corral cluster in a temporary root, driven through its command line.

Nothing is faked: ``init_cluster`` lays out the CA, certificates and store under the root,
the real ``corral-noded`` and ``corral-master`` run as daemons on a random 127.x.y.z address,
and commands run as separate ``corral`` / ``gnt-*`` processes with ``CORRAL_ROOT`` set.

Teardown (:meth:`LocalCluster.close`) always stops the daemons and SIGKILLs every QEMU whose
pid file lies under the root, and the caller registers guest pids with the session reaper.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.common.paths import Paths

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV") or REPO / ".venv") / "bin"
NOOP_OS = "/usr/share/ganeti/os/noop"
KERNEL_CACHE = REPO / ".cache" / "busybox"


def free_port(host: str) -> int:
    """A TCP port nobody listens on at ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _free_loopback(taken: set[str]) -> str:
    while True:
        host = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        if host not in taken:
            return host


def _prepare_root(paths: Paths) -> None:
    """OS definitions (noop) and the cached busybox kernel under a node's root."""
    paths.ensure()
    os_dir = os.path.join(paths.root, "srv/ganeti/os")
    os.makedirs(os_dir, exist_ok=True)
    if os.path.isdir(NOOP_OS) and not os.path.exists(os.path.join(os_dir, "noop")):
        os.symlink(NOOP_OS, os.path.join(os_dir, "noop"))
    cache = os.path.join(paths.cache_dir, "busybox")
    os.makedirs(cache, exist_ok=True)
    for deb in glob.glob(str(KERNEL_CACHE / "linux-image-*.deb")):
        shutil.copy(deb, cache)


@dataclass
class NodeHandle:
    """A node daemon of a :class:`LocalCluster` with its own root and loopback address."""

    name: str
    paths: Paths
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def pid_file(self) -> str:
        """The node daemon's pid file."""
        return self.paths.pid_file("corral-noded")

    @property
    def log_file(self) -> str:
        """The node daemon's log."""
        return os.path.join(self.paths.log_dir, "corral-noded.log")

    def noded_pid(self) -> int | None:
        """The pid of the running node daemon, or None."""
        from corral.common import daemonize

        return daemonize.daemon_status(self.pid_file, name="corral-noded")

    def start_noded(self, *, join: bool = False) -> str:
        """Start its node daemon (detached); ``join`` (or no certificate yet) means join mode.

        Returns:
            What ``corral-noded`` printed (``join token: ...`` in join mode).
        """
        argv = [sys.executable, "-m", "corral.node.daemon", "--root", self.paths.root]
        argv += ["--bind", self.host, "--port", str(self.port), "--log-file", self.log_file]
        if join or not os.path.exists(self.paths.node_cert):
            argv.append("--join")
        proc = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    def kill_noded(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node daemon (if it runs)."""
        pid = self.noded_pid()
        if pid is not None:
            os.kill(pid, sig)

    def join_token(self) -> str:
        """The join token the daemon keeps (root-only file) while in join mode."""
        with open(self.paths.join_token, encoding="utf-8") as fh:
            return fh.read().strip()

    def guest_pids(self) -> dict[str, int]:
        """Pids of the QEMU processes of this node's root, by instance name."""
        pids = {}
        for pidfile in glob.glob(os.path.join(self.paths.hv_run_dir("kvm"), "*", "qemu.pid")):
            try:
                with open(pidfile) as fh:
                    pids[os.path.basename(os.path.dirname(pidfile))] = int(fh.read().strip())
            except (OSError, ValueError):
                continue
        return pids

    def stop(self) -> None:
        """Stop its node daemon and SIGKILL its guests."""
        from corral.common import daemonize

        try:
            daemonize.stop_daemon(self.pid_file, 20, name="corral-noded")
        finally:
            for pid in self.guest_pids().values():
                try:
                    if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


class LocalCluster:
    """One cluster: its root, address, ports and helpers to run commands against it."""

    def __init__(
        self,
        root: Path,
        *,
        hypervisors: list[str],
        reaper: Path | None = None,
        admin_password: str | None = None,
        cluster_name: str = "e2e",
        init_options: dict[str, Any] | None = None,
    ):
        from corral.master.bootstrap import init_cluster

        self.paths = Paths(str(root))
        self.paths.ensure()
        self.reaper = reaper
        self.host = (
            f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        )
        self.rapi_port = free_port(self.host)
        self.noded_port = free_port(self.host)
        os_dir = os.path.join(self.paths.root, "srv/ganeti/os")
        os.makedirs(os_dir)
        if os.path.isdir(NOOP_OS):
            os.symlink(NOOP_OS, os.path.join(os_dir, "noop"))
        # The busybox OS downloads Debian's kernel into the root's cache; reuse the copy the
        # test run already fetched (make kernel) instead of downloading it again.
        cache = os.path.join(self.paths.cache_dir, "busybox")
        os.makedirs(cache, exist_ok=True)
        for deb in glob.glob(str(KERNEL_CACHE / "linux-image-*.deb")):
            shutil.copy(deb, cache)
        init_cluster(
            self.paths,
            cluster_name=cluster_name,
            node_name="node1",
            node_address=self.host,
            enabled_hypervisors=hypervisors,
            rapi_port=self.rapi_port,
            noded_port=self.noded_port,
            # node-local: each node daemon keeps it under its own root (Paths.host_path)
            file_storage_dir="/srv/corral/disks",
            admin_password=admin_password,
            **(init_options or {}),
        )
        self.env = {
            **os.environ,
            "CORRAL_ROOT": self.paths.root,
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        }
        self.nodes: dict[str, NodeHandle] = {}
        self.run("corral", "daemons", "start")

    # --- more nodes -----------------------------------------------------------------------

    def start_joining_node(self, name: str, *, env: dict[str, str] | None = None) -> NodeHandle:
        """A new root ``<R's parent>/<name>`` with a node daemon in join mode (not added).

        ``env`` adds environment variables for the daemon (e.g. the test version override).
        The handle is stopped by :meth:`close`.
        """
        root = Path(self.paths.root).parent / name
        if root.exists():
            raise AssertionError(f"{root} exists already")
        paths = Paths(str(root))
        _prepare_root(paths)
        taken = {self.host} | {n.host for n in self.nodes.values()}
        host = _free_loopback(taken)
        handle = NodeHandle(
            name=name,
            paths=paths,
            host=host,
            port=free_port(host),
            env={**self.env, "CORRAL_ROOT": str(root), **(env or {})},
        )
        self.nodes[name] = handle
        out = handle.start_noded(join=True)
        match = re.search(r"join token: (\S+)", out)
        if match is None or match.group(1) != handle.join_token():
            raise AssertionError(f"corral-noded --join printed no (matching) token: {out!r}")
        return handle

    def add_node(
        self,
        name: str,
        *,
        master_candidate: bool = False,
        vm_capable: bool = True,
        group: str | None = None,
    ) -> NodeHandle:
        """Start a node daemon in join mode on a new root and address, then run the real
        ``corral node add`` on the master; returns once the node is in ``corral node list``.

        Raises:
            AssertionError: a command failed (with its output).
        """
        handle = self.start_joining_node(name)
        argv = ["node", "add", name, "--address", handle.host, "--port", str(handle.port)]
        argv += ["--join-token", handle.join_token()]
        argv += ["--master-candidate", "yes" if master_candidate else "no"]
        argv += ["--vm-capable", "yes" if vm_capable else "no"]
        if group is not None:
            argv += ["--group", group]
        self.corral(*argv)
        listed = self.run("corral", "node", "list", "--no-headers", "-o", "name").stdout.split()
        if name not in listed:
            raise AssertionError(f"node {name} not in 'corral node list' after add: {listed}")
        return handle

    # --- commands -------------------------------------------------------------------------

    def run(
        self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (``corral ...``, ``gnt-instance ...``) against this cluster."""
        proc = subprocess.run(
            list(argv),
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def corral(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``corral ARGS``."""
        return self.run("corral", *args, check=check)

    def corral_json(self, *args: str) -> Any:
        """Run ``corral --output json ARGS`` and parse its output."""
        return json.loads(self.run("corral", "--output", "json", *args).stdout)

    # --- guests ---------------------------------------------------------------------------

    def serial_log(self, name: str) -> str:
        """The serial console log of an instance's current start."""
        return os.path.join(self.paths.log_dir, "kvm", f"{name}.serial.log")

    def serial_text(self, name: str) -> str:
        """What the instance printed on its serial console so far (this start)."""
        try:
            with open(self.serial_log(name), encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_serial(self, name: str, pattern: str, *, count: int = 1, timeout: float = 90) -> None:
        """Wait until ``pattern`` occurs ``count`` times in the serial log of this start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.serial_text(name))) >= count:
                return
            time.sleep(0.2)
        raise AssertionError(
            f"{name}: {pattern!r} x{count} not seen within {timeout}s; serial tail:\n"
            f"{self.serial_text(name)[-2000:]}"
        )

    def console(self, name: str, line: str, expect: str, *, timeout: float = 30) -> str:
        """Type ``line`` into the instance's console (through ``corral instance console``)
        and return the serial output once ``expect`` (a regex) appeared after it."""
        start = len(self.serial_text(name))
        proc = subprocess.Popen(
            ["corral", "instance", "console", name],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdin is not None
            time.sleep(0.5)
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                text = self.serial_text(name)[start:]
                if re.search(expect, text):
                    return text
                time.sleep(0.2)
            raise AssertionError(f"{name}: {expect!r} not seen after {line!r}: {text[-1000:]}")
        finally:
            proc.kill()
            proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()

    def guest_pids(self) -> dict[str, int]:
        """Pids of the QEMU processes of this root, by instance name."""
        pids = {}
        pattern = os.path.join(self.paths.hv_run_dir("kvm"), "*", "qemu.pid")
        for pidfile in glob.glob(pattern):
            try:
                with open(pidfile) as fh:
                    pids[os.path.basename(os.path.dirname(pidfile))] = int(fh.read().strip())
            except (OSError, ValueError):
                continue
        return pids

    def register_guests(self) -> None:
        """Hand the current guest pids to the session reaper (killed if pytest dies)."""
        if self.reaper is None:
            return
        with open(self.reaper, "a", encoding="utf-8") as fh:
            for pid in self.guest_pids().values():
                fh.write(f"{pid}\n")

    # --- teardown -------------------------------------------------------------------------

    def close(self, *, show_logs: bool) -> None:
        """Stop the daemons, kill every guest of this root, print logs when asked."""
        from corral.cli.daemons import stop_daemons

        try:
            for handle in getattr(self, "nodes", {}).values():
                try:
                    handle.stop()
                except Exception as exc:  # keep tearing down the others
                    print(f"stopping node {handle.name}: {exc}")
            stop_daemons(self.paths, timeout=20)
        finally:
            for pid in self.guest_pids().values():
                try:
                    if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if show_logs:
                for log in sorted(
                    glob.glob(os.path.join(self.paths.log_dir, "**", "*.log"), recursive=True)
                ):
                    with open(log, encoding="utf-8", errors="replace") as fh:
                        print(f"--- {log} (tail) ---\n{fh.read()[-3000:]}")
                for handle in getattr(self, "nodes", {}).values():
                    try:
                        with open(handle.log_file, encoding="utf-8", errors="replace") as fh:
                            print(f"--- {handle.log_file} (tail) ---\n{fh.read()[-3000:]}")
                    except OSError:
                        pass

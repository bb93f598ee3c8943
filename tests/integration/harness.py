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
import time
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
            file_storage_dir=os.path.join(self.paths.root, "srv/corral/disks"),
            admin_password=admin_password,
        )
        self.env = {
            **os.environ,
            "CORRAL_ROOT": self.paths.root,
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        }
        self.run("corral", "daemons", "start")

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

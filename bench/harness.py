"""What every benchmark shares: a throw-away cluster of real daemons, statistics, output.

:class:`BenchCluster` builds a single-host cluster in a temporary root with the product's own
APIs only — :func:`corral.master.bootstrap.init_cluster`, :mod:`corral.common.daemonize` to
run ``corral-noded`` and ``corral-master`` detached (exactly as ``corral daemons start`` does)
and :class:`corral.client.CorralClient` to talk to the master — on a random ``127.0.x.y``
address. It is a context manager: on exit (also on an exception, Ctrl-C or SIGTERM turned
into :class:`SystemExit` by :func:`install_signal_handlers`) it stops both daemons, kills every
QEMU whose pid file lies under the root, kills the extra processes registered with
:meth:`BenchCluster.track_pid` (each only if its command line still names the root, so a
recycled pid is never hit) and removes the root. A watchdog process (:class:`Reaper`) does
the same by pid if the benchmark process itself dies without running its cleanup (SIGKILL).

Statistics: :func:`percentile` interpolates linearly between order statistics (numpy's
default), :func:`summary` gives n/min/median/p99/max/mean. :func:`print_table` and
:func:`write_results` print the table and write ``bench/results/<name>.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any, Self

import httpx

import corral
from corral.client import CorralClient
from corral.common import daemonize
from corral.common.paths import Paths
from corral.common.runcmd import CmdResult, run
from corral.master.bootstrap import admin_password_file, init_cluster

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
#: Debian's noop OS definition (package ganeti-os-noop).
NOOP_OS = "/usr/share/ganeti/os/noop"
#: Where ``make kernel`` / the integration tests keep the busybox guest's kernel package.
KERNEL_CACHE = os.path.join(REPO, ".cache", "busybox")

NODED = "corral-noded"
MASTER = "corral-master"
DAEMON_MODULES = {NODED: "corral.node.daemon", MASTER: "corral.master.daemon"}


# --- statistics and output ----------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile, interpolating linearly between order statistics.

    Raises:
        ValueError: ``values`` is empty or ``pct`` is outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, min, median (p50), p90, p99, max and mean of ``values``.

    Raises:
        ValueError: ``values`` is empty.
    """
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def ms(seconds: float) -> str:
    """Seconds shown as milliseconds (``12.34 ms``)."""
    return f"{seconds * 1000:.2f} ms"


def secs(seconds: float) -> str:
    """Seconds shown with three decimals (``1.234 s``)."""
    return f"{seconds:.3f} s"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a plain-text table (columns left-aligned, widths from the content)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print(line)
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print(line)
    print(line)


def host_facts() -> dict[str, Any]:
    """What the figures depend on: CPUs, load, Python, kernel (never raises)."""
    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
    }
    with contextlib.suppress(OSError):
        facts["loadavg_at_start"] = list(os.getloadavg())
    return facts


def write_results(name: str, data: Mapping[str, Any]) -> str:
    """Write ``bench/results/<name>.json`` (atomically) and return its path.

    Raises:
        OSError: the file cannot be written.
    """
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    doc = {
        "benchmark": name,
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": host_facts(),
        **data,
    }
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)
    return path


# --- process safety ----------------------------------------------------------------------------


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit so every ``finally`` cleanup runs."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)


_WATCHDOG = r"""
import os, signal, sys, time, shutil
parent, listfile, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
while os.getppid() == parent and os.path.exists(listfile):
    time.sleep(0.5)
if not os.path.exists(listfile):
    sys.exit(0)  # the benchmark cleaned up itself


def pids():
    try:
        found = [int(x) for x in open(listfile).read().split()]
    except (OSError, ValueError):
        found = []
    for dirpath, _dirs, files in os.walk(root):  # daemons and guests not registered yet
        for name in files:
            if name.endswith(".pid"):
                try:
                    found.append(int(open(os.path.join(dirpath, name)).read().strip()))
                except (OSError, ValueError):
                    pass
    return found


# A daemon that was starting when the benchmark died writes its pid file within its start
# timeout (30 s): keep looking that long.
deadline = time.monotonic() + 35
while True:
    for pid in pids():
        try:  # only processes that belong to this benchmark's root
            if root.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if time.monotonic() > deadline:
        break
    time.sleep(0.5)
os.unlink(listfile)
shutil.rmtree(root, ignore_errors=True)
"""


class Reaper:
    """A watchdog process that SIGKILLs our processes if the benchmark process dies.

    It kills the registered pids and those in every pid file under ``root`` (daemons, QEMU),
    but only processes whose command line mentions ``root`` (a recycled pid is spared), for
    35 s (a daemon that was starting writes its pid file within its 30 s start timeout); then
    ``root`` is removed. :meth:`close` (normal cleanup) stops the watchdog.
    """

    def __init__(self, root: str) -> None:
        fd, self.listfile = tempfile.mkstemp(prefix="crlb-reaper-", dir="/tmp")
        os.close(fd)
        self._pids: set[int] = set()
        # NOTE: a long-lived helper process, owned here (STYLE §5); runcmd is for short ones.
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), self.listfile, root],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def add(self, pid: int) -> None:
        """Register a pid to kill if we die."""
        self._pids.add(pid)
        with open(self.listfile, "w", encoding="ascii") as fh:
            fh.write(" ".join(str(p) for p in sorted(self._pids)))

    def close(self) -> None:
        """Stop the watchdog (we clean up ourselves)."""
        with contextlib.suppress(OSError):
            os.unlink(self.listfile)
        self._proc.kill()
        self._proc.wait()


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def kill_pid(pid: int, *, grace: float = 5.0) -> None:
    """SIGTERM ``pid``, wait up to ``grace`` seconds, then SIGKILL it (never raises)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            if not pid_alive(pid):
                return
            time.sleep(0.02)


def read_pid(path: str) -> int | None:
    """The pid in a pid file, or None."""
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# --- the cluster -------------------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def corral_cli() -> list[str]:
    """The ``corral`` command of this interpreter's environment (console script if present)."""
    script = os.path.join(os.path.dirname(sys.executable), "corral")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "corral.cli.main"]


def _daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(corral.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


@dataclasses.dataclass
class BenchCluster:
    """A single-host cluster of real daemons in a temporary root (see the module docstring).

    Use :meth:`create` inside a ``with`` block.
    """

    root: str
    address: str
    rapi_port: int
    noded_port: int
    reaper: Reaper
    extra_pids: set[int] = dataclasses.field(default_factory=set)

    @property
    def paths(self) -> Paths:
        """The cluster's file layout."""
        return Paths(self.root)

    @classmethod
    def create(
        cls,
        *,
        hypervisors: Sequence[str] = ("fake",),
        hvparams: Mapping[str, Mapping[str, Any]] | None = None,
        noop_os: bool = True,
        kernel_cache: bool = False,
        start: bool = True,
    ) -> BenchCluster:
        """Initialise a cluster in a fresh temporary root and (by default) start its daemons.

        Args:
            hypervisors: enabled hypervisors, the first is the default.
            hvparams: cluster-level hypervisor parameters.
            noop_os: link Debian's ``noop`` OS definition into the root's OS search path.
            kernel_cache: copy the busybox OS's kernel package (and its unpacked tree) from
                ``.cache/busybox`` into the root's cache, so installing the OS downloads
                nothing.
            start: start ``corral-noded`` and ``corral-master``.

        Raises:
            CorralError: init_cluster or a daemon failed (everything created is removed).
            RuntimeError: a required file (noop OS) is missing.
        """
        # NOTE: short root under /tmp: QEMU's UNIX socket paths must stay under 108 bytes.
        root = tempfile.mkdtemp(prefix="crlb-", dir="/tmp")
        address = f"127.0.{random.randint(1, 250)}.{random.randint(2, 250)}"
        cluster = cls(
            root=root,
            address=address,
            rapi_port=_free_port(address),
            noded_port=_free_port(address),
            reaper=Reaper(root),
        )
        try:
            paths = cluster.paths
            init_cluster(
                paths,
                cluster_name="bench",
                node_name="node1",
                node_address=address,
                enabled_hypervisors=list(hypervisors),
                rapi_port=cluster.rapi_port,
                noded_port=cluster.noded_port,
                hvparams=hvparams,
            )
            if noop_os:
                if not os.path.isdir(NOOP_OS):
                    raise RuntimeError(f"{NOOP_OS} is missing (install ganeti-os-noop)")
                os_dir = os.path.join(root, "usr/share/ganeti/os")
                os.makedirs(os_dir, exist_ok=True)
                os.symlink(NOOP_OS, os.path.join(os_dir, "noop"))
            if kernel_cache:
                cluster._copy_kernel_cache()
            if start:
                cluster.start_daemons()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _copy_kernel_cache(self) -> None:
        dest = os.path.join(self.paths.cache_dir, "busybox")
        os.makedirs(dest, exist_ok=True)
        if not os.path.isdir(KERNEL_CACHE):
            return  # the OS's create step downloads the kernel itself
        for entry in os.listdir(KERNEL_CACHE):
            src = os.path.join(KERNEL_CACHE, entry)
            if entry.endswith(".deb"):
                shutil.copy2(src, dest)
            elif entry.startswith("x-") and os.path.isdir(src):
                shutil.copytree(src, os.path.join(dest, entry), symlinks=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt | SystemExit):
            self.print_logs()
        self.close()

    # --- daemons ---------------------------------------------------------------------------

    def _daemon_argv(self, name: str) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            DAEMON_MODULES[name],
            "--root",
            self.root,
            "--foreground",
            "--log-file",
            self.log_file(name),
        ]
        if name == NODED:
            argv += ["--port", str(self.noded_port)]
        return argv

    def log_file(self, name: str) -> str:
        """A daemon's log file."""
        return os.path.join(self.paths.log_dir, f"{name}.log")

    def start_daemon(self, name: str) -> int:
        """Start one daemon (detached) and wait until it serves; its pid.

        Raises:
            CorralError: it did not start (its log tail is in the message).
        """
        pid = daemonize.start_daemon(
            self._daemon_argv(name),
            self.paths.pid_file(name),
            self.log_file(name) + ".out",
            env=_daemon_env(),
            name=name,
        )
        self.reaper.add(pid)
        return pid

    def stop_daemon(self, name: str) -> None:
        """Stop one daemon (SIGTERM, then SIGKILL after 20 s)."""
        daemonize.stop_daemon(self.paths.pid_file(name), 20.0, name=name)

    def start_daemons(self) -> None:
        """Start the node daemon, then the master."""
        self.start_daemon(NODED)
        self.start_daemon(MASTER)

    def stop_daemons(self) -> None:
        """Stop the master, then the node daemon."""
        self.stop_daemon(MASTER)
        self.stop_daemon(NODED)

    # --- clients ---------------------------------------------------------------------------

    def client(self, *, timeout: float = 60.0) -> CorralClient:
        """A client of the master's UNIX socket (as the CLI uses)."""
        return CorralClient.for_paths(self.paths, timeout=timeout)

    @property
    def rapi_url(self) -> str:
        """The RAPI's HTTPS base URL."""
        return f"https://{self.address}:{self.rapi_port}"

    def admin_password(self) -> str:
        """The generated RAPI admin password (from the file init_cluster wrote)."""
        with open(admin_password_file(self.paths), encoding="utf-8") as fh:
            return fh.read().strip()

    def rapi_http(self, *, timeout: float = 120.0) -> httpx.Client:
        """A plain HTTPS client of the RAPI: CA-verified, Basic auth as ``admin``."""
        return httpx.Client(
            base_url=self.rapi_url,
            verify=ssl.create_default_context(cafile=self.paths.ca_cert),
            auth=("admin", self.admin_password()),
            timeout=timeout,
        )

    def cli(self, *args: str, timeout: float = 300.0, check: bool = True) -> CmdResult:
        """Run ``corral --root <root> ARGS`` as a subprocess and wait for it.

        Raises:
            CommandError: it failed and ``check`` is set (stdout/stderr in the error).
        """
        return run(
            [*corral_cli(), "--root", self.root, *args],
            timeout=timeout,
            check=check,
            env={"COLUMNS": "200"},
        )

    def wait_job(self, client: CorralClient, job_id: int, *, timeout: float = 300.0) -> str:
        """Follow a job with the long poll until it ends; its final status.

        Raises:
            CorralError: the API failed or the job did not end within ``timeout``.
        """
        job = client.follow_job(job_id, timeout=timeout)
        return str(job["status"])

    # --- cleanup ---------------------------------------------------------------------------

    def track_pid(self, pid: int) -> None:
        """Kill ``pid`` at cleanup (and from the watchdog if we die)."""
        self.extra_pids.add(pid)
        self.reaper.add(pid)

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` runs and its command line names our root (so a recycled pid is not)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return pid_alive(pid) and os.fsencode(self.root) in fh.read()
        except OSError:
            return False

    def guest_pids(self) -> list[int]:
        """Pids of the running QEMU processes whose pid files lie under the root."""
        pids = []
        for dirpath, _dirs, files in os.walk(self.root):
            if "qemu.pid" in files:
                pid = read_pid(os.path.join(dirpath, "qemu.pid"))
                if pid is not None and self.owns(pid):
                    pids.append(pid)
        return pids

    def print_logs(self, limit: int = 3000) -> None:
        """Print the tail of each daemon's log (for a failed benchmark)."""
        for name in (NODED, MASTER):
            for path in (self.log_file(name), self.log_file(name) + ".out"):
                with contextlib.suppress(OSError), open(path, errors="replace") as fh:
                    tail = fh.read()[-limit:]
                    if tail.strip():
                        print(f"--- {path} (tail) ---\n{tail}", file=sys.stderr)

    def close(self) -> None:
        """Stop the daemons, kill guests and tracked processes, remove the root. Never raises."""
        for name in (MASTER, NODED):
            try:
                self.stop_daemon(name)
            except Exception as exc:  # cleanup goes on
                print(f"warning: cannot stop {name}: {exc}", file=sys.stderr)
        for pid in [*self.guest_pids(), *sorted(self.extra_pids)]:
            if self.owns(pid):
                kill_pid(pid)
        self.reaper.close()
        shutil.rmtree(self.root, ignore_errors=True)

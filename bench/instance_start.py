"""Instance creation and start: the fake hypervisor, and KVM (TCG here) against raw QEMU.

(a) fake hypervisor: real ``corral-noded`` + ``corral-master`` in a temporary root, Debian's
    ``noop`` OS, one 64 MiB ``file`` disk, no NIC. Each round creates a new instance
    (``instance add --no-start``) and starts it, twice: through the CLI (``corral`` subprocess,
    what a user waits for, Python start-up included) and through
    :class:`~corral.client.CorralClient` (the job submitted over the UNIX socket and followed
    with the long poll: the system's own figure). Median over ~20 rounds.
(b) KVM: an instance created once with the built-in ``busybox`` OS (64 MiB disk, 256 MiB RAM,
    1 vCPU, no NIC), stopped. One sample of *Corral* is the time from running
    ``corral instance start vm1`` (CLI subprocess) until the guest's serial log shows
    ``CORRAL-GUEST-UP``. One sample of *raw QEMU* is the time from running
    ``qemu-system-x86_64`` with the **same argv** — taken from the ``runtime.json`` the KVM
    driver wrote during a Corral start, with its run-dir (QMP/serial sockets, pid file) and
    serial-log paths moved to a scratch directory — until the same line appears in its serial
    log. Both use ``-daemonize`` exactly as the driver does. Rounds alternate the order
    (Corral first, then raw first, ...) to spread machine noise over both; one guest runs at
    a time. Reported: both medians and their ratio (and the median of per-round ratios).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.harness import (
    BenchCluster,
    kill_pid,
    ms,
    pid_alive,
    print_table,
    read_pid,
    secs,
    summary,
    write_results,
)
from corral.common import runcmd
from corral.common.paths import Paths
from corral.common.runcmd import CmdResult
from corral.hypervisor.kvm.runtime import InstanceLayout

NAME = "instance_start"
GUEST_UP = re.compile(rb"CORRAL-GUEST-UP (\S+) ([0-9.]+)")
BOOT_TIMEOUT = 180.0
POLL = 0.01


# --- (a) fake hypervisor ------------------------------------------------------------------------


def _fake_spec(name: str) -> dict[str, Any]:
    return {
        "mode": "create",
        "name": name,
        "disk_template": "file",
        "disks": [{"size": 64}],
        "nics": [],
        "os": "noop",
        "hypervisor": "fake",
        "start": False,
    }


def fake_rounds(rounds: int) -> dict[str, Any]:
    """Phase (a): ``rounds`` x (add + start) through the CLI and through the client."""
    cli_add: list[float] = []
    cli_start: list[float] = []
    api_add: list[float] = []
    api_start: list[float] = []
    cli_noop: list[float] = []
    with BenchCluster.create(hypervisors=["fake"]) as cluster, cluster.client() as client:
        for i in range(rounds + 1):  # round 0 warms up (imports, first OS diagnose)
            name = f"cli{i:03d}"
            t0 = time.perf_counter()
            cluster.cli(
                "instance", "add", "-t", "file", "--disk", "0:size=64M", "-o", "noop",
                "--no-nics", "--no-start", name,
            )  # fmt: skip
            t1 = time.perf_counter()
            cluster.cli("instance", "start", name)
            t2 = time.perf_counter()

            cluster.cli("daemons", "status")  # CLI start-up alone: reads pid files, no API
            t_noop = time.perf_counter() - t2

            name = f"api{i:03d}"
            t3 = time.perf_counter()
            created = cluster.wait_job(client, client.create_instance(_fake_spec(name)))
            t4 = time.perf_counter()
            started = cluster.wait_job(client, client.startup_instance(name))
            t5 = time.perf_counter()
            if (created, started) != ("success", "success"):
                raise RuntimeError(f"{name}: create {created}, start {started}")
            if i == 0:
                continue
            cli_add.append(t1 - t0)
            cli_start.append(t2 - t1)
            api_add.append(t4 - t3)
            api_start.append(t5 - t4)
            cli_noop.append(t_noop)
        listed = client.request("GET", "/2/instances", params=[("bulk", True)])
        if len(listed) != 2 * (rounds + 1) or any(i["status"] != "running" for i in listed):
            raise RuntimeError("not every fake instance is running after the benchmark")
    return {
        "rounds": rounds,
        "cli_add_s": summary(cli_add),
        "cli_start_s": summary(cli_start),
        "cli_add_plus_start_s": summary([a + s for a, s in zip(cli_add, cli_start, strict=True)]),
        "cli_startup_daemons_status_s": summary(cli_noop),
        "api_add_s": summary(api_add),
        "api_start_s": summary(api_start),
        "api_add_plus_start_s": summary([a + s for a, s in zip(api_add, api_start, strict=True)]),
    }


# --- (b) KVM vs raw QEMU ------------------------------------------------------------------------


class SerialWatch:
    """Follows a serial log file from its start, looking for the guest's ``CORRAL-GUEST-UP``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._buf = b""
        self._offset = 0

    def poll(self) -> tuple[str, float] | None:
        """(hostname, guest uptime in s) once the line is there, else None."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return None
        self._offset += len(data)
        self._buf += data
        m = GUEST_UP.search(self._buf)
        if m is None or not self._buf[m.end() :].startswith((b"\r", b"\n")):
            return None  # the line may still be incomplete
        return m.group(1).decode(), float(m.group(2))

    def wait(self, *, deadline: float, alive: Callable[[], bool]) -> tuple[str, float, float]:
        """Wait for the line; ``(hostname, guest uptime, perf_counter when seen)``.

        Raises:
            RuntimeError: ``alive()`` turned false or the deadline passed (log tail included).
        """
        while True:
            found = self.poll()
            if found is not None:
                return found[0], found[1], time.perf_counter()
            if time.perf_counter() > deadline or not alive():
                tail = self._buf[-2000:].decode("utf-8", "replace")
                raise RuntimeError(f"no CORRAL-GUEST-UP in {self.path}; log tail:\n{tail}")
            time.sleep(POLL)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def rewrite_argv(argv: list[str], layout: InstanceLayout, scratch: str) -> list[str]:
    """The driver's argv with the run directory and the serial log moved to ``scratch``.

    Raises:
        RuntimeError: a path of the instance's run directory is left after rewriting, or the
            argv lacks ``-daemonize``/``-pidfile``.
    """
    run_dir = os.path.join(scratch, "run")
    out = []
    for arg in argv:
        arg = arg.replace(layout.serial_log, os.path.join(scratch, "serial.log"))
        arg = arg.replace(layout.dir + "/", run_dir + "/")
        out.append(arg)
    left = [a for a in out if layout.dir + "/" in a or layout.log_dir + "/" in a]
    if left:
        raise RuntimeError(f"instance paths left in the raw argv: {left}")
    if "-daemonize" not in out or "-pidfile" not in out:
        raise RuntimeError("the driver's argv lacks -daemonize or -pidfile")
    return out


class KvmBench:
    """One stopped busybox instance ``vm1`` and the raw replay of its QEMU command line."""

    def __init__(self, cluster: BenchCluster) -> None:
        self.cluster = cluster
        paths: Paths = cluster.paths
        self.layout = InstanceLayout(
            run_dir=paths.hv_run_dir("kvm"), log_dir=os.path.join(paths.log_dir, "kvm"), name="vm1"
        )
        self.scratch = os.path.join(cluster.root, "raw")
        self.raw_argv: list[str] = []
        self.driver_argv: list[str] = []

    def create(self) -> float:
        """Create ``vm1`` (busybox OS installed, not started); the seconds it took."""
        t0 = time.perf_counter()
        self.cluster.cli(
            "instance", "add", "-t", "file", "--disk", "0:size=64M", "-o", "busybox",
            "-B", "memory=256M,vcpus=1", "--no-nics", "--no-start", "vm1", timeout=900,
        )  # fmt: skip
        return time.perf_counter() - t0

    def corral_start(self) -> dict[str, float]:
        """``corral instance start vm1`` until CORRAL-GUEST-UP; then stop it (not timed)."""
        _remove(self.layout.serial_log)  # the previous boot's line must not count
        watch = SerialWatch(self.layout.serial_log)
        done: list[CmdResult | BaseException] = []
        cli_end: list[float] = []

        def start() -> None:
            try:
                done.append(self.cluster.cli("instance", "start", "vm1", timeout=BOOT_TIMEOUT))
            except BaseException as exc:
                done.append(exc)
            cli_end.append(time.perf_counter())

        up = False
        t0 = time.perf_counter()
        thread = threading.Thread(target=start, daemon=True)
        thread.start()

        def alive() -> bool:
            return not done or isinstance(done[0], CmdResult)

        try:
            try:
                _host, uptime, seen = watch.wait(deadline=t0 + BOOT_TIMEOUT, alive=alive)
            except RuntimeError:
                if done and isinstance(done[0], BaseException):
                    raise done[0] from None  # the CLI's own error says more
                raise
            thread.join(BOOT_TIMEOUT)
            if done and isinstance(done[0], BaseException):
                raise done[0]
            pid = read_pid(self.layout.pidfile)
            if pid is not None:
                self.cluster.track_pid(pid)
            if not self.driver_argv:
                with open(self.layout.runtime_file, encoding="utf-8") as fh:
                    self.driver_argv = list(json.load(fh)["argv"])
            up = True
        finally:
            thread.join(BOOT_TIMEOUT)
            # NOTE: a guest that has not finished booting may miss the ACPI power button;
            # then --timeout 0 (no ACPI phase) instead of waiting for the soft-stop timeout.
            how = ["--timeout", "30" if up else "0"]
            self.cluster.cli("instance", "stop", *how, "vm1", check=False)
        return {"to_guest_up": seen - t0, "cli_returned": cli_end[0] - t0, "guest_uptime": uptime}

    def raw_start(self) -> dict[str, float]:
        """The same argv run directly until CORRAL-GUEST-UP; then killed (not timed)."""
        if not self.raw_argv:
            self.raw_argv = rewrite_argv(self.driver_argv, self.layout, self.scratch)
        shutil.rmtree(self.scratch, ignore_errors=True)
        os.makedirs(os.path.join(self.scratch, "run"), mode=0o700)
        pidfile = os.path.join(self.scratch, "run", "qemu.pid")
        watch = SerialWatch(os.path.join(self.scratch, "serial.log"))
        pid: int | None = None
        t0 = time.perf_counter()
        try:
            # -daemonize: returns once QEMU has initialised, like the driver's launch
            result = runcmd.run(self.raw_argv, timeout=BOOT_TIMEOUT, check=False)
            launched = time.perf_counter()
            pid = read_pid(pidfile)
            if pid is not None:
                self.cluster.track_pid(pid)
            if result.rc != 0 or pid is None:
                raise RuntimeError(f"raw QEMU failed (rc {result.rc}): {result.stderr[-2000:]}")
            live = pid
            _host, uptime, seen = watch.wait(
                deadline=t0 + BOOT_TIMEOUT, alive=lambda: pid_alive(live)
            )
        finally:
            if pid is not None and self.cluster.owns(pid):
                kill_pid(pid, grace=10.0)
        return {"to_guest_up": seen - t0, "launch_returned": launched - t0, "guest_uptime": uptime}


def kvm_rounds(rounds: int, *, warmup: bool) -> dict[str, Any]:
    """Phase (b): interleaved Corral/raw starts of the same guest.

    Raises:
        RuntimeError: QEMU is not installed, or a guest did not come up.
    """
    if shutil.which("qemu-system-x86_64") is None:
        raise RuntimeError("qemu-system-x86_64 is missing (make deps installs it)")
    with BenchCluster.create(hypervisors=["kvm"], noop_os=False, kernel_cache=True) as cluster:
        bench = KvmBench(cluster)
        create_s = bench.create()
        bench.corral_start()  # warm-up, and it records the driver's argv
        if warmup:
            bench.raw_start()
        corral: list[dict[str, float]] = []
        raw: list[dict[str, float]] = []
        for r in range(rounds):
            if r % 2 == 0:
                corral.append(bench.corral_start())
                raw.append(bench.raw_start())
            else:
                raw.append(bench.raw_start())
                corral.append(bench.corral_start())
            print(
                f"  round {r + 1}/{rounds}: corral {secs(corral[-1]['to_guest_up'])}, "
                f"raw qemu {secs(raw[-1]['to_guest_up'])}",
                flush=True,
            )
        accel = "tcg" if "accel=tcg" in " ".join(bench.driver_argv) else "kvm?"
        argv = bench.raw_argv
    c_up = [s["to_guest_up"] for s in corral]
    r_up = [s["to_guest_up"] for s in raw]
    return {
        "rounds": rounds,
        "accel": accel,
        "create_with_busybox_os_s": create_s,
        "corral_to_guest_up_s": summary(c_up),
        "corral_cli_returned_s": summary([s["cli_returned"] for s in corral]),
        "corral_guest_uptime_at_up_s": summary([s["guest_uptime"] for s in corral]),
        "raw_to_guest_up_s": summary(r_up),
        "raw_launch_returned_s": summary([s["launch_returned"] for s in raw]),
        "raw_guest_uptime_at_up_s": summary([s["guest_uptime"] for s in raw]),
        "ratio_of_medians": statistics.median(c_up) / statistics.median(r_up),
        "median_of_round_ratios": statistics.median(c / r for c, r in zip(c_up, r_up, strict=True)),
        "samples": {"corral": corral, "raw": raw},
        "raw_argv": argv,
    }


def run(quick: bool, *, fake: bool = True, kvm: bool = True) -> dict[str, Any]:
    """Run (a) and (b); print the tables; write ``bench/results/instance_start.json``."""
    result: dict[str, Any] = {"quick": quick}
    if fake:
        result["fake"] = fake_rounds(5 if quick else 20)
        f = result["fake"]
        rows = [
            [label, f[key]["n"], ms(f[key]["p50"]), ms(f[key]["min"]), ms(f[key]["max"])]
            for label, key in (
                ("CLI  corral instance add --no-start", "cli_add_s"),
                ("CLI  corral instance start", "cli_start_s"),
                ("CLI  add + start", "cli_add_plus_start_s"),
                ("CLI  start-up only (corral daemons status)", "cli_startup_daemons_status_s"),
                ("API  create job, submit -> success", "api_add_s"),
                ("API  startup job, submit -> success", "api_start_s"),
                ("API  add + start", "api_add_plus_start_s"),
            )
        ]
        print_table(
            "instance_start (a): fake hypervisor, noop OS, 64 MiB file disk, no NIC",
            ["measure", "N", "median", "min", "max"],
            rows,
        )
    if kvm:
        result["kvm"] = kvm_rounds(2 if quick else 5, warmup=not quick)
        k = result["kvm"]
        rows = [
            [label, k[key]["n"], secs(k[key]["p50"]), secs(k[key]["min"]), secs(k[key]["max"])]
            for label, key in (
                ("Corral: corral instance start -> CORRAL-GUEST-UP", "corral_to_guest_up_s"),
                ("  (corral instance start returned)", "corral_cli_returned_s"),
                ("  (guest's own uptime at the line)", "corral_guest_uptime_at_up_s"),
                ("raw qemu-system-x86_64, same argv -> CORRAL-GUEST-UP", "raw_to_guest_up_s"),
                ("  (qemu -daemonize returned)", "raw_launch_returned_s"),
                ("  (guest's own uptime at the line)", "raw_guest_uptime_at_up_s"),
            )
        ]
        print_table(
            f"instance_start (b): KVM driver ({k['accel']}), busybox OS, 256 MiB, 1 vCPU; "
            "interleaved rounds, one guest at a time",
            ["measure", "N", "median", "min", "max"],
            rows,
        )
        print(
            f"ratio Corral / raw QEMU: {k['ratio_of_medians']:.3f} (ratio of medians), "
            f"{k['median_of_round_ratios']:.3f} (median of per-round ratios)"
        )
    print(f"results: {write_results(NAME, result)}")
    return result

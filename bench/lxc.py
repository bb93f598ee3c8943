"""LXC containers: add + start, stop, and Corral's overhead against raw lxc-start / lxc-stop.

A real single-host cluster (``corral-noded`` + ``corral-master``) with the ``lxc`` hypervisor
and the built-in ``busybox`` OS (64 MiB file disk, 128 MiB, no NIC).

* **add + start**: ``corral instance add -H lxc -o busybox`` (disk, OS install, start; one
  CLI call) until the container's console log shows ``CORRAL-GUEST-UP``.
* **start / stop through Corral**: ``corral instance start`` until ``CORRAL-GUEST-UP``;
  ``corral instance stop`` until the command returns (the container is gone, its rootfs
  unmounted and its loop device detached).
* **the CLI + job floor**, measured in the same rounds: ``corral instance start`` of the
  container while it already runs and ``corral instance stop`` while it is already stopped
  (the same CLI process, job, master op and node RPC, one ``lxc-info``; no container work).
  Start/stop minus the floor is what the LXC driver itself adds on top of the job path.
* **raw LXC on the same container**: the disk attached (``losetup``) and mounted by the
  benchmark, the **same lxc.conf** the driver generated (captured while Corral ran it, with
  the console/log paths moved to a scratch directory), ``lxc-start -d`` until
  ``CORRAL-GUEST-UP``; ``lxc-stop`` until it returns. Mount and loop setup are outside the
  raw timings (they are part of Corral's).

Rounds alternate Corral and raw; reported are medians and the Corral/raw ratios.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from bench.harness import BenchCluster, ms, print_table, summary, write_results
from corral.common import runcmd
from corral.hypervisor.lxc import mounts

NAME = "lxc"
UP = "CORRAL-GUEST-UP"
TIMEOUT = 60.0


def _wait_text(path: str, text: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), open(path, errors="replace") as fh:
            if text in fh.read():
                return
        time.sleep(0.005)
    raise RuntimeError(f"{text!r} did not appear in {path} within {timeout:g}s")


def _cleanup_root(root: str) -> None:
    """Kill every container of the root and undo its mounts and loop devices."""
    lxcpath = os.path.join(root, "run/corral/hv/lxc")
    for path in (lxcpath, os.path.join(root, "raw")):
        if os.path.isdir(path):
            for name in os.listdir(path):
                runcmd.run(["lxc-stop", "-P", path, "-n", name, "-k"], timeout=30, check=False)
    for mp in mounts.mounts_under(mounts.read_mountinfo(), root):
        runcmd.run(["umount", "-l", mp], timeout=30, check=False)
    listing = runcmd.run(["losetup", "--list", "--json"], timeout=30, check=False).stdout
    for dev, back in mounts.parse_losetup_json(listing).items():
        if back.startswith(root):
            runcmd.run(["losetup", "-d", dev], timeout=30, check=False)


def run_bench(rounds: int) -> dict[str, Any]:
    """Add one container, then ``rounds`` x (Corral start/stop, raw start/stop)."""
    add: list[float] = []
    c_start: list[float] = []
    c_stop: list[float] = []
    r_start: list[float] = []
    r_stop: list[float] = []
    f_start: list[float] = []
    f_stop: list[float] = []
    cluster = BenchCluster.create(hypervisors=["lxc"], kernel_cache=True)
    root = cluster.root
    try:
        paths = cluster.paths
        console = os.path.join(paths.log_dir, "lxc", "ct1.console.log")
        t0 = time.perf_counter()
        cluster.cli(
            "instance", "add", "-H", "lxc", "-t", "file", "--disk", "0:size=64M",
            "-o", "busybox", "-B", "maxmem=128M,minmem=128M,vcpus=1", "--no-nics", "ct1",
        )  # fmt: skip
        _wait_text(console, UP)
        add.append(time.perf_counter() - t0)
        lxcpath = paths.hv_run_dir("lxc")
        with open(os.path.join(lxcpath, "ct1", "config"), encoding="utf-8") as fh:
            conf = fh.read()
        cluster.cli("instance", "stop", "ct1")
        disk = _find_disk(root)
        raw = os.path.join(root, "raw")
        scratch = tempfile.mkdtemp(prefix="lxclog-", dir=root)
        rootfs = os.path.join(raw, "ct1", "rootfs")
        os.makedirs(rootfs)
        raw_console = os.path.join(scratch, "console.log")
        raw_conf = os.path.join(raw, "ct1", "config")
        with open(raw_conf, "w", encoding="utf-8") as fh:
            for line in conf.splitlines():
                key = line.split("=", 1)[0].strip()
                if key == "lxc.rootfs.path":
                    line = f"lxc.rootfs.path = dir:{rootfs}"
                elif key == "lxc.console.logfile":
                    line = f"lxc.console.logfile = {raw_console}"
                elif key == "lxc.log.file":
                    line = f"lxc.log.file = {os.path.join(scratch, 'lxc.log')}"
                fh.write(line + "\n")
        for i in range(rounds):
            for order in ("corral", "raw") if i % 2 == 0 else ("raw", "corral"):
                if order == "corral":
                    t0 = time.perf_counter()
                    cluster.cli("instance", "start", "ct1")
                    _wait_text(console, UP)
                    c_start.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    cluster.cli("instance", "start", "ct1")  # already runs: the floor
                    f_start.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    cluster.cli("instance", "stop", "ct1")
                    c_stop.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    cluster.cli("instance", "stop", "ct1")  # already stopped: the floor
                    f_stop.append(time.perf_counter() - t0)
                else:
                    loop = mounts.attach_loop(runcmd.run, disk)
                    try:
                        mounts.mount(runcmd.run, loop, rootfs)
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(raw_console)
                        t0 = time.perf_counter()
                        runcmd.run(
                            ["lxc-start", "-P", raw, "-n", "ct1", "-f", raw_conf, "-d"], timeout=60
                        )
                        _wait_text(raw_console, UP)
                        r_start.append(time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        runcmd.run(["lxc-stop", "-P", raw, "-n", "ct1", "-t", "30"], timeout=60)
                        r_stop.append(time.perf_counter() - t0)
                    finally:
                        mounts.unmount_tree(runcmd.run, rootfs)
                        mounts.detach_loop(runcmd.run, loop)
        cluster.cli("instance", "remove", "-f", "ct1")
    finally:
        _cleanup_root(root)
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    return {
        "rounds": rounds,
        "add_plus_start_s": summary(add),
        "corral_start_s": summary(c_start),
        "corral_stop_s": summary(c_stop),
        "raw_lxc_start_s": summary(r_start),
        "raw_lxc_stop_s": summary(r_stop),
        "cli_job_floor_start_s": summary(f_start),
        "cli_job_floor_stop_s": summary(f_stop),
        # paired per round (the floor runs right after the real command), then the median:
        # far less noisy than a difference of medians on a loaded machine
        "driver_start_over_floor_s": med(c - f for c, f in zip(c_start, f_start, strict=True)),
        "driver_stop_over_floor_s": med(c - f for c, f in zip(c_stop, f_stop, strict=True)),
        "start_ratio": med(c_start) / med(r_start),
        "stop_ratio": med(c_stop) / med(r_stop),
    }


def _find_disk(root: str) -> str:
    """The instance's disk file (the only file of 64 MiB under the cluster's disk dir)."""
    for d, _, files in os.walk(root):
        if "srv/corral/disks" not in d:
            continue
        for f in files:
            path = os.path.join(d, f)
            if os.path.getsize(path) == 64 << 20:
                return path
    raise RuntimeError("the instance's disk file was not found")


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print its table, write bench/results/lxc.json."""
    rounds = 2 if quick else 6
    data = run_bench(rounds)
    print_table(
        f"LXC container (busybox, 128 MiB), {rounds} rounds, medians",
        ["what", "Corral", "raw LXC", "ratio"],
        [
            ["add (disk + OS install) + start", ms(data["add_plus_start_s"]["p50"]), "", ""],
            ["start until CORRAL-GUEST-UP", ms(data["corral_start_s"]["p50"]),
             ms(data["raw_lxc_start_s"]["p50"]), f"{data['start_ratio']:.2f}"],
            ["stop (clean)", ms(data["corral_stop_s"]["p50"]),
             ms(data["raw_lxc_stop_s"]["p50"]), f"{data['stop_ratio']:.2f}"],
            ["CLI + job floor: start (already running)", ms(data["cli_job_floor_start_s"]["p50"]),
             "", ""],
            ["CLI + job floor: stop (already stopped)", ms(data["cli_job_floor_stop_s"]["p50"]),
             "", ""],
            ["start minus floor (median of rounds)", ms(data["driver_start_over_floor_s"]),
             ms(data["raw_lxc_start_s"]["p50"]), ""],
            ["stop minus floor (median of rounds)", ms(data["driver_stop_over_floor_s"]),
             ms(data["raw_lxc_stop_s"]["p50"]), ""],
        ],
    )  # fmt: skip
    write_results(NAME, data)
    return data

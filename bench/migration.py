"""Live migration between two node daemons against raw QEMU's ``migrate`` (128 and 512 MiB).

Setup: two real ``corral-noded`` processes in two temporary roots on two ``127.0.x.y``
addresses, certificates from one cluster CA, the caller an :class:`RpcClient` with its own
certificate from that CA (what the master will be). The guest is the busybox test guest
(Debian's cloud kernel + busybox initramfs from ``.cache/busybox/out``, booted from RAM, no
disk, no NIC, 1 vCPU; TCG where KVM is not usable), idle after boot. One guest runs at a
time, plus its destination during a migration.

**Corral** (one sample = one migration, through the node RPCs a cluster migration calls):
``migration_info`` (source) -> ``accept_instance`` (destination QEMU started paused with
``-incoming defer``, then ``migrate-incoming``) -> ``migrate_instance`` (source) ->
``migration_status`` with ``wait`` (long poll until completed) -> ``finalize_migration_dst``
(``cont``) -> ``finalize_migration_src`` (``quit``, run files removed).

**Raw QEMU**: the same two command lines — the destination's argv is exactly what the driver
ran for Corral's destination (``runtime.json`` plus the launch-time ``-S``, event monitor and
``-incoming defer``), with its paths moved to a scratch directory — started by hand with
``-daemonize``; one persistent QMP connection per process (qemu.qmp); ``migrate-incoming``;
the same ``migrate-set-parameters`` (max-bandwidth, downtime-limit from the hvparams'
defaults) and ``migrate``; ``query-migrate`` every 10 ms; ``cont`` on the destination once it
left ``inmigrate``; ``quit`` on the source.

Sampling: rounds of one Corral block and one raw block, each block a fresh boot of the guest
followed by two migrations (there and back); the order within a round alternates, so machine
noise (other work on the shared cores) hits both sides alike.

Figures (medians): **total** = first call until both sides are finalized (source gone,
destination running), split into accept / migrate (until completed) / finalize;
**qemu_total** = QEMU's own ``total-time``; **outside_qemu** = total - qemu_total, what the
flow adds around QEMU's transfer (the cleanest comparison: QEMU's transfer time itself varies
by +-25 % between runs on a busy machine); **qemu_downtime** = ``downtime`` of
``query-migrate``; **guest_downtime** = the destination's ``RESUME`` event minus the source's
``STOP`` event (QEMU's own timestamps, from the event logs of ``hypervisor/kvm/events.py``),
the time the guest really did not run; **resume_wait** = guest - QEMU downtime, the wait for
``cont``. Ratios are Corral / raw (goal: <= 1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from typing import Any

from qemu.qmp import QMPClient

from bench.harness import (
    REPO,
    Reaper,
    kill_pid,
    ms,
    pid_alive,
    print_table,
    read_pid,
    secs,
    summary,
    write_results,
)
from corral.common import daemonize, runcmd
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceSpec, MigrationStatus
from corral.hypervisor.kvm import events
from corral.hypervisor.kvm.cmdline import launch_argv
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.migration import rebase_runtime
from corral.hypervisor.kvm.runtime import InstanceLayout, KvmRuntime
from corral.rpc import calls, tls
from corral.rpc.client import NodeAddress, RpcClient

NAME = "migration"
SIZES = (128, 512)
GUEST = "mig"
BOOT_TIMEOUT = 180.0
MIGRATE_TIMEOUT = 300.0
POLL = 0.01
MIB = 1024 * 1024
KERNEL_OUT = os.path.join(REPO, ".cache", "busybox", "out")
UP = re.compile(rb"CORRAL-GUEST-UP \S+ [0-9.]+\r?\n")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def guest_kernel() -> str:
    """The busybox guest's kernel + initrd directory (built once by prepare-kernel).

    Raises:
        CommandError: the kernel could not be prepared.
    """
    if not (
        os.path.isfile(os.path.join(KERNEL_OUT, "vmlinuz"))
        and os.path.isfile(os.path.join(KERNEL_OUT, "initrd.img"))
    ):
        runcmd.run(
            [
                os.path.join(REPO, "corral/osdefs/busybox/prepare-kernel"),
                "--cache",
                os.path.dirname(KERNEL_OUT),
                "--out",
                KERNEL_OUT,
            ],
            timeout=900,
        )
    return KERNEL_OUT


def guest_spec(kernel: str, memory: int) -> InstanceSpec:
    """The benchmark guest: busybox from RAM, ``memory`` MiB, 1 vCPU, no disk, no NIC."""
    return InstanceSpec(
        name=GUEST,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{GUEST}.bench.corral")),
        hypervisor="kvm",
        hvparams={
            "kernel_path": os.path.join(kernel, "vmlinuz"),
            "initrd_path": os.path.join(kernel, "initrd.img"),
            "root_path": "",
            "kernel_args": f"corral.hostname={GUEST} panic=-1",
        },
        memory=memory,
        min_memory=memory,
        vcpus=1,
    )


def wait_up(path: str, *, start: int = 0, alive: Any = None) -> None:
    """Wait until the serial log at ``path`` shows the guest's boot line after ``start``.

    Raises:
        RuntimeError: not within :data:`BOOT_TIMEOUT` (log tail included).
    """
    deadline = time.monotonic() + BOOT_TIMEOUT
    data = b""
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as fh:
            data = fh.read()
        if UP.search(data, start):
            return
        if alive is not None and not alive():
            break
        time.sleep(0.05)
    raise RuntimeError(f"the guest did not boot ({path}):\n{data[-1500:].decode(errors='replace')}")


def _last_event(path: str, name: str) -> float:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            times = events.event_times(fh.read(), name)
    except OSError:
        times = []
    if not times:
        raise RuntimeError(f"no {name} event in {path}")
    return times[-1]


# --- two node daemons ---------------------------------------------------------------------------


class Node:
    """One node daemon in its own root."""

    def __init__(self, base: str, name: str, host: str, ca: Paths | None) -> None:
        self.name = name
        self.host = host
        self.paths = Paths(os.path.join(base, name))
        self.paths.ensure()
        if ca is None:
            tls.create_ca(self.paths, "bench-migration")
        tls.issue_node_cert(self.paths, name, [host], ca=ca)
        self.port = _free_port(host)
        self.kvm = Kvm.from_paths(self.paths)

    @property
    def address(self) -> NodeAddress:
        return NodeAddress(self.name, self.host, self.port)

    def layout(self) -> InstanceLayout:
        return self.kvm._layout(GUEST)

    def start(self, reaper: Reaper) -> None:
        log_file = os.path.join(self.paths.log_dir, "corral-noded.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "corral.node.daemon", "--root", self.paths.root]
        argv += ["--bind", self.host, "--port", str(self.port), "--foreground"]
        argv += ["--log-file", log_file]
        pid = daemonize.start_daemon(
            argv, self.paths.pid_file("corral-noded"), log_file + ".out", env=env
        )
        reaper.add(pid)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            daemonize.stop_daemon(self.paths.pid_file("corral-noded"), 20.0)


class Pair:
    """Two node daemons and the caller's certificate, under one temporary base directory."""

    def __init__(self) -> None:
        # NOTE: short base under /tmp: QEMU's UNIX socket paths must stay under 108 bytes.
        self.base = tempfile.mkdtemp(prefix="crlbm-", dir="/tmp")
        self.reaper = Reaper(self.base)
        third = random.randint(1, 250)
        self.a = Node(self.base, "a", f"127.0.{third}.{random.randint(2, 120)}", None)
        self.b = Node(self.base, "b", f"127.0.{third}.{random.randint(121, 250)}", self.a.paths)
        self.caller = Paths(os.path.join(self.base, "m"))
        self.caller.ensure()
        tls.issue_node_cert(self.caller, "master", ["127.0.0.1"], ca=self.a.paths)

    def __enter__(self) -> Pair:
        try:
            self.a.start(self.reaper)
            self.b.start(self.reaper)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def track(self, pid: int | None) -> None:
        if pid is not None:
            self.reaper.add(pid)

    def owned_qemu(self) -> list[int]:
        pids = []
        for dirpath, _dirs, files in os.walk(self.base):
            if "qemu.pid" in files:
                pid = read_pid(os.path.join(dirpath, "qemu.pid"))
                if pid is not None and pid_alive(pid):
                    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
                        if os.fsencode(self.base) in fh.read():
                            pids.append(pid)
        return pids

    def close(self) -> None:
        for node in (self.a, self.b):
            node.stop()
        for pid in self.owned_qemu():
            kill_pid(pid, grace=0.5)
        self.reaper.close()
        shutil.rmtree(self.base, ignore_errors=True)


# --- Corral -------------------------------------------------------------------------------------


async def corral_samples(
    pair: Pair, spec: InstanceSpec, n: int
) -> tuple[list[dict[str, float]], KvmRuntime]:
    """``n`` migrations back and forth through the node RPCs; the samples and the runtime of
    the first destination (what the raw runs replay)."""
    samples: list[dict[str, float]] = []
    dest_runtime: KvmRuntime | None = None
    async with RpcClient.from_paths(pair.caller) as client:
        src, dst = pair.a, pair.b
        for node in (src, dst):  # not timed: the daemons load the KVM driver on first use
            await client.call(
                node.address, calls.INSTANCE_LIST, calls.InstanceListRequest(hypervisors=["kvm"])
            )
        await client.call(
            src.address, calls.INSTANCE_START, calls.InstanceStartRequest(instance=spec, disks=[])
        )
        pair.track(read_pid(src.layout().pidfile))
        wait_up(src.layout().serial_log)
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                info = await client.call(
                    src.address,
                    calls.MIGRATION_INFO,
                    calls.MigrationInfoRequest(name=GUEST, hypervisor="kvm"),
                )
                port = _free_port(dst.host)
                await client.call(
                    dst.address,
                    calls.ACCEPT_INSTANCE,
                    calls.AcceptInstanceRequest(
                        instance=spec, disks=[], info=info.info, listen_host=dst.host, port=port
                    ),
                )
                t_accepted = time.perf_counter()
                pair.track(read_pid(dst.layout().pidfile))
                if dest_runtime is None:
                    with open(dst.layout().runtime_file, encoding="utf-8") as fh:
                        dest_runtime = KvmRuntime.from_dict(json.load(fh))
                await client.call(
                    src.address,
                    calls.MIGRATE_INSTANCE,
                    calls.MigrateInstanceRequest(
                        name=GUEST, hypervisor="kvm", target_host=dst.host, port=port, live=True
                    ),
                )
                status = MigrationStatus(status="active")
                deadline = time.monotonic() + MIGRATE_TIMEOUT
                while status.status not in ("completed", "failed", "cancelled"):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"migration did not finish: {status}")
                    status = (
                        await client.call(
                            src.address,
                            calls.MIGRATION_STATUS,
                            calls.MigrationStatusRequest(name=GUEST, hypervisor="kvm", wait=30),
                        )
                    ).status
                if status.status != "completed":
                    raise RuntimeError(f"migration {status.status}: {status.error}")
                t_completed = time.perf_counter()
                stop_ts = _last_event(src.layout().events_log, "STOP")
                await client.call(
                    dst.address,
                    calls.FINALIZE_MIGRATION_DST,
                    calls.FinalizeMigrationDstRequest(instance=spec, success=True),
                )
                # not timed: QEMU's figures (right at completion it has not computed them)
                t_pause = time.perf_counter()
                status = (
                    await client.call(
                        src.address,
                        calls.MIGRATION_STATUS,
                        calls.MigrationStatusRequest(name=GUEST, hypervisor="kvm"),
                    )
                ).status
                untimed = time.perf_counter() - t_pause
                await client.call(
                    src.address,
                    calls.FINALIZE_MIGRATION_SRC,
                    calls.FinalizeMigrationSrcRequest(name=GUEST, hypervisor="kvm", success=True),
                )
                t_end = time.perf_counter() - untimed
                resume_ts = _last_event(dst.layout().events_log, "RESUME")
                samples.append(
                    {
                        "total": t_end - t0,
                        "accept": t_accepted - t0,
                        "migrate": t_completed - t_accepted,
                        "finalize": t_end - t_completed,
                        "qemu_total": (status.total_time_ms or 0) / 1000,
                        "qemu_downtime": (status.downtime_ms or 0) / 1000,
                        "guest_downtime": resume_ts - stop_ts,
                        "transferred_mib": status.transferred / MIB,
                    }
                )
                _derive(samples[-1])
                src, dst = dst, src
        finally:
            with contextlib.suppress(Exception):
                await client.call(
                    src.address,
                    calls.INSTANCE_SHUTDOWN,
                    calls.InstanceShutdownRequest(name=GUEST, hypervisor="kvm", timeout=0),
                )
    assert dest_runtime is not None
    return samples, dest_runtime


# --- raw QEMU -----------------------------------------------------------------------------------


class RawQemu:
    """A QEMU started by hand from a runtime's argv (moved to a scratch layout)."""

    def __init__(self, runtime: KvmRuntime, src: InstanceLayout, scratch: str, pair: Pair) -> None:
        self.layout = InstanceLayout(
            run_dir=os.path.join(scratch, "run"), log_dir=os.path.join(scratch, "log"), name=GUEST
        )
        self.argv = rebase_runtime(runtime, src, self.layout, []).argv
        self.pair = pair
        self.qmp: QMPClient | None = None
        self.pid: int | None = None

    async def launch(self, *, incoming: bool) -> None:
        """Run QEMU (``-daemonize``) and connect to its QMP."""
        shutil.rmtree(self.layout.dir, ignore_errors=True)
        os.makedirs(self.layout.dir, mode=0o700)
        os.makedirs(self.layout.log_dir, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.layout.serial_log)
        events.prepare(self.layout)
        argv = launch_argv(self.argv, paused=incoming) + events.event_monitor_argv(self.layout)
        if incoming:
            argv += ["-incoming", "defer"]
        await asyncio.to_thread(runcmd.run, argv, timeout=60)
        self.pid = read_pid(self.layout.pidfile)
        self.pair.track(self.pid)
        events.enable(self.layout)
        self.qmp = QMPClient(GUEST)
        await self.qmp.connect(self.layout.qmp_socket)

    async def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        assert self.qmp is not None
        return await self.qmp.execute(name, args)

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            await self.cmd("quit")
        with contextlib.suppress(Exception):
            assert self.qmp is not None
            await self.qmp.disconnect()
        deadline = time.monotonic() + 10
        while self.pid is not None and pid_alive(self.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)


async def raw_samples(
    pair: Pair, runtime: KvmRuntime, src_layout: InstanceLayout, n: int
) -> list[dict[str, float]]:
    """``n`` hand-made migrations ping-ponging between two scratch directories."""
    hv = runtime.hvparams
    params = {
        "max-bandwidth": int(hv.get("migration_bandwidth", 128)) * MIB,
        "downtime-limit": int(hv.get("migration_downtime", 300)),
    }
    scratch = [os.path.join(pair.base, "rx"), os.path.join(pair.base, "ry")]
    src = RawQemu(runtime, src_layout, scratch[0], pair)
    await src.launch(incoming=False)
    wait_up(src.layout.serial_log, alive=lambda: src.pid is not None and pid_alive(src.pid))
    samples: list[dict[str, float]] = []
    side = 1
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            dst = RawQemu(runtime, src_layout, scratch[side], pair)
            await dst.launch(incoming=True)
            port = _free_port("127.0.0.1")
            await dst.cmd("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
            t_accepted = time.perf_counter()
            await src.cmd("migrate-set-parameters", params)
            await src.cmd("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
            deadline = time.monotonic() + MIGRATE_TIMEOUT
            while True:
                st = await src.cmd("query-migrate")
                if st.get("status") in ("completed", "failed", "cancelled"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"raw migration did not finish: {st}")
                await asyncio.sleep(POLL)
            if st["status"] != "completed":
                raise RuntimeError(f"raw migration {st['status']}: {st.get('error-desc')}")
            t_completed = time.perf_counter()
            while (await dst.cmd("query-status"))["status"] == "inmigrate":
                await asyncio.sleep(POLL)
            await dst.cmd("cont")
            t_pause = time.perf_counter()  # not timed, as for Corral: QEMU's final figures
            st = await src.cmd("query-migrate")
            untimed = time.perf_counter() - t_pause
            await src.quit()
            t_end = time.perf_counter() - untimed
            stop_ts = _last_event(src.layout.events_log, "STOP")
            resume_ts = _last_event(dst.layout.events_log, "RESUME")
            samples.append(
                {
                    "total": t_end - t0,
                    "accept": t_accepted - t0,
                    "migrate": t_completed - t_accepted,
                    "finalize": t_end - t_completed,
                    "qemu_total": int(st.get("total-time", 0)) / 1000,
                    "qemu_downtime": int(st.get("downtime", 0)) / 1000,
                    "guest_downtime": resume_ts - stop_ts,
                    "transferred_mib": int(st.get("ram", {}).get("transferred", 0)) / MIB,
                }
            )
            _derive(samples[-1])
            src, side = dst, 1 - side
    finally:
        await src.quit()
    return samples


# --- the benchmark ------------------------------------------------------------------------------


def _derive(sample: dict[str, float]) -> None:
    """Add the parts outside QEMU's own migration (what the two flows really differ in)."""
    sample["outside_qemu"] = sample["total"] - sample["qemu_total"]
    sample["resume_wait"] = sample["guest_downtime"] - sample["qemu_downtime"]


KEYS = (
    "total",
    "accept",
    "migrate",
    "finalize",
    "qemu_total",
    "outside_qemu",
    "qemu_downtime",
    "guest_downtime",
    "resume_wait",
)


def _medians(samples: list[dict[str, float]]) -> dict[str, Any]:
    return {k: summary([s[k] for s in samples]) for k in (*KEYS, "transferred_mib")}


def run_size(memory: int, rounds: int, per_block: int) -> dict[str, Any]:
    """Corral's and raw QEMU's migrations of a ``memory`` MiB guest.

    ``rounds`` rounds of one Corral block and one raw block (``per_block`` migrations each,
    a fresh boot per block), alternating which goes first, so machine noise hits both.
    """
    spec = guest_spec(guest_kernel(), memory)
    corral: list[dict[str, float]] = []
    raw: list[dict[str, float]] = []
    runtime: KvmRuntime | None = None
    with Pair() as pair:
        for r in range(rounds):
            for side in ("corral", "raw") if r % 2 == 0 else ("raw", "corral"):
                if side == "corral":
                    samples, first = asyncio.run(corral_samples(pair, spec, per_block))
                    corral += samples
                    runtime = runtime or first
                else:
                    assert runtime is not None  # round 0 runs Corral first
                    raw += asyncio.run(raw_samples(pair, runtime, pair.b.layout(), per_block))
    assert runtime is not None
    c, r_ = _medians(corral), _medians(raw)
    return {
        "memory_mib": memory,
        "samples": len(corral),
        "corral": c,
        "raw": r_,
        "ratio_total": c["total"]["p50"] / r_["total"]["p50"],
        "ratio_qemu_downtime": c["qemu_downtime"]["p50"] / max(r_["qemu_downtime"]["p50"], 1e-6),
        "ratio_guest_downtime": c["guest_downtime"]["p50"] / r_["guest_downtime"]["p50"],
        "bandwidth_mib_s": runtime.hvparams.get("migration_bandwidth"),
        "downtime_limit_ms": runtime.hvparams.get("migration_downtime"),
    }


def run(quick: bool) -> dict[str, Any]:
    """Run the benchmark (4 samples per side and size with ``quick``, else 12); write results."""
    rounds = 2 if quick else 6
    results = {str(size): run_size(size, rounds, 2) for size in SIZES}
    n = 2 * rounds
    rows = []
    for size, res in results.items():
        c, r = res["corral"], res["raw"]
        for key, fmt in (
            ("total", secs),
            ("accept", secs),
            ("migrate", secs),
            ("finalize", ms),
            ("qemu_total", secs),
            ("outside_qemu", ms),
            ("qemu_downtime", ms),
            ("guest_downtime", ms),
            ("resume_wait", ms),
        ):
            ratio = c[key]["p50"] / r[key]["p50"] if r[key]["p50"] else float("nan")
            rows.append(
                [f"{size} MiB", key, fmt(c[key]["p50"]), fmt(r[key]["p50"]), f"{ratio:.2f}"]
            )
    print_table(
        f"live migration between two node daemons, medians of {n} (TCG guest, idle)",
        ["guest", "phase", "Corral", "raw QEMU", "Corral/raw"],
        rows,
    )
    path = write_results(NAME, {"quick": quick, "sizes": results})
    print(f"results: {path}")
    return results

"""Hotplug and balloon latency of the KVM driver, seen from inside the guest.

One single-host cluster of real daemons (``bench/harness.py``) runs one busybox-OS instance
(64 MiB disk, 256 MiB RAM, ``minmem`` 128 MiB, 1 vCPU, no NIC; TCG where KVM is not usable).
Its guest init prints ``CORRAL-DEV blk=[...] net=[...]`` on the serial console whenever a
block or network device appears or goes (it polls every 0.1 s, so each "visible" figure
includes up to 0.1 s, 0.05 s on average, of guest polling; the serial log is read every 5 ms).

Per round, one guest, one operation at a time:

* **disk, raw QMP**: ``blockdev-add`` (not timed), then ``device_add`` of a virtio-blk-pci on a
  free ``pci.0`` slot until the guest reports the new ``vdb`` — QEMU plus the guest alone.
* **disk, driver**: :meth:`Kvm.hotplug_add_disk` (block nodes, slot choice, ``device_add``,
  runtime update) until the guest reports it; and :meth:`Kvm.hotplug_remove_disk` until the
  guest no longer lists it (the guest unbinds the device before QEMU's ``DEVICE_DELETED``) and
  until the call returned (after the event, the nodes freed).
* **NIC, driver**: :meth:`Kvm.hotplug_add_nic` of a NIC without network backend until ``eth0``
  is listed, and its removal.
* **disk, job**: ``instance modify --disk add:size=64M`` through the API (:class:`CorralClient`
  on the master's UNIX socket: disk created on the node, then hot-plugged) until the guest
  lists the disk, and until the job reports success; then ``--disk 1:remove`` until the guest
  no longer lists it.
* **balloon**: :meth:`Kvm.balloon` between 256 and 160 MiB (it returns once ``query-balloon``
  reports the target), raw QMP ``balloon`` + polling ``query-balloon`` every 10 ms with the same
  tolerance, and the ``runtime_mem`` job through the API (submit -> success).

The driver is used in-process on the cluster's own root (its per-instance lock serialises it
with the node daemon, exactly like a second node-daemon thread). Medians of N rounds.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bench.harness import BenchCluster, ms, print_table, read_pid, summary, write_results
from corral.hypervisor.base import AttachedDisk, NicSpec
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.monitor import Monitor, QmpSession

NAME = "hotplug"
BOOT_TIMEOUT = 300.0
DEV_TIMEOUT = 60.0
POLL = 0.005
MIB = 1024 * 1024
DEV_LINE = re.compile(rb"CORRAL-DEV blk=\[([^\]]*)\] net=\[([^\]]*)\]\r?\n")

T = TypeVar("T")


class DevWatch:
    """Follows the serial log for the guest's ``CORRAL-DEV`` lines."""

    def __init__(self, path: str) -> None:
        self.path = path

    def size(self) -> int:
        """The log's current length (start offset of a measurement)."""
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def wait(self, *, after: int, blk: str, net: str | None = None) -> float:
        """perf_counter when a report with exactly these block (and net) devices appeared.

        Raises:
            RuntimeError: no such report within DEV_TIMEOUT (log tail included).
        """
        deadline = time.perf_counter() + DEV_TIMEOUT
        while True:
            with open(self.path, "rb") as fh:
                fh.seek(after)
                text = fh.read()
            for m in DEV_LINE.finditer(text):
                if m.group(1).decode() == blk and (net is None or m.group(2).decode() == net):
                    return time.perf_counter()
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"no 'CORRAL-DEV blk=[{blk}]' in {self.path}; tail:\n"
                    f"{text[-1500:].decode('utf-8', 'replace')}"
                )
            time.sleep(POLL)


class Background:
    """Runs a call in a thread so the guest can be watched meanwhile."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self._error: list[BaseException] = []
        self._end: list[float] = []

        def body() -> None:
            try:
                fn()
            except BaseException as exc:
                self._error.append(exc)
            self._end.append(time.perf_counter())

        self._thread = threading.Thread(target=body, daemon=True)
        self._thread.start()

    def join(self) -> float:
        """perf_counter when the call returned.

        Raises:
            BaseException: what the call raised.
        """
        self._thread.join(DEV_TIMEOUT)
        if self._error:
            raise self._error[0]
        if not self._end:
            raise RuntimeError(f"the call did not return within {DEV_TIMEOUT}s")
        return self._end[0]


class HotplugBench:
    """The cluster, the running instance and the measurements."""

    def __init__(self, cluster: BenchCluster) -> None:
        self.cluster = cluster
        self.kvm = Kvm.from_paths(cluster.paths)
        self.layout = self.kvm._layout("vm1")
        self.watch = DevWatch(self.layout.serial_log)
        self.images = os.path.join(cluster.root, "bench-images")
        os.makedirs(self.images, exist_ok=True)
        self.serial = 0

    def qmp(self, action: Callable[[QmpSession], Awaitable[T]]) -> T:
        return Monitor(self.layout.qmp_socket, name="vm1", timeout=30).call(action)

    def start(self) -> None:
        self.cluster.cli(
            "instance", "add", "-t", "file", "--disk", "0:size=64M", "-o", "busybox",
            "-B", "maxmem=256M,minmem=128M,vcpus=1", "--no-nics", "vm1", timeout=900,
        )  # fmt: skip
        pid = read_pid(self.layout.pidfile)
        if pid is not None:
            self.cluster.track_pid(pid)
        self.watch.wait(after=0, blk="vda", net="lo")

    def image(self) -> AttachedDisk:
        self.serial += 1
        path = os.path.join(self.images, f"img{self.serial}")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", path, "64M"], check=True)
        return AttachedDisk(index=1, uuid=f"bench-{self.serial:04d}", path=path, size=64)

    # --- the measurements ---------------------------------------------------------------------

    def raw_disk(self) -> float:
        disk = self.image()
        file_node, fmt_node, dev = f"raw{self.serial}-f", f"raw{self.serial}-n", f"raw{self.serial}"

        async def prepare(q: QmpSession) -> int:
            await q.blockdev_add({"driver": "file", "node-name": file_node, "filename": disk.path})
            await q.blockdev_add({"driver": "raw", "node-name": fmt_node, "file": file_node})
            used = {d.slot for d in await q.query_pci() if d.bus == 0}
            return min(set(range(3, 32)) - used)

        slot = self.qmp(prepare)
        mark = self.watch.size()
        t0 = time.perf_counter()
        self.qmp(
            lambda q: q.device_add(
                {"driver": "virtio-blk-pci", "id": dev, "drive": fmt_node, "addr": hex(slot)}
            )
        )
        seen = self.watch.wait(after=mark, blk="vda vdb")

        async def cleanup(q: QmpSession) -> None:
            await q.device_del(dev, timeout=60)
            await q.blockdev_del(fmt_node)
            await q.blockdev_del(file_node)

        mark = self.watch.size()
        self.qmp(cleanup)
        self.watch.wait(after=mark, blk="vda")
        return seen - t0

    def driver_disk(self) -> dict[str, float]:
        disk = self.image()
        mark = self.watch.size()
        t0 = time.perf_counter()
        self.kvm.hotplug_add_disk("vm1", disk)
        returned = time.perf_counter()
        seen = self.watch.wait(after=mark, blk="vda vdb")
        mark = self.watch.size()
        t1 = time.perf_counter()
        call = Background(lambda: self.kvm.hotplug_remove_disk("vm1", 1, disk.uuid))
        gone = self.watch.wait(after=mark, blk="vda")  # the guest lets go before the event
        removed = call.join()
        return {
            "add_to_visible": seen - t0,
            "add_call": returned - t0,
            "remove_call": removed - t1,
            "remove_to_gone": gone - t1,
        }

    def driver_nic(self) -> dict[str, float]:
        nic = NicSpec(index=0, uuid=f"bench-nic-{self.serial}", mac="aa:00:00:be:00:01")
        self.serial += 1
        mark = self.watch.size()
        t0 = time.perf_counter()
        self.kvm.hotplug_add_nic("vm1", nic)
        seen = self.watch.wait(after=mark, blk="vda", net="eth0 lo")
        mark = self.watch.size()
        t1 = time.perf_counter()
        call = Background(lambda: self.kvm.hotplug_remove_nic("vm1", 0, nic.uuid))
        gone = self.watch.wait(after=mark, blk="vda", net="lo")
        removed = call.join()
        return {
            "add_to_visible": seen - t0,
            "remove_to_gone": gone - t1,
            "remove_call": removed - t1,
        }

    def job_disk(self) -> dict[str, float]:
        client = self.cluster.client()
        mark = self.watch.size()
        t0 = time.perf_counter()
        job_id = client.modify_instance("vm1", disks=[["add", -1, {"size": 64}]])
        seen = self.watch.wait(after=mark, blk="vda vdb")
        status = self.cluster.wait_job(client, job_id)
        done = time.perf_counter()
        if status != "success":
            raise RuntimeError(f"add-disk job {job_id} ended {status}")
        mark = self.watch.size()
        t1 = time.perf_counter()
        job_id = client.modify_instance("vm1", disks=[["remove", 1, {}]])
        gone = self.watch.wait(after=mark, blk="vda")
        status = self.cluster.wait_job(client, job_id)
        if status != "success":
            raise RuntimeError(f"remove-disk job {job_id} ended {status}")
        return {"submit_to_visible": seen - t0, "submit_to_success": done - t0,
                "remove_submit_to_gone": gone - t1}  # fmt: skip

    def balloon(self, target: int) -> dict[str, float]:
        t0 = time.perf_counter()
        self.kvm.balloon("vm1", target)
        driver = time.perf_counter() - t0
        back = 256 if target != 256 else 160

        async def raw(q: QmpSession) -> float:
            goal = back * MIB
            tolerance = max(MIB, goal // 200)
            start = time.perf_counter()
            await q.balloon(goal)
            while abs(await q.query_balloon() - goal) > tolerance:
                if time.perf_counter() - start > DEV_TIMEOUT:
                    raise RuntimeError(f"raw balloon to {back} MiB did not finish")
                await asyncio.sleep(0.01)
            return time.perf_counter() - start

        raw_s = self.qmp(raw)
        client = self.cluster.client()
        t1 = time.perf_counter()
        job_id = client.modify_instance("vm1", runtime_mem=target)
        status = self.cluster.wait_job(client, job_id)
        job = time.perf_counter() - t1
        if status != "success":
            raise RuntimeError(f"runtime_mem job {job_id} ended {status}")
        return {"driver": driver, "raw_qmp": raw_s, "job": job}


def run(quick: bool) -> dict[str, Any]:
    """Run the rounds; print the table; write ``bench/results/hotplug.json``.

    Raises:
        RuntimeError: QEMU is missing or a guest/device did not show up.
    """
    if shutil.which("qemu-system-x86_64") is None:
        raise RuntimeError("qemu-system-x86_64 is missing (make deps installs it)")
    rounds = 3 if quick else 7
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    with BenchCluster.create(hypervisors=["kvm"], noop_os=False, kernel_cache=True) as cluster:
        bench = HotplugBench(cluster)
        bench.start()
        bench.driver_disk()  # warm-up (imports, first QMP connections)
        for r in range(rounds):
            add("disk_raw_device_add_to_visible", bench.raw_disk())
            for key, value in bench.driver_disk().items():
                add(f"disk_driver_{key}", value)
            for key, value in bench.driver_nic().items():
                add(f"nic_driver_{key}", value)
            for key, value in bench.job_disk().items():
                add(f"disk_job_{key}", value)
            for target in (160, 256):
                for key, value in bench.balloon(target).items():
                    add(f"balloon_{key}", value)
            print(
                f"  round {r + 1}/{rounds}: "
                f"disk raw {ms(samples['disk_raw_device_add_to_visible'][-1])}"
                f", driver {ms(samples['disk_driver_add_to_visible'][-1])}"
                f", job {ms(samples['disk_job_submit_to_visible'][-1])}"
                f", balloon {ms(samples['balloon_driver'][-1])}",
                flush=True,
            )
        accel = bench.kvm.instance_info("vm1")
        accel_name = str(accel.details.get("accel", "?")) if accel else "?"
    result: dict[str, Any] = {
        "quick": quick,
        "rounds": rounds,
        "accel": accel_name,
        "guest_poll_interval_s": 0.1,
        **{key: summary(values) for key, values in samples.items()},
        "samples": samples,
    }
    labels = [
        ("disk: raw QMP device_add -> visible in guest", "disk_raw_device_add_to_visible"),
        ("disk: driver hotplug_add_disk -> visible", "disk_driver_add_to_visible"),
        ("  (hotplug_add_disk returned)", "disk_driver_add_call"),
        ("disk: driver hotplug_remove_disk -> gone in guest", "disk_driver_remove_to_gone"),
        ("  (returned: DEVICE_DELETED, nodes freed)", "disk_driver_remove_call"),
        ("NIC: driver hotplug_add_nic -> visible", "nic_driver_add_to_visible"),
        ("NIC: driver hotplug_remove_nic -> gone", "nic_driver_remove_to_gone"),
        ("  (returned)", "nic_driver_remove_call"),
        ("disk: modify job submitted -> visible", "disk_job_submit_to_visible"),
        ("  (job success)", "disk_job_submit_to_success"),
        ("disk: remove job submitted -> gone", "disk_job_remove_submit_to_gone"),
        ("balloon: driver balloon -> query-balloon at target", "balloon_driver"),
        ("balloon: raw QMP balloon -> query-balloon at target", "balloon_raw_qmp"),
        ("balloon: runtime_mem job submit -> success", "balloon_job"),
    ]
    rows = [
        [label, result[key]["n"], ms(result[key]["p50"]), ms(result[key]["min"]),
         ms(result[key]["max"])]
        for label, key in labels
    ]  # fmt: skip
    print_table(
        f"hotplug: KVM driver ({accel_name}), busybox guest 256 MiB, pc machine; guest polls "
        "its devices every 0.1 s; balloon 256 <-> 160 MiB",
        ["measure", "N", "median", "min", "max"],
        rows,
    )
    print(f"results: {write_results(NAME, result)}")
    return result

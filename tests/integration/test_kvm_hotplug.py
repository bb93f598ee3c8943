"""Hotplug and CPU pinning of the KVM driver against real QEMU guests (pc and q35).

Every check of a device is made from INSIDE the guest: Corral's busybox guest prints
``CORRAL-DEV blk=[...] net=[...]`` on its serial console whenever a block or network device
appears or goes (guest init, corral/osdefs/busybox/prepare-kernel), and commands are typed
into its console shell (``cat /sys/class/net/eth0/carrier``). QEMU's own view is read over
QMP (query-named-block-nodes, query-pci, qom-list) to prove that a removed or failed device
left nothing behind.

Safety as in test_kvm_driver.py: one guest at a time, every QEMU killed by pid in teardown
(and by the session reaper if pytest dies), bridges and images removed, logs kept on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.common.errors import ErrorKind, HypervisorError, ParamError
from corral.common.paths import Paths
from corral.hypervisor.base import AttachedDisk, InstanceSpec, NicSpec
from corral.hypervisor.kvm.cmdline import argv_names_instance, disk_ids
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.monitor import Monitor, QmpSession
from corral.hypervisor.kvm.process import pid_alive, pid_cmdline, read_pidfile
from tests.conftest import require_root, require_tool, unavailable
from tests.integration.harness import LocalCluster

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 90.0
DEV_TIMEOUT = 30.0


class Guest:
    """One test's node root, driver, bridge and the helpers to watch a guest."""

    def __init__(self, root: str, kernel: Path, reaper: Path) -> None:
        self.root = root
        self.kernel = kernel
        self.reaper = reaper
        self.kvm = Kvm.from_paths(Paths(root))
        self.kvm.unplug_timeout = 30.0
        self.bridge = ""

    def spec(
        self,
        name: str,
        machine: str = "pc",
        vcpus: int = 1,
        nics: list[NicSpec] | None = None,
        **hv: object,
    ) -> InstanceSpec:
        params: dict[str, object] = {
            "kernel_path": str(self.kernel / "vmlinuz"),
            "initrd_path": str(self.kernel / "initrd.img"),
            "root_path": "",
            "kernel_args": f"corral.hostname={name} panic=-1",
            "machine_version": machine,
            "shutdown_timeout": 20,
        }
        params.update(hv)
        return InstanceSpec(
            name=name,
            uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.hotplug.test")),
            hypervisor="kvm",
            hvparams=params,
            memory=128,
            min_memory=64,
            vcpus=vcpus,
            nics=nics or [],
        )

    def start(self, spec: InstanceSpec, *, paused: bool = False) -> int:
        try:
            self.kvm.start(spec, [], paused=paused)
        finally:
            pid = read_pidfile(self.kvm._layout(spec.name).pidfile)
            if pid:
                with open(self.reaper, "a") as fh:
                    fh.write(f"{pid}\n")
        return pid or 0

    def serial(self, name: str) -> str:
        try:
            return Path(self.kvm._layout(name).serial_log).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, name: str, pattern: str, *, after: int = 0, timeout: float = DEV_TIMEOUT) -> str:
        """Wait for ``pattern`` in the console output written after offset ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.serial(name)[after:])
            if m:
                return m.group(0)
            time.sleep(0.05)
        raise AssertionError(
            f"{pattern!r} not on the console of {name} within {timeout}s; tail:\n"
            f"{self.serial(name)[-1500:]}"
        )

    def devices(self, name: str) -> str:
        """The guest's last device report (``blk=[...] net=[...]``)."""
        reports = re.findall(r"CORRAL-DEV (blk=\[[^\]]*\] net=\[[^\]]*\])", self.serial(name))
        assert reports, f"no device report from {name}:\n{self.serial(name)[-800:]}"
        return reports[-1]

    def type(self, name: str, line: str, expect: str, *, timeout: float = DEV_TIMEOUT) -> str:
        """Type a shell line into the guest's console; return the output matching ``expect``."""
        start = len(self.serial(name))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.kvm._layout(name).serial_socket)
            s.sendall(line.encode() + b"\r")
            return self.wait(name, expect, after=start, timeout=timeout)

    def qmp(self, name: str, fn: Any) -> Any:
        return Monitor(self.kvm._layout(name).qmp_socket, timeout=10).call(fn)

    def block_nodes(self, name: str) -> set[str]:
        return set(self.qmp(name, QmpSession.query_named_block_nodes))

    def pci_ids(self, name: str) -> set[str]:
        return {d.qdev_id for d in self.qmp(name, QmpSession.query_pci) if d.qdev_id}

    def peripherals(self, name: str) -> set[str]:
        return self.qmp(name, QmpSession.peripheral_ids)

    def runtime(self, name: str) -> dict[str, Any]:
        with open(self.kvm._layout(name).runtime_file) as fh:
            return json.load(fh)

    def image(self, name: str, size: str = "64M") -> str:
        path = os.path.join(self.root, f"{name}.img")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", path, size], check=True)
        return path

    def kill_all(self) -> None:
        run_dir = self.kvm.run_dir
        for name in self.kvm._entries():
            pid = read_pidfile(os.path.join(run_dir, name, "qemu.pid"))
            if pid and pid_alive(pid) and argv_names_instance(pid_cmdline(pid) or [], name):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def guest(
    guest_kernel: Path, guest_reaper: Path, request: pytest.FixtureRequest
) -> Iterator[Guest]:
    require_tool("qemu-img")
    root = tempfile.mkdtemp(prefix="crlh", dir="/tmp")  # short: socket paths < 108 bytes
    failed_before = request.session.testsfailed
    g = Guest(root, guest_kernel, guest_reaper)
    try:
        yield g
    finally:
        g.kill_all()
        for name in g.kvm._entries():  # taps, uids and owners of killed guests
            g.kvm._cleanup_files(g.kvm._layout(name), g.kvm._load(g.kvm._layout(name)))
        if g.bridge:
            subprocess.run(["ip", "link", "del", g.bridge], check=False, timeout=10)
        if request.session.testsfailed > failed_before:
            print(f"\nkept logs of failed test in {root}/var/log/corral/kvm", file=sys.stderr)
            shutil.rmtree(os.path.join(root, "run"), ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


def make_bridge(g: Guest) -> str:
    require_root()
    require_tool("ip")
    g.bridge = f"crlhb{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", g.bridge, "type", "bridge"], check=True, timeout=10)
    return g.bridge


def disk(index: int, path: str, tag: str) -> AttachedDisk:
    return AttachedDisk(
        index=index, uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, tag)), path=path, size=64
    )


# --- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_hotplug_disk_and_nic_seen_from_the_guest(guest: Guest, machine: str) -> None:
    g, name = guest, f"hp{machine}"
    bridge = make_bridge(g)
    g.start(g.spec(name, machine))
    g.wait(name, r"CORRAL-GUEST-UP", timeout=BOOT_TIMEOUT)
    g.wait(name, r"CORRAL-DEV blk=\[\] net=\[lo\]")
    nodes0, pci0 = g.block_nodes(name), g.pci_ids(name)
    free0 = g.runtime(name)["free_ports"]

    # --- a disk: the guest sees /sys/block/vda appear -------------------------------------
    d0 = disk(0, g.image("d0"), f"{name}-d0")
    mark = len(g.serial(name))
    g.kvm.hotplug_add_disk(name, d0)
    g.wait(name, r"CORRAL-DEV blk=\[vda\]", after=mark)
    out = g.type(name, "cat /sys/block/vda/size", r"\n131072\r?\n")
    assert "131072" in out  # 64 MiB in 512-byte sectors
    rt = g.runtime(name)
    (rec,) = rt["disks"]
    assert rec["hotplugged"] and rec["uuid"] == d0.uuid
    assert any(rec["device_id"] in a for a in rt["argv"])  # replayable
    if machine == "pc":
        assert rec["bus"] == "pci.0" and rec["slot"] >= 3
    else:
        assert rec["bus"] == "hotplug0" and rt["free_ports"] == free0[1:]

    # --- a NIC on a bridge: eth0 appears, its tap is on the bridge --------------------------
    nic = NicSpec(index=0, uuid=str(uuid.uuid4()), mac="aa:00:00:5e:00:01", link=bridge)
    mark = len(g.serial(name))
    g.kvm.hotplug_add_nic(name, nic)
    g.wait(name, r"CORRAL-DEV blk=\[vda\] net=\[eth0 lo\]", after=mark)
    tap = g.runtime(name)["nics"][0]["tap"]
    assert os.path.basename(os.readlink(f"/sys/class/net/{tap}/master")) == bridge

    # --- link down/up: the guest's carrier follows ---------------------------------------
    g.type(name, "ip link set eth0 up; echo UP-DONE", r"UP-DONE\r?\n")
    assert "1" in g.type(name, "echo C=$(cat /sys/class/net/eth0/carrier)", r"C=\d")
    g.kvm.set_nic_link(name, 0, nic.uuid, False)
    assert g.type(name, "echo C=$(cat /sys/class/net/eth0/carrier)", r"C=\d") == "C=0"
    assert g.runtime(name)["nics"][0]["link_up"] is False
    g.kvm.set_nic_link(name, 0, nic.uuid, True)
    assert g.type(name, "echo C=$(cat /sys/class/net/eth0/carrier)", r"C=\d") == "C=1"

    # --- a failed hot-add leaves nothing: missing image, then a device id already taken -------
    before = (g.block_nodes(name), g.pci_ids(name), g.runtime(name))
    missing = disk(1, os.path.join(g.root, "no-such.img"), f"{name}-missing")
    with pytest.raises(HypervisorError) as err:
        g.kvm.hotplug_add_disk(name, missing)
    assert "no-such.img" in str(err.value)
    assert (g.block_nodes(name), g.pci_ids(name), g.runtime(name)) == before

    taken = disk(1, g.image("d1"), f"{name}-taken")
    device_id = disk_ids(1, taken.uuid)[0]
    bus = {"bus": g.runtime(name)["free_ports"][1]} if machine == "q35" else {}
    g.qmp(name, lambda q: q.device_add({"driver": "virtio-rng-pci", "id": device_id, **bus}))
    nodes_before, runtime_before = g.block_nodes(name), g.runtime(name)
    with pytest.raises(HypervisorError) as err:
        g.kvm.hotplug_add_disk(name, taken)
    assert "Duplicate device ID" in str(err.value)
    assert g.block_nodes(name) == nodes_before  # the block nodes were deleted again
    assert g.runtime(name) == runtime_before
    g.qmp(name, lambda q: q.device_del(device_id, timeout=30))

    # --- hot-remove: gone in the guest, backends freed -----------------------------------
    mark = len(g.serial(name))
    g.kvm.hotplug_remove_nic(name, 0, nic.uuid)
    g.wait(name, r"CORRAL-DEV blk=\[vda\] net=\[lo\]", after=mark)
    assert not os.path.exists(f"/sys/class/net/{tap}")
    mark = len(g.serial(name))
    g.kvm.hotplug_remove_disk(name, 0, d0.uuid)
    g.wait(name, r"CORRAL-DEV blk=\[\] net=\[lo\]", after=mark)
    assert g.block_nodes(name) == nodes0 and g.pci_ids(name) <= pci0
    assert not {rec["device_id"], rec["node_name"]} & (g.peripherals(name) | g.block_nodes(name))
    rt = g.runtime(name)
    assert rt["disks"] == [] and rt["nics"] == []
    assert not any(rec["device_id"] in a for a in rt["argv"])
    if machine == "q35":
        assert rt["free_ports"] == free0  # the port is free again
    g.kvm.stop(name, timeout=0)


def test_hot_added_devices_survive_a_soft_reboot(guest: Guest) -> None:
    """The runtime's argv includes hot-added devices: a restart from it brings them back."""
    g, name = guest, "hpsr"
    g.start(g.spec(name, "pc"))
    g.wait(name, r"CORRAL-DEV blk=\[\] net=\[lo\]", timeout=BOOT_TIMEOUT)
    d0, d1 = disk(0, g.image("a"), "sr-a"), disk(1, g.image("b"), "sr-b")
    g.kvm.hotplug_add_disk(name, d0)
    g.kvm.hotplug_add_disk(name, d1)
    g.wait(name, r"CORRAL-DEV blk=\[vda vdb\]")
    g.kvm.hotplug_remove_disk(name, 0, d0.uuid)  # the second disk keeps its slot
    g.wait(name, r"CORRAL-DEV blk=\[vdb\]")
    slot = g.runtime(name)["disks"][0]["slot"]
    assert g.runtime(name)["disks"][0]["index"] == 0  # renumbered like the master's list
    g.kvm.reboot(name, hard=False)
    with open(g.reaper, "a") as fh:
        fh.write(f"{read_pidfile(g.kvm._layout(name).pidfile)}\n")
    g.wait(name, r"CORRAL-GUEST-UP", timeout=BOOT_TIMEOUT)
    g.wait(name, r"CORRAL-DEV blk=\[vda\] net=\[lo\]")  # one disk, seen at boot
    pci = {d.qdev_id: d.slot for d in g.qmp(name, QmpSession.query_pci)}
    assert pci[g.runtime(name)["disks"][0]["device_id"]] == slot
    g.kvm.stop(name, timeout=0)


def test_hotplug_refused_for_stopped_instance_and_unsupported_device(guest: Guest) -> None:
    g = guest
    d = disk(0, g.image("x"), "refused")
    with pytest.raises(HypervisorError) as err:
        g.kvm.hotplug_add_disk("stopped1", d)
    assert err.value.kind is ErrorKind.WRONG_STATE and "not running" in str(err.value)
    with pytest.raises(HypervisorError) as err:
        g.kvm.hotplug_remove_nic("stopped1", 0, "")
    assert err.value.kind is ErrorKind.WRONG_STATE

    g.start(g.spec("ide1", "pc", disk_type="ide"), paused=True)
    with pytest.raises(HypervisorError) as err:
        g.kvm.hotplug_add_disk("ide1", d)
    assert err.value.kind is ErrorKind.INVALID and "not supported" in str(err.value)
    with pytest.raises(HypervisorError) as err:
        g.kvm.hotplug_remove_disk("ide1", 3, "")
    assert err.value.kind is ErrorKind.NOT_FOUND
    g.kvm.stop("ide1", timeout=0)


def test_hotplug_into_a_qemu_running_unprivileged(guest: Guest) -> None:
    """security_model=pool: the image is handed to QEMU's uid, the tap is owned by it."""
    g, name = guest, "hpsec"
    bridge = make_bridge(g)
    os.makedirs(Paths(g.root).data_dir, exist_ok=True)
    with open(os.path.join(Paths(g.root).data_dir, "kvm-uid-pool"), "w") as fh:
        fh.write("27101-27102\n")
    pid = g.start(g.spec(name, "pc", security_model="pool"))
    g.wait(name, r"CORRAL-DEV blk=\[\] net=\[lo\]", timeout=BOOT_TIMEOUT)
    uid = g.runtime(name)["security"]["uid"]
    os.chmod(g.root, 0o755)  # mkdtemp made it 0700: QEMU's uid must reach the image in it
    with open(f"/proc/{pid}/status") as fh:
        assert re.search(rf"^Uid:\s+{uid}\s", fh.read(), re.M)
    image = g.image("s0")
    d0 = disk(0, image, "sec-d0")
    g.kvm.hotplug_add_disk(name, d0)
    g.wait(name, r"CORRAL-DEV blk=\[vda\] net=\[lo\]")
    assert os.stat(image).st_uid == uid
    nic = NicSpec(index=0, uuid=str(uuid.uuid4()), mac="aa:00:00:5e:00:02", link=bridge)
    g.kvm.hotplug_add_nic(name, nic)
    g.wait(name, r"CORRAL-DEV blk=\[vda\] net=\[eth0 lo\]")
    g.kvm.hotplug_remove_nic(name, 0, nic.uuid)
    g.kvm.hotplug_remove_disk(name, 0, d0.uuid)
    g.wait(name, r"CORRAL-DEV blk=\[\] net=\[lo\]", after=len(g.serial(name)) - 200)
    assert os.stat(image).st_uid == 0  # given back at once
    g.kvm.stop(name, timeout=0)


def test_chrooted_qemu_takes_a_nic_and_refuses_a_disk(guest: Guest) -> None:
    g, name = guest, "hpchr"
    bridge = make_bridge(g)
    os.makedirs(Paths(g.root).data_dir, exist_ok=True)
    with open(os.path.join(Paths(g.root).data_dir, "kvm-uid-pool"), "w") as fh:
        fh.write("27111-27112\n")
    g.start(g.spec(name, "q35", security_model="pool", use_chroot=True))
    g.wait(name, r"CORRAL-DEV blk=\[\] net=\[lo\]", timeout=BOOT_TIMEOUT)
    before = g.runtime(name)
    with pytest.raises(HypervisorError) as err:
        g.kvm.hotplug_add_disk(name, disk(0, g.image("c0"), "chr-d0"))
    assert err.value.kind is ErrorKind.INVALID and "use_chroot" in str(err.value)
    assert g.runtime(name) == before
    nic = NicSpec(index=0, uuid=str(uuid.uuid4()), mac="aa:00:00:5e:00:03", link=bridge)
    g.kvm.hotplug_add_nic(name, nic)  # the tap is opened by the node and passed to QEMU
    g.wait(name, r"CORRAL-DEV blk=\[\] net=\[eth0 lo\]")
    g.kvm.hotplug_remove_nic(name, 0, nic.uuid)
    g.wait(name, r"CORRAL-DEV blk=\[\] net=\[lo\]", after=len(g.serial(name)) - 100)
    g.kvm.stop(name, timeout=0)


def _cpus_allowed(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/status") as fh:
        m = re.search(r"^Cpus_allowed_list:\s*(\S+)", fh.read(), re.M)
    assert m
    return m.group(1)


def test_cpu_pinning_per_vcpu_and_whole_process(guest: Guest) -> None:
    if (os.cpu_count() or 1) < 2:
        unavailable("needs 2 CPUs")
    g, name = guest, "pin1"
    pid = g.start(g.spec(name, "pc", vcpus=2, cpu_mask="0:1"), paused=True)
    vcpus = {c.cpu_index: c.thread_id for c in g.qmp(name, QmpSession.query_cpus_fast)}
    assert len(set(vcpus.values())) == 2, vcpus  # MTTCG: one thread per vCPU
    assert _cpus_allowed(pid, vcpus[0]) == "0" and _cpus_allowed(pid, vcpus[1]) == "1"

    g.kvm.pin_cpus(name, "1:0")  # runtime re-pin, recorded for restarts
    assert _cpus_allowed(pid, vcpus[0]) == "1" and _cpus_allowed(pid, vcpus[1]) == "0"
    assert g.runtime(name)["hvparams"]["cpu_mask"] == "1:0"

    g.kvm.pin_cpus(name, "1")  # one mask: every thread of the process
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    assert {_cpus_allowed(pid, t) for t in tids} == {"1"}
    g.kvm.pin_cpus(name, "all")
    assert {_cpus_allowed(pid, t) for t in tids if os.path.exists(f"/proc/{pid}/task/{t}")} == {
        f"0-{(os.cpu_count() or 1) - 1}"
    }

    for bad, needle in (("0-63", "do not exist"), ("0:1:0", "per-vCPU masks"), ("x", "not a CPU")):
        with pytest.raises(HypervisorError) as err:
            g.kvm.pin_cpus(name, bad)
        assert err.value.kind is ErrorKind.INVALID and err.value.fields["param"] == "cpu_mask"
        assert needle in str(err.value)
    g.kvm.stop(name, timeout=0)
    with pytest.raises(ParamError) as perr:
        g.kvm.validate_params({"cpu_mask": f"0-{os.cpu_count()}"})
    assert "do not exist" in perr.value.problems["cpu_mask"]


# --- end to end: the CLI on a real single-host cluster ---------------------------------------


@pytest.fixture
def cluster(guest_reaper: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    require_tool("qemu-system-x86_64", "qemu-img", "socat", "mkfs.ext4", "cpio")
    root = Path(tempfile.mkdtemp(prefix="crlhe", dir="/tmp"))
    c = LocalCluster(root, hypervisors=["kvm", "fake"], reaper=guest_reaper)
    failed = True
    try:
        yield c
        failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    finally:
        c.close(show_logs=failed)
        if failed:
            print(f"kept the cluster root for inspection: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _vcpu_masks(c: LocalCluster, name: str) -> list[str]:
    qmp = os.path.join(c.paths.hv_run_dir("kvm"), name, "qmp.sock")
    cpus = Monitor(qmp, timeout=10).call(QmpSession.query_cpus_fast)
    pid = c.guest_pids()[name]
    return [_cpus_allowed(pid, cpu.thread_id) for cpu in sorted(cpus, key=lambda x: x.cpu_index)]


@pytest.mark.slow
def test_instance_modify_hotplugs_through_the_cli(cluster: LocalCluster) -> None:
    c = cluster
    two_cpus = (os.cpu_count() or 1) >= 2
    c.corral(
        "instance", "add", "-t", "file", "--disk", "0:size=128M", "-o", "busybox", "--no-nics",
        "-B", f"maxmem=192M,minmem=128M,vcpus={2 if two_cpus else 1}",
        *(["-H", "kvm:cpu_mask=0:1"] if two_cpus else []),
        "vm1",
    )  # fmt: skip
    c.register_guests()
    c.wait_serial("vm1", r"CORRAL-DEV blk=\[vda\] net=\[lo\]")
    if two_cpus:
        assert _vcpu_masks(c, "vm1") == ["0", "1"]  # pinned at start

    # add a disk: created, hot-plugged, visible in the guest at once
    out = c.corral("instance", "modify", "--disk", "add:size=64M", "vm1")
    assert "disk/1 -> add:size=64,mode=rw" in out.stdout and "hotplug:done" in out.stdout
    c.wait_serial("vm1", r"CORRAL-DEV blk=\[vda vdb\] net=\[lo\]")
    assert "131072" in c.console("vm1", "cat /sys/block/vdb/size", r"\n131072\r?\n")
    info = c.corral_json("instance", "info", "vm1")
    assert [d["size"] for d in info["disks"]] == [128, 64]

    # a NIC through the Ganeti syntax (--hotplug demanded), then removed again
    c.run("gnt-instance", "modify", "--hotplug", "--net", "add", "vm1")
    c.wait_serial("vm1", r"CORRAL-DEV blk=\[vda vdb\] net=\[eth0 lo\]")
    c.corral("instance", "modify", "--net", "0:remove", "vm1")
    c.wait_serial("vm1", r"CORRAL-DEV blk=\[vda vdb\] net=\[lo\]", count=2)

    # Ganeti semantics: without --hotplug, gnt-instance refuses to remove a disk of a
    # running instance; nothing changes
    res = c.run("gnt-instance", "modify", "--disk", "1:remove", "vm1", check=False)
    assert res.returncode != 0 and "without hotplug" in res.stderr
    assert len(c.corral_json("instance", "info", "vm1")["disks"]) == 2

    # remove the disk: gone in the guest, then its file is deleted
    disk1 = c.corral_json("instance", "info", "vm1")["disks"][1]["logical_id"]
    c.corral("instance", "modify", "--disk", "1:remove", "vm1")
    c.wait_serial("vm1", r"CORRAL-DEV blk=\[vda\] net=\[lo\]", count=2)
    assert os.path.exists(os.path.dirname(c.paths.host_path(disk1)))
    assert not os.path.exists(c.paths.host_path(disk1))

    if two_cpus:  # a new cpu_mask is applied to the running guest
        c.corral("instance", "modify", "-H", "cpu_mask=1:0", "vm1")
        assert _vcpu_masks(c, "vm1") == ["1", "0"]
        bad = c.corral("instance", "modify", "-H", "cpu_mask=0:1:0", "vm1", check=False)
        assert bad.returncode != 0 and "cpu_mask" in bad.stderr

    # stopped: --hotplug is refused, the default applies the change at the next start
    c.corral("instance", "stop", "--timeout", "0", "vm1")
    res = c.corral("instance", "modify", "--hotplug", "--disk", "add:size=32M", "vm1", check=False)
    assert res.returncode != 0 and "not running" in res.stderr
    c.corral("instance", "modify", "--disk", "add:size=32M", "vm1")
    c.corral("instance", "start", "vm1")
    c.register_guests()
    c.wait_serial("vm1", r"CORRAL-DEV blk=\[vda vdb\] net=\[lo\]")
    c.corral("instance", "remove", "-f", "vm1")
    assert c.guest_pids() == {}

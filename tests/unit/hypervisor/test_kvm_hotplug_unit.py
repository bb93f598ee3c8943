"""KVM hotplug logic without QEMU: placement, rollback, removal, runtime records.

The monitor is FakeHotplugQmp, a FAKE QEMU monitor with a small device model on a real UNIX
socket (tests/unit/hypervisor/fake_qmp_hotplug.py); the "QEMU process" is a FAKE too (a
sleeping Python process whose command line names the instance, so the driver's liveness
checks see a live guest); ``ip`` commands go to RecordingRunner (recorded, not run) and bridges
live in a fake /sys/class/net tree. Real QEMU runs in tests/integration/test_kvm_hotplug.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import AttachedDisk, InstanceSpec, NicSpec
from corral.hypervisor.kvm.cmdline import HostFacts, build_plan
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.pci import blockdev_qmp, device_qmp, netdev_qmp
from corral.hypervisor.kvm.runtime import KvmRuntime, load_runtime, save_runtime
from corral.objects.params.hv import KVM_HVPARAMS
from tests.conftest import require_root
from tests.unit.hypervisor.fake_qmp_hotplug import FakeHotplugQmp
from tests.unit.hypervisor.hv_fakes import RecordingRunner


class Node:
    """A driver on a temporary root with one FAKE running guest."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.sysnet = os.path.join(root, "sysnet")
        os.makedirs(os.path.join(self.sysnet, "br0", "bridge"))
        os.makedirs(os.path.join(self.sysnet, "br1", "bridge"))
        self.runner = RecordingRunner()
        self.kvm = Kvm(
            os.path.join(root, "run"),
            log_dir=os.path.join(root, "log"),
            runner=self.runner,
            kvm_device="/nonexistent/kvm",
            sys_class_net=self.sysnet,
            qmp_timeout=5,
        )
        self.kvm.unplug_timeout = 2.0
        # FAKE tap opening: the recorded `ip tuntap add` created no tap (see RecordingRunner)
        self.kvm._open_tap = lambda ifname: os.open(os.devnull, os.O_RDWR)  # type: ignore[method-assign]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.servers: list[FakeHotplugQmp] = []

    def image(self, name: str) -> str:
        path = os.path.join(self.root, name)
        with open(path, "wb") as fh:
            fh.truncate(1024 * 1024)
        return path

    def guest(
        self,
        name: str = "vm1",
        *,
        machine: str = "pc",
        disks: list[AttachedDisk] | None = None,
        nics: list[NicSpec] | None = None,
        security: dict[str, Any] | None = None,
        **hv: Any,
    ) -> FakeHotplugQmp:
        """Write the runtime of a running guest and serve its FAKE monitor."""
        params = KVM_HVPARAMS.fill(
            {
                "kernel_path": "/k",
                "initrd_path": "",
                "root_path": "",
                "machine_version": machine,
                **hv,
            }
        )
        spec = InstanceSpec(
            name=name,
            uuid=f"uuid-{name}",
            hypervisor="kvm",
            hvparams=params,
            memory=128,
            min_memory=64,
            vcpus=1,
            nics=nics or [],
        )
        layout = self.kvm._layout(name)
        plan = build_plan(
            spec,
            disks or [],
            params,
            HostFacts(qemu_binary="/q", qemu_version="7.2.22", accel="tcg"),
            layout,
        )
        os.makedirs(layout.dir)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time; time.sleep(120)",
                "-name",
                name,
                "-uuid",
                spec.uuid,
            ]
        )
        self.procs.append(proc)
        with open(layout.pidfile, "w") as fh:
            fh.write(f"{proc.pid}\n")
        save_runtime(
            layout,
            KvmRuntime(
                name=name,
                uuid=spec.uuid,
                argv=plan.argv,
                accel="tcg",
                machine=plan.machine,
                pid=proc.pid,
                spec=spec,
                disks=plan.disks,
                nics=plan.nics,
                hvparams=params,
                security=dict(security or {}),
            ),
        )
        server = FakeHotplugQmp(layout.qmp_socket)
        args = plan.argv
        for i in range(len(args) - 1):  # the devices QEMU created from the command line
            if args[i] == "-blockdev":
                assert server._cmd_blockdev_add(blockdev_qmp(args[i + 1])) == {"return": {}}
            elif args[i] == "-netdev":
                server._cmd_netdev_add(netdev_qmp(args[i + 1]))
            elif args[i] == "-device":
                assert server._cmd_device_add(device_qmp(args[i + 1])) == {"return": {}}
        server.__enter__()
        self.servers.append(server)
        return server

    def runtime(self, name: str = "vm1") -> KvmRuntime:
        runtime = load_runtime(self.kvm._layout(name))
        assert runtime is not None
        return runtime

    def runtime_text(self, name: str = "vm1") -> str:
        with open(self.kvm._layout(name).runtime_file) as fh:
            return fh.read()

    def close(self) -> None:
        for server in self.servers:
            server.__exit__(None, None, None)
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def node() -> Iterator[Node]:
    root = tempfile.mkdtemp(prefix="crlhu", dir="/tmp")  # short: UNIX socket paths
    n = Node(root)
    try:
        yield n
    finally:
        n.close()
        shutil.rmtree(root, ignore_errors=True)


def disk(index: int, path: str, uuid: str) -> AttachedDisk:
    return AttachedDisk(index=index, uuid=uuid, path=path)


def commands(server: FakeHotplugQmp) -> list[str]:
    return [c for c in server.commands if c not in ("query-status", "query-pci")]


# --- adding ------------------------------------------------------------------------------------


def test_pc_disks_go_to_free_slots_and_the_runtime_replays_them(node: Node) -> None:
    server = node.guest()
    assert server.devices["balloon0"]["slot"] == 2
    node.kvm.hotplug_add_disk("vm1", disk(0, node.image("a"), "aaaa1111"))
    node.kvm.hotplug_add_disk("vm1", disk(1, node.image("b"), "bbbb2222"))
    assert commands(server) == ["blockdev-add", "blockdev-add", "device_add"] * 2
    assert server.devices["disk0-aaaa1111"]["slot"] == 3
    assert server.devices["disk1-bbbb2222"]["slot"] == 4
    rt = node.runtime()
    assert [(d.index, d.bus, d.slot, d.hotplugged) for d in rt.disks] == [
        (0, "pci.0", 3, True),
        (1, "pci.0", 4, True),
    ]
    argv = rt.argv
    dev = argv[
        argv.index("virtio-blk-pci,id=disk0-aaaa1111,drive=disk0-aaaa1111-fmt,bus=pci.0,addr=0x3")
        - 1
    ]
    assert dev == "-device"
    assert f"driver=file,node-name=disk0-aaaa1111-file,filename={node.root}/a,read-only=off" in argv
    # every device QEMU placed itself is pinned to its slot for the replay
    assert "virtio-balloon-pci,id=balloon0,addr=0x2" in argv


def test_failed_device_add_deletes_the_block_nodes_and_changes_nothing(node: Node) -> None:
    server = node.guest()
    before = node.runtime_text()
    server.fail["device_add"] = "PCI: slot 3 function 0 not available"
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_add_disk("vm1", disk(0, node.image("a"), "aaaa1111"))
    assert "cannot hot-add disk 0 to vm1" in str(err.value) and "slot 3" in str(err.value)
    assert commands(server) == [
        "blockdev-add",
        "blockdev-add",
        "device_add",
        "blockdev-del",
        "blockdev-del",
    ]
    deleted = [
        m["arguments"]["node-name"] for m in server.received if m["execute"] == "blockdev-del"
    ]
    assert deleted == ["disk0-aaaa1111-fmt", "disk0-aaaa1111-file"]  # format node first
    assert server.nodes == {} and "disk0-aaaa1111" not in server.devices
    assert node.runtime_text() == before  # no slot consumed, nothing recorded


def test_missing_image_is_refused_by_qemu_and_leaves_nothing(node: Node) -> None:
    server = node.guest()
    before = node.runtime_text()
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_add_disk("vm1", disk(0, "/nonexistent/img", "cccc3333"))
    assert "Could not open '/nonexistent/img'" in str(err.value)
    assert commands(server) == ["blockdev-add"]
    assert server.nodes == {} and node.runtime_text() == before


def test_failed_nic_add_removes_netdev_and_tap(node: Node) -> None:
    server = node.guest()
    before = node.runtime_text()
    server.fail["device_add"] = "Duplicate device ID 'nic0-n1'"
    nic = NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:09", link="br0")
    with pytest.raises(HypervisorError):
        node.kvm.hotplug_add_nic("vm1", nic)
    assert commands(server) == ["getfd", "netdev_add", "device_add", "netdev_del"]
    assert server.netdevs == set() and server.fds == set()
    netdev = next(m["arguments"] for m in server.received if m["execute"] == "netdev_add")
    assert netdev == {"type": "tap", "id": "net0-n1", "fd": "fd-net0-n1"}  # opened by the node
    ip = [" ".join(c) for c in node.runner.calls if c[0] == "ip"]
    assert ip == [
        "ip tuntap add dev crln1.0 mode tap",
        "ip link set dev crln1.0 master br0",
        "ip link set dev crln1.0 up",
        "ip tuntap del dev crln1.0 mode tap",
    ]
    assert node.runtime_text() == before


def test_failed_netdev_add_closes_the_passed_descriptor(node: Node) -> None:
    server = node.guest()
    server.fail["netdev_add"] = "could not configure tap"
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_add_nic(
            "vm1", NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:09", link="br0")
        )
    assert "could not configure tap" in str(err.value)
    assert commands(server) == ["getfd", "netdev_add", "closefd"] and server.fds == set()
    assert ["ip", "tuntap", "del", "dev", "crln1.0", "mode", "tap"] in node.runner.calls


def test_nic_on_a_missing_bridge_is_refused_before_anything(node: Node) -> None:
    server = node.guest()
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_add_nic(
            "vm1", NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:09", link="nobr")
        )
    assert err.value.kind is ErrorKind.ENVIRONMENT and "nobr" in str(err.value)
    assert commands(server) == [] and node.runner.calls == []


def test_duplicate_disk_is_refused(node: Node) -> None:
    node.guest(disks=[disk(0, node.image("a"), "aaaa1111")])
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_add_disk("vm1", disk(1, node.image("b"), "aaaa1111"))
    assert err.value.kind is ErrorKind.EXISTS


# --- q35 ports ------------------------------------------------------------------------------


def test_q35_uses_the_spare_ports_and_frees_them_again(node: Node) -> None:
    server = node.guest(machine="q35")
    spare = [f"hotplug{i}" for i in range(8)]
    for i in range(8):
        node.kvm.hotplug_add_disk("vm1", disk(i, node.image(f"d{i}"), f"dddd000{i}"))
        assert server.devices[f"disk{i}-dddd000{i}"]["bus"] == spare[i]
        assert node.runtime().free_ports == spare[i + 1 :]
    before = node.runtime_text()
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_add_disk("vm1", disk(8, node.image("d8"), "dddd0008"))
    assert err.value.kind is ErrorKind.NO_RESOURCES and "pcie-root-port" in str(err.value)
    assert node.runtime_text() == before
    node.kvm.hotplug_remove_disk("vm1", 3, "dddd0003")
    assert node.runtime().free_ports == ["hotplug3"]
    node.kvm.hotplug_add_disk("vm1", disk(7, node.image("d9"), "dddd0009"))
    assert server.devices["disk7-dddd0009"]["bus"] == "hotplug3"


def test_q35_removal_of_a_started_disk_frees_its_own_port(node: Node) -> None:
    node.guest(machine="q35", disks=[disk(0, node.image("a"), "aaaa1111")])
    node.kvm.hotplug_remove_disk("vm1", 0, "aaaa1111")
    rt = node.runtime()
    assert rt.free_ports is not None and "disk0-aaaa1111-port" in rt.free_ports
    assert len(rt.free_ports) == 9
    assert rt.disks == [] and not any("disk0-aaaa1111," in a for a in rt.argv)


# --- removing ---------------------------------------------------------------------------------


def test_removal_waits_for_device_deleted_then_frees_the_backends(node: Node) -> None:
    server = node.guest(
        disks=[disk(0, node.image("a"), "aaaa1111"), disk(1, node.image("b"), "bbbb2222")]
    )
    slot = server.devices["disk1-bbbb2222"]["slot"]
    node.kvm.hotplug_remove_disk("vm1", 0, "aaaa1111")
    assert commands(server) == ["device_del", "blockdev-del", "blockdev-del"]
    assert server.events_sent == ["disk0-aaaa1111"]
    assert set(server.nodes) == {"disk1-bbbb2222-fmt", "disk1-bbbb2222-file"}
    rt = node.runtime()
    # disk 1 is disk 0 now, as in the master's list; it keeps its device id and its slot
    assert [(d.index, d.uuid, d.device_id, d.slot) for d in rt.disks] == [
        (0, "bbbb2222", "disk1-bbbb2222", slot)
    ]
    assert f"virtio-blk-pci,id=disk1-bbbb2222,drive=disk1-bbbb2222-fmt,addr={hex(slot)}" in rt.argv
    assert not any("aaaa1111" in a for a in rt.argv)


def test_guest_not_releasing_the_device_leaves_it_attached_and_recorded(node: Node) -> None:
    server = node.guest(disks=[disk(0, node.image("a"), "aaaa1111")])
    server.ack_unplug = False
    node.kvm.unplug_timeout = 0.5
    before = node.runtime_text()
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_remove_disk("vm1", 0, "aaaa1111")
    assert err.value.fields["qmp_failure"] == "unplug_timeout"
    assert "did not release" in str(err.value)
    assert commands(server) == ["device_del"]  # no blockdev-del
    assert node.runtime_text() == before and "disk0-aaaa1111-fmt" in server.nodes


def test_removal_of_a_device_qemu_no_longer_has_finishes_the_cleanup(node: Node) -> None:
    server = node.guest(disks=[disk(0, node.image("a"), "aaaa1111")])
    del server.devices["disk0-aaaa1111"]  # e.g. released after an earlier timeout
    node.kvm.hotplug_remove_disk("vm1", 0, "aaaa1111")
    assert server.nodes == {} and node.runtime().disks == []


def test_nic_removal_deletes_netdev_and_tap(node: Node) -> None:
    server = node.guest(nics=[NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:01", link="br0")])
    node.kvm.hotplug_remove_nic("vm1", 0, "")
    assert commands(server) == ["device_del", "netdev_del"]
    assert node.runner.calls == [["ip", "tuntap", "del", "dev", "crln1.0", "mode", "tap"]]
    assert node.runtime().nics == []


def test_unknown_device_is_not_found(node: Node) -> None:
    node.guest()
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_remove_disk("vm1", 0, "nope")
    assert err.value.kind is ErrorKind.NOT_FOUND
    with pytest.raises(HypervisorError) as err:
        node.kvm.set_nic_link("vm1", 2, "", False)
    assert err.value.kind is ErrorKind.NOT_FOUND


# --- refusals ---------------------------------------------------------------------------------


def test_stopped_instance_and_unsupported_models_are_refused(node: Node) -> None:
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_add_disk("vm9", disk(0, node.image("a"), "aaaa1111"))
    assert err.value.kind is ErrorKind.WRONG_STATE and "not running" in str(err.value)
    server = node.guest("ide1", disk_type="ide", nic_type="paravirtual")
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_add_disk("ide1", disk(0, node.image("a"), "aaaa1111"))
    assert err.value.kind is ErrorKind.INVALID and "disk_type=ide" in str(err.value)
    assert commands(server) == []
    node.guest("ide2", disk_type="ide", disks=[disk(0, node.image("b"), "bbbb2222")])
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_remove_disk("ide2", 0, "bbbb2222")
    assert err.value.kind is ErrorKind.INVALID and "ide-hd" in str(err.value)


# --- links and NIC moves -------------------------------------------------------------------------


def test_link_state_is_recorded_and_reapplied_after_a_restart(node: Node) -> None:
    server = node.guest(nics=[NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:01", link="br0")])
    node.kvm.set_nic_link("vm1", 0, "n1", False)
    assert server.links == {"nic0-n1": False}
    rt = node.runtime()
    assert rt.nics[0].link_up is False
    layout, _, proc = node.kvm._live("vm1")  # type: ignore[misc]
    server.links.clear()
    node.kvm._after_launch(layout, rt, proc, incoming=True)  # migration: state comes along
    assert server.links == {}
    node.kvm._after_launch(layout, rt, proc, incoming=False)
    assert server.links == {"nic0-n1": False}


def test_modify_moves_the_tap_to_another_bridge_keeping_the_device(node: Node) -> None:
    server = node.guest(nics=[NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:01", link="br0")])
    node.kvm.hotplug_modify_nic(
        "vm1", NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:01", link="br1")
    )
    assert node.runner.calls == [["ip", "link", "set", "dev", "crln1.0", "master", "br1"]]
    links = [(m["arguments"]["up"]) for m in server.received if m["execute"] == "set_link"]
    assert links == [False, True]
    assert "device_del" not in server.commands
    assert node.runtime().nics[0].link == "br1"
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_modify_nic(
            "vm1", NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:01", link="nobr")
        )
    assert err.value.kind is ErrorKind.ENVIRONMENT
    assert node.runtime().nics[0].link == "br1"


def test_runtime_with_hotplugged_devices_round_trips(node: Node) -> None:
    node.guest(machine="q35")
    node.kvm.hotplug_add_disk("vm1", disk(0, node.image("a"), "aaaa1111"))
    node.kvm.hotplug_add_nic(
        "vm1", NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:01", link="br0")
    )
    node.kvm.set_nic_link("vm1", 0, "n1", False)
    text = node.runtime_text()
    again = KvmRuntime.from_json(text)
    assert again.to_json() == text
    assert again.disks[0].hotplugged and again.disks[0].bus == "hotplug0"
    assert again.nics[0].bus == "hotplug1" and again.nics[0].link_up is False
    assert again.free_ports == [f"hotplug{i}" for i in range(2, 8)]
    # a runtime written before hotplug existed (no new fields) still loads, with defaults
    old = json.loads(text)
    for rec in old["disks"] + old["nics"]:
        for key in ("bus", "slot", "hotplugged", "link_up"):
            rec.pop(key, None)
    old.pop("free_ports")
    legacy = KvmRuntime.from_dict(old)
    assert legacy.free_ports is None and legacy.disks[0].bus == "" and legacy.nics[0].link_up


# --- QEMU running unprivileged or chrooted -------------------------------------------------------


def test_unprivileged_qemu_gets_the_new_disk_and_gives_it_back(node: Node) -> None:
    require_root()  # chown to another uid
    server = node.guest(security={"model": "user", "uid": 54321, "gid": 54321, "user": "x"})
    image = node.image("a")
    node.kvm.hotplug_add_disk("vm1", disk(0, image, "aaaa1111"))
    assert (os.stat(image).st_uid, os.stat(image).st_gid) == (54321, 54321)
    assert node.runtime().security["owned"] == [[image, 0, 0]]
    node.kvm.hotplug_remove_disk("vm1", 0, "aaaa1111")
    assert os.stat(image).st_uid == 0 and node.runtime().security["owned"] == []

    failing = node.image("b")
    server.fail["device_add"] = "refused"
    with pytest.raises(HypervisorError):
        node.kvm.hotplug_add_disk("vm1", disk(0, failing, "bbbb2222"))
    assert os.stat(failing).st_uid == 0 and node.runtime().security["owned"] == []
    server.fail.clear()

    node.kvm.hotplug_add_nic(
        "vm1", NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:01", link="br0")
    )
    # the node opens the tap and passes the descriptor: QEMU's uid needs no /dev/net/tun
    assert "getfd" in server.commands


def test_chrooted_qemu_refuses_disks_but_takes_nics(node: Node) -> None:
    server = node.guest(security={"chroot": "/nonexistent/chroot"})
    with pytest.raises(HypervisorError) as err:
        node.kvm.hotplug_add_disk("vm1", disk(0, node.image("a"), "aaaa1111"))
    assert err.value.kind is ErrorKind.INVALID and "use_chroot" in str(err.value)
    assert commands(server) == []
    node.kvm.hotplug_add_nic(
        "vm1", NicSpec(index=0, uuid="n1", mac="aa:00:00:00:00:01", link="br0")
    )
    assert commands(server) == ["getfd", "netdev_add", "device_add"]
    assert server.devices["nic0-n1"]["romfile"] == ""  # no option ROM inside the chroot
    assert any(a.endswith(",romfile=") for a in node.runtime().argv)

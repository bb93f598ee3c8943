"""PCI placement and argv edits of hotplug (kvm/pci.py), pure."""

from __future__ import annotations

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.kvm.monitor import PciDevice
from corral.hypervisor.kvm.pci import (
    PC_RESERVED_SLOTS,
    blockdev_qmp,
    bus0_slots,
    choose_pc_slot,
    device_qmp,
    device_text,
    format_options,
    free_root_ports,
    netdev_qmp,
    parse_options,
    pin_slots,
    remove_objects,
    root_ports,
    spare_port_args,
    split_options,
)


def test_split_and_parse_honour_doubled_commas():
    assert split_options("a=1,b=x,,y,c") == ["a=1", "b=x,y", "c"]
    head, opts = parse_options("virtio-blk-pci,id=d0,drive=n,,1")
    assert head == "virtio-blk-pci" and opts == {"id": "d0", "drive": "n,1"}
    assert format_options(head, opts) == "virtio-blk-pci,id=d0,drive=n,,1"
    with pytest.raises(ValueError):
        parse_options("a=1,novalue")


def test_blockdev_options_are_typed_and_nested_for_qmp():
    text = "driver=file,node-name=d0-file,filename=/srv/a,,b,read-only=off,cache.direct=on"
    assert blockdev_qmp(text) == {
        "driver": "file",
        "node-name": "d0-file",
        "filename": "/srv/a,b",
        "read-only": False,
        "cache": {"direct": True},
    }
    # enum values that look like booleans stay strings outside the boolean keys
    assert blockdev_qmp("driver=raw,node-name=n,file=f,detect-zeroes=on")["detect-zeroes"] == "on"
    with pytest.raises(ValueError):
        blockdev_qmp("raw,node-name=n")


def test_device_and_netdev_options():
    assert device_qmp("virtio-net-pci,id=n0,mac=aa:00:00:00:00:01,bus=pci.0,addr=0x5") == {
        "driver": "virtio-net-pci",
        "id": "n0",
        "mac": "aa:00:00:00:00:01",
        "bus": "pci.0",
        "addr": "0x5",
    }
    assert netdev_qmp("tap,id=t0,ifname=crlx.0,script=no,downscript=no,vhost=on") == {
        "type": "tap",
        "id": "t0",
        "ifname": "crlx.0",
        "script": "no",
        "downscript": "no",
        "vhost": True,
    }
    with pytest.raises(ValueError):
        device_qmp("id=x")


ARGV = [
    "/q", "-name", "vm1", "-nodefaults",
    "-blockdev", "driver=file,node-name=d0-file,filename=/a,read-only=off",
    "-blockdev", "driver=raw,node-name=d0-fmt,file=d0-file,read-only=off",
    "-device", "pcie-root-port,id=d0-port,chassis=1",
    "-device", "virtio-blk-pci,id=d0,drive=d0-fmt,bus=d0-port",
    "-netdev", "tap,id=net0,ifname=t0,script=no,downscript=no",
    "-device", "pcie-root-port,id=n0-port,chassis=2",
    "-device", "virtio-net-pci,id=n0,netdev=net0,bus=n0-port",
    *spare_port_args(2),
    "-device", "virtio-balloon-pci,id=balloon0",
    "-daemonize",
]  # fmt: skip


def test_root_ports_and_the_free_ones():
    assert root_ports(ARGV) == ["d0-port", "n0-port", "hotplug0", "hotplug1"]
    assert free_root_ports(ARGV) == ["hotplug0", "hotplug1"]
    without_disk = remove_objects(ARGV, device_ids=["d0"], node_names=["d0-fmt", "d0-file"])
    assert free_root_ports(without_disk) == ["d0-port", "hotplug0", "hotplug1"]


def test_remove_objects_drops_exactly_the_named_arguments():
    out = remove_objects(ARGV, device_ids=["n0"], netdev_ids=["net0"])
    assert device_text(out, "n0") is None and device_text(out, "d0") is not None
    assert not any("net0" in a for a in out)
    assert len(out) == len(ARGV) - 4
    assert out[-1] == "-daemonize" and out[:4] == ARGV[:4]
    assert remove_objects(ARGV, device_ids=["nosuch"]) == ARGV


def test_pin_slots_only_touches_devices_placed_by_qemu():
    argv = ["-device", "virtio-blk-pci,id=a", "-device", "scsi-hd,id=s,bus=scsi0.0",
            "-device", "virtio-net-pci,id=b,addr=0x9", "-device", "VGA"]  # fmt: skip
    out = pin_slots(argv, {"a": 4, "s": 5, "b": 6})
    assert out == ["-device", "virtio-blk-pci,id=a,addr=0x4", "-device", "scsi-hd,id=s,bus=scsi0.0",
                   "-device", "virtio-net-pci,id=b,addr=0x9", "-device", "VGA"]  # fmt: skip


def test_pc_slot_choice_skips_reserved_used_and_fails_when_full():
    assert sorted(PC_RESERVED_SLOTS) == [0, 1, 2]
    assert choose_pc_slot([]) == 3
    assert choose_pc_slot([3, 4, 6]) == 5
    with pytest.raises(HypervisorError) as err:
        choose_pc_slot(range(3, 32))
    assert err.value.kind is ErrorKind.NO_RESOURCES
    devices = [
        PciDevice(bus=0, slot=0, function=0, qdev_id=""),
        PciDevice(bus=0, slot=1, function=3, qdev_id=""),
        PciDevice(bus=0, slot=2, function=0, qdev_id="balloon0"),
        PciDevice(bus=1, slot=0, function=0, qdev_id="behind-a-bridge"),
    ]
    assert bus0_slots(devices) == {0: "", 1: "", 2: "balloon0"}

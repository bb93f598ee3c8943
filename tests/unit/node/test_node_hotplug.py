"""The node's instance_hotplug and instance_pin_cpus calls with the ``fake`` hypervisor.

The fake hypervisor (a product driver without processes) records devices in its instance
file; disks are real files made by the real file storage driver, so the DiskRef of an added
disk is resolved the way ``instance_start`` resolves it. KVM hotplug against real QEMU is in
tests/integration/test_kvm_hotplug.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, HypervisorError, ParamError, StorageError
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceSpec, NicSpec
from corral.node.backend import NodeBackend
from corral.rpc.calls import (
    BlockdevRequest,
    DiskRef,
    InstanceHotplugRequest,
    InstancePinCpusRequest,
    InstanceStartRequest,
)
from corral.storage.base import VolumeSpec


@pytest.fixture
def node(tmp_path: Path) -> NodeBackend:
    paths = Paths(str(tmp_path / "root"))
    paths.ensure()
    return NodeBackend(paths, "node1")


def volume(node: NodeBackend, name: str, uuid: str) -> VolumeSpec:
    return VolumeSpec(
        dev_type="file",
        logical_id=os.path.join(node.paths.file_storage_dir, "vm1", name),
        size=8,
        uuid=uuid,
        params={"storage_dir": node.paths.file_storage_dir},
    )


def state(node: NodeBackend) -> dict:
    with open(os.path.join(node.paths.hv_run_dir("fake"), "vm1.json")) as fh:
        return json.load(fh)


def req(**kw) -> InstanceHotplugRequest:
    return InstanceHotplugRequest(name="vm1", hypervisor="fake", **kw)


def test_check_add_remove_modify_and_pin(node: NodeBackend) -> None:
    assert node.instance_hotplug(req(action="check", device="disk")).supported is False
    assert "not running" in node.instance_hotplug(req(action="check", device="nic")).reason
    v0 = volume(node, "disk0", "d0")
    node.blockdev_create(BlockdevRequest(volume=v0))
    spec = InstanceSpec(
        name="vm1", uuid="u1", hypervisor="fake", hvparams={}, memory=64, min_memory=64, vcpus=2,
        nics=[NicSpec(index=0, uuid="n0", mac="aa:00:00:00:00:01", link="br0")],
    )  # fmt: skip
    node.instance_start(InstanceStartRequest(instance=spec, disks=[DiskRef(index=0, volume=v0)]))
    assert node.instance_hotplug(req(action="check", device="disk")).supported is True

    # a disk that does not exist yet is refused by the storage layer, naming it
    v1 = volume(node, "disk1", "d1")
    with pytest.raises(StorageError) as serr:
        node.instance_hotplug(req(action="add", device="disk", disk=DiskRef(index=1, volume=v1)))
    assert serr.value.kind is ErrorKind.NOT_FOUND
    node.blockdev_create(BlockdevRequest(volume=v1))
    node.instance_hotplug(req(action="add", device="disk", disk=DiskRef(index=1, volume=v1)))
    assert [d["uuid"] for d in state(node)["disk_devices"]] == ["d0", "d1"]
    assert state(node)["disks"][1] == v1.logical_id

    node.instance_hotplug(req(action="remove", device="disk", index=0, uuid="d0"))
    assert [(d["index"], d["uuid"]) for d in state(node)["disk_devices"]] == [(0, "d1")]

    nic = NicSpec(index=1, uuid="n1", mac="aa:00:00:00:00:02", link="br0")
    node.instance_hotplug(req(action="add", device="nic", nic=nic))
    moved = nic.model_copy(update={"link": "br1"})
    node.instance_hotplug(req(action="modify", device="nic", nic=moved, link_up=False))
    assert state(node)["nic_devices"][1] == {
        "index": 1, "uuid": "n1", "mac": "aa:00:00:00:00:02", "mode": "bridged", "link": "br1",
        "up": False,
    }  # fmt: skip
    node.instance_hotplug(req(action="remove", device="nic", uuid="n0"))
    assert [n["uuid"] for n in state(node)["nic_devices"]] == ["n1"]

    node.instance_pin_cpus(InstancePinCpusRequest(name="vm1", hypervisor="fake", cpu_mask="0:0"))
    assert state(node)["cpu_mask"] == "0:0"
    with pytest.raises(HypervisorError) as err:
        node.instance_pin_cpus(
            InstancePinCpusRequest(name="vm1", hypervisor="fake", cpu_mask="0:0:0")
        )
    assert err.value.kind is ErrorKind.INVALID and err.value.fields["param"] == "cpu_mask"


def test_incomplete_requests_and_stopped_instances(node: NodeBackend) -> None:
    with pytest.raises(ParamError):
        node.instance_hotplug(req(action="add", device="disk"))
    with pytest.raises(ParamError):
        node.instance_hotplug(req(action="remove", device="nic"))
    with pytest.raises(ParamError):
        node.instance_hotplug(req(action="modify", device="disk", index=0))
    with pytest.raises(HypervisorError) as err:
        node.instance_hotplug(req(action="remove", device="nic", index=0))
    assert err.value.kind is ErrorKind.WRONG_STATE

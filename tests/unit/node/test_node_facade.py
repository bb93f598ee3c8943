"""NodeBackend with the ``fake`` hypervisor (a product driver with no processes) and real files.

The fake hypervisor stands in for KVM here because these tests are about the backend's own
logic (disk resolution, locking, error reporting); the KVM driver has its own integration
tests with real QEMU guests.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

import corral
from corral.common.errors import CorralError, ErrorKind, HypervisorError, StorageError
from corral.common.paths import Paths
from corral.hypervisor.base import Capabilities, Hypervisor, InstanceSpec
from corral.hypervisor.fake import FakeHypervisor
from corral.node.backend import NodeBackend
from corral.node.backend.info import parse_meminfo
from corral.node.handlers import CallHandlers
from corral.rpc.calls import (
    CALLS,
    BlockdevGrowRequest,
    BlockdevRenameRequest,
    BlockdevRequest,
    BlockdevSizesRequest,
    DiskRef,
    Empty,
    HooksRunRequest,
    HvValidateRequest,
    HvVerifyRequest,
    InstanceBalloonRequest,
    InstanceConsoleRequest,
    InstanceInfoRequest,
    InstanceListRequest,
    InstanceRebootRequest,
    InstanceShutdownRequest,
    InstanceStartRequest,
    NodeInfoRequest,
)
from corral.storage.base import VolumeSpec
from tests.conftest import require_tool

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(str(tmp_path / "root"))


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    d = tmp_path / "proc"
    (d / "sys/kernel/random").mkdir(parents=True)
    (d / "meminfo").write_text((DATA / "proc/meminfo-debian12.txt").read_text())
    (d / "sys/kernel/random/boot_id").write_text("3f2a9c1e-0000-4000-8000-000000000001\n")
    return d


@pytest.fixture
def backend(paths: Paths, proc: Path) -> NodeBackend:
    return NodeBackend(paths, "node1", proc_dir=str(proc))


def spec(name: str = "vm1", **hv: object) -> InstanceSpec:
    return InstanceSpec(
        name=name,
        uuid="u-" + name,
        hypervisor="fake",
        hvparams=dict(hv),
        memory=256,
        min_memory=128,
        vcpus=1,
    )


def make_disk(backend: NodeBackend, paths: Paths, name: str, index: int) -> DiskRef:
    require_tool("qemu-img")
    v = VolumeSpec(
        dev_type="file",
        logical_id=os.path.join(paths.file_storage_dir, name, f"disk{index}"),
        size=8,
        uuid=f"{name}-d{index}",
    )
    backend.blockdev_create(BlockdevRequest(volume=v))
    return DiskRef(index=index, volume=v)


def test_backend_has_every_call() -> None:
    for name, call in CALLS.items():
        method = getattr(NodeBackend, name)
        assert method.__annotations__["req"] in (call.request, call.request.__name__), name
        assert method.__annotations__["return"] in (call.response, call.response.__name__), name


def test_node_daemon_handlers_accept_backend(backend: NodeBackend) -> None:
    CallHandlers(backend)  # raises if a call has no method


def test_version(backend: NodeBackend) -> None:
    v = backend.version(Empty())
    assert (v.software_version, v.protocol_version, v.node_name) == (
        corral.__version__,
        corral.PROTOCOL_VERSION,
        "node1",
    )


# --- node info -----------------------------------------------------------------------------------


def test_parse_meminfo_captured() -> None:
    total, free = parse_meminfo((DATA / "proc/meminfo-debian12.txt").read_text())
    assert (total, free) == (24684084 // 1024, 24231684 // 1024)


def test_parse_meminfo_without_memavailable() -> None:
    text = "MemTotal: 2048000 kB\nMemFree: 100000 kB\nBuffers: 20000 kB\nCached: 30000 kB\n"
    assert parse_meminfo(text) == (2000, 150000 // 1024)
    with pytest.raises(CorralError):
        parse_meminfo("MemFree: 1 kB\n")


def test_node_info_survives_a_broken_hypervisor(
    backend: NodeBackend, paths: Paths, tmp_path: Path
) -> None:
    info = backend.node_info(
        NodeInfoRequest(
            hypervisors=["fake", "nosuchhv"], storage_dirs=[paths.file_storage_dir, str(tmp_path)]
        )
    )
    assert info.name == "node1"
    assert info.boot_id == "3f2a9c1e-0000-4000-8000-000000000001"
    assert (info.memory_total, info.memory_free) == (24684084 // 1024, 24231684 // 1024)
    assert info.cpu_total == (os.cpu_count() or 1)
    assert info.hypervisors["fake"].memory_total > 0
    broken = info.hypervisors["nosuchhv"]
    assert broken.memory_total == 0 and broken.details["available"] is False
    assert "unknown hypervisor" in broken.details["error"]
    assert [s.location for s in info.storage] == [paths.file_storage_dir, str(tmp_path)]
    assert all(0 < s.free <= s.total for s in info.storage)


def test_node_info_survives_a_driver_that_raises(paths: Paths, proc: Path) -> None:
    """A driver raising a non-Corral exception (a bug) is reported, the others still answer."""

    class Exploding(FakeHypervisor):
        def node_info(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    drivers: dict[str, Hypervisor] = {
        "fake": FakeHypervisor(paths.hv_run_dir("fake")),
        "kvm": Exploding(paths.hv_run_dir("x")),
    }
    nb = NodeBackend(paths, "n", get_hypervisor=drivers.__getitem__, proc_dir=str(proc))
    info = nb.node_info(NodeInfoRequest(hypervisors=["kvm", "fake"]))
    assert "RuntimeError: boom" in info.hypervisors["kvm"].details["error"]
    assert info.hypervisors["fake"].cpu_total >= 1


def test_node_info_unreadable_proc(paths: Paths, tmp_path: Path) -> None:
    nb = NodeBackend(paths, "n", proc_dir=str(tmp_path / "nothing"))
    with pytest.raises(CorralError) as exc:
        nb.node_info(NodeInfoRequest())
    assert exc.value.kind is ErrorKind.ENVIRONMENT


def test_hv_verify_and_validate(backend: NodeBackend) -> None:
    resp = backend.hv_verify(HvVerifyRequest(hypervisors=["fake", "nosuchhv"]))
    assert resp.problems["fake"] == []
    assert "unknown hypervisor" in resp.problems["nosuchhv"][0]
    backend.hv_validate_params(HvValidateRequest(hypervisor="fake", hvparams={"boot_delay": 0}))
    with pytest.raises(CorralError) as exc:
        backend.hv_validate_params(HvValidateRequest(hypervisor="fake", hvparams={"nope": 1}))
    assert exc.value.kind is ErrorKind.INVALID


# --- instances -----------------------------------------------------------------------------------


def test_start_resolves_disks_and_lifecycle(backend: NodeBackend, paths: Paths) -> None:
    disks = [make_disk(backend, paths, "vm1", 1), make_disk(backend, paths, "vm1", 0)]
    backend.instance_start(InstanceStartRequest(instance=spec(), disks=disks))
    run_file = Path(paths.hv_run_dir("fake")) / "vm1.json"
    recorded = json.loads(run_file.read_text())
    assert recorded["disks"] == [disks[1].volume.logical_id, disks[0].volume.logical_id]
    # starting a running instance succeeds (Ganeti semantics) and changes nothing
    backend.instance_start(InstanceStartRequest(instance=spec(), disks=disks))
    assert backend.instance_list(InstanceListRequest(hypervisors=["fake"])).instances == {
        "fake": ["vm1"]
    }
    info = backend.instance_info(InstanceInfoRequest(name="vm1", hypervisor="fake")).info
    assert info is not None and info.state == "running" and info.memory == 256
    all_info = backend.all_instances_info(InstanceListRequest(hypervisors=["fake"])).instances
    assert [i.name for i in all_info] == ["vm1"]
    assert (
        backend.instance_balloon(
            InstanceBalloonRequest(name="vm1", hypervisor="fake", memory=128)
        ).memory
        == 128
    )
    backend.instance_reboot(InstanceRebootRequest(instance=spec(), disks=disks, reboot_type="soft"))
    assert json.loads(run_file.read_text())["reboots"] == 1
    # full reboot = stop + start: a new start record, disks resolved again
    backend.instance_reboot(InstanceRebootRequest(instance=spec(), disks=disks, reboot_type="full"))
    assert json.loads(run_file.read_text())["reboots"] == 0
    console = backend.instance_console(
        InstanceConsoleRequest(instance=spec(), node_host="127.0.0.1")
    ).console
    assert console.kind == "msg"
    backend.instance_shutdown(InstanceShutdownRequest(name="vm1", hypervisor="fake", timeout=1))
    backend.instance_shutdown(InstanceShutdownRequest(name="vm1", hypervisor="fake", timeout=1))
    assert backend.instance_info(InstanceInfoRequest(name="vm1", hypervisor="fake")).info is None
    assert backend.locks.held() == []


def test_start_with_missing_volume_names_disk_and_starts_nothing(
    backend: NodeBackend, paths: Paths
) -> None:
    d0 = make_disk(backend, paths, "vm1", 0)
    gone = DiskRef(
        index=1,
        volume=VolumeSpec(
            dev_type="file", logical_id=os.path.join(paths.file_storage_dir, "vm1/gone"), size=8
        ),
    )
    with pytest.raises(StorageError) as exc:
        backend.instance_start(InstanceStartRequest(instance=spec(), disks=[d0, gone]))
    assert exc.value.kind is ErrorKind.NOT_FOUND
    assert str(exc.value).startswith("disk 1:")
    assert exc.value.fields["disk_index"] == 1
    assert backend.instance_list(InstanceListRequest(hypervisors=["fake"])).instances["fake"] == []


def test_start_with_bad_hvparams_starts_nothing(backend: NodeBackend) -> None:
    with pytest.raises(CorralError) as exc:
        backend.instance_start(InstanceStartRequest(instance=spec(nope=1), disks=[]))
    assert exc.value.kind is ErrorKind.INVALID
    assert backend.instance_list(InstanceListRequest(hypervisors=["fake"])).instances["fake"] == []


def test_reboot_of_stopped_instance_fails(backend: NodeBackend) -> None:
    with pytest.raises(HypervisorError) as exc:
        backend.instance_reboot(
            InstanceRebootRequest(instance=spec(), disks=[], reboot_type="hard")
        )
    assert exc.value.kind is ErrorKind.WRONG_STATE


def test_balloon_refused_without_capability(paths: Paths) -> None:
    class NoBalloon(FakeHypervisor):
        CAPABILITIES = Capabilities(balloon=False, runs_processes=False)

    drv = NoBalloon(paths.hv_run_dir("fake"))
    nb = NodeBackend(paths, "n", get_hypervisor=lambda name: drv)
    with pytest.raises(HypervisorError) as exc:
        nb.instance_balloon(InstanceBalloonRequest(name="vm1", hypervisor="fake", memory=64))
    assert exc.value.kind is ErrorKind.INVALID


def test_concurrent_starts_of_one_instance_are_serialised(backend: NodeBackend) -> None:
    """Without the per-instance lock the second start would hit "already running"."""
    errors: list[BaseException] = []

    def start() -> None:
        try:
            backend.instance_start(
                InstanceStartRequest(instance=spec("vmx", boot_delay=0.3), disks=[])
            )
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert backend.instance_list(InstanceListRequest(hypervisors=["fake"])).instances == {
        "fake": ["vmx"]
    }


def test_different_instances_start_in_parallel(backend: NodeBackend) -> None:
    threads = [
        threading.Thread(
            target=backend.instance_start,
            args=(InstanceStartRequest(instance=spec(f"vm{i}", boot_delay=0.5), disks=[]),),
        )
        for i in range(4)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert time.monotonic() - t0 < 1.5  # 4 x 0.5 s would be 2 s if serialised
    names = backend.instance_list(InstanceListRequest(hypervisors=["fake"])).instances["fake"]
    assert names == ["vm0", "vm1", "vm2", "vm3"]


# --- block devices and hooks through the facade ------------------------------------------


def test_blockdev_calls(backend: NodeBackend, paths: Paths) -> None:
    require_tool("qemu-img")
    v = VolumeSpec(
        dev_type="file",
        logical_id=os.path.join(paths.file_storage_dir, "vm1/d0"),
        size=16,
        format="qcow2",
    )
    created = backend.blockdev_create(BlockdevRequest(volume=v)).info
    assert created is not None and created.size == 16
    grown = backend.blockdev_grow(BlockdevGrowRequest(volume=v, amount=16)).info
    assert grown is not None and grown.size == 32
    new_id = os.path.join(paths.file_storage_dir, "vm2/d0")
    renamed = backend.blockdev_rename(BlockdevRenameRequest(volume=v, new_logical_id=new_id)).info
    assert renamed is not None and renamed.path == new_id
    v2 = v.model_copy(update={"logical_id": new_id})
    sizes = backend.blockdev_getsizes(BlockdevSizesRequest(volumes=[v2, v])).sizes
    assert sizes == [32, None]
    backend.blockdev_remove(BlockdevRequest(volume=v2))
    assert backend.blockdev_find(BlockdevRequest(volume=v2)).info is None
    with pytest.raises(StorageError) as exc:
        backend.blockdev_create(BlockdevRequest(volume=v.model_copy(update={"dev_type": "rbd"})))
    assert exc.value.kind is ErrorKind.INVALID


def test_hooks_run(backend: NodeBackend, paths: Paths) -> None:
    d = Path(paths.hooks_dir) / "instance-add-pre.d"
    d.mkdir(parents=True)
    script = d / "10-check"
    script.write_text('#!/bin/sh\necho "adding $GANETI_INSTANCE_NAME"\n')
    script.chmod(0o755)
    resp = backend.hooks_run(
        HooksRunRequest(hpath="instance-add", phase="pre", env={"GANETI_INSTANCE_NAME": "vm9"})
    )
    assert [(r.script, r.status, r.output) for r in resp.results] == [
        ("instance-add-pre.d/10-check", "success", "adding vm9")
    ]

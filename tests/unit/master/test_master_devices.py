"""Disk and NIC changes of OP_INSTANCE_SET_PARAMS, hotplug decisions, rollback, CPU masks.

Master service -> real NodeBackend -> the ``fake`` hypervisor (a product feature that records
hot-plugged devices in its instance file); disks are real files of the real file storage
driver. The only fake is the transport (``FakeInProcessRunner``, see master_fakes.py); where a
node failure is needed, the test wraps it to make one call fail (named in the test).
Real QEMU hotplug runs in tests/integration/test_kvm_hotplug.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from master_fakes import (
    FakeInProcessRunner,
    assert_ok,
    create_op,
    error_of,
    install_test_os,
    run_ops,
    seed_cluster,
)

from corral.common.errors import ErrorKind, HypervisorError, ParamError
from corral.common.paths import Paths
from corral.master.service import MasterService
from corral.node.backend import NodeBackend
from corral.objects.opcodes import OpInstanceSetParams, OpInstanceShutdown
from corral.store.sqlite import SqliteStore

MiB = 1024 * 1024


@dataclasses.dataclass
class Env:
    service: MasterService
    runner: FakeInProcessRunner
    paths: Paths
    fsd: str

    def fake_state(self, name: str = "vm1") -> dict[str, Any]:
        with open(os.path.join(self.paths.hv_run_dir("fake"), f"{name}.json")) as fh:
            data: dict[str, Any] = json.load(fh)
        return data

    def fail_hotplug(self, action: str, device: str) -> None:
        """Make the node's instance_hotplug fail for one action (a FAKE node failure)."""
        call = self.runner.call

        async def failing(
            node: Any, rpc: Any, request: Any, *, timeout: float | None = None
        ) -> Any:
            if rpc.name == "instance_hotplug" and (request.action, request.device) == (
                action,
                device,
            ):
                raise HypervisorError(
                    f"injected failure of {action} {device}", kind=ErrorKind.ENVIRONMENT
                )
            return await call(node, rpc, request, timeout=timeout)

        self.runner.call = failing  # type: ignore[method-assign]


@pytest.fixture
async def env(tmp_path) -> AsyncIterator[Env]:
    paths = Paths(str(tmp_path / "root"))
    paths.ensure()
    store = SqliteStore(paths.store_db)
    seed_cluster(store, file_storage_dir=paths.file_storage_dir, hypervisors=("fake",))
    install_test_os(paths)
    runner = FakeInProcessRunner({"node1": NodeBackend(paths, "node1")})
    service = MasterService(store, runner, paths, watch_interval=0)
    await service.start()
    try:
        assert_ok(await run_ops(service, create_op()))
        yield Env(service, runner, paths, paths.file_storage_dir)
    finally:
        await service.stop(grace=2)
        store.close()


def modify(**kw: Any) -> OpInstanceSetParams:
    return OpInstanceSetParams(instance_name="vm1", **kw)


async def test_disk_added_to_a_running_instance_is_hot_plugged(env: Env) -> None:
    svc = env.service
    job = await run_ops(svc, modify(disks=[["add", -1, {"size": 32, "name": "data"}]]))
    assert_ok(job)
    assert job.ops[0].result == [["disk/1", "add:size=32,mode=rw"], ["disk/1", "hotplug:done"]]
    inst = svc.instance("vm1")
    assert [d.size for d in inst.disks] == [64, 32] and inst.disks[1].name == "data"
    path = inst.disks[1].logical_id
    assert path == os.path.join(env.fsd, "vm1", "disk1") and os.path.getsize(path) == 32 * MiB
    devices = env.fake_state()["disk_devices"]
    assert [(d["index"], d["uuid"]) for d in devices] == [
        (i, d.uuid) for i, d in enumerate(inst.disks)
    ]

    # removed by name; the guest lets go first, then the file goes
    job = await run_ops(svc, modify(disks=[["remove", "data", {}]], hotplug=True))
    assert_ok(job)
    assert ["disk/1", "remove"] in job.ops[0].result
    assert len(svc.instance("vm1").disks) == 1 and not os.path.exists(path)
    assert len(env.fake_state()["disk_devices"]) == 1


async def test_no_hotplug_applies_at_next_start_and_refuses_disk_removal(env: Env) -> None:
    svc = env.service
    assert_ok(await run_ops(svc, modify(disks=[["add", {"size": 16}]], hotplug=False)))  # legacy
    assert len(svc.instance("vm1").disks) == 2
    assert len(env.fake_state()["disk_devices"]) == 1  # not plugged into the running guest
    job = await run_ops(svc, modify(disks=[["remove", 1, {}]], hotplug=False))
    _, msg, ecode = error_of(job)
    assert ecode == ErrorKind.WRONG_STATE.value and "without hotplug" in msg
    assert len(svc.instance("vm1").disks) == 2


async def test_hotplug_demanded_on_a_stopped_instance_changes_nothing(env: Env) -> None:
    svc = env.service
    assert_ok(await run_ops(svc, OpInstanceShutdown(instance_name="vm1", timeout=0)))
    before = svc.instance("vm1")
    job = await run_ops(svc, modify(disks=[["add", -1, {"size": 16}]], hotplug=True))
    _, msg, ecode = error_of(job)
    assert ecode == ErrorKind.WRONG_STATE.value and "not running" in msg
    assert svc.instance("vm1").disks == before.disks
    assert not os.path.exists(os.path.join(env.fsd, "vm1", "disk1"))
    # the default: recorded for the next start
    assert_ok(await run_ops(svc, modify(disks=[["add", -1, {"size": 16}]])))
    assert len(svc.instance("vm1").disks) == 2


async def test_failed_hot_add_removes_the_new_disk_and_keeps_the_store(env: Env) -> None:
    svc = env.service
    before = svc.instance("vm1")
    env.fail_hotplug("add", "disk")
    job = await run_ops(svc, modify(disks=[["add", -1, {"size": 16}]]))
    _, msg, _ = error_of(job)
    assert "injected failure" in msg
    assert svc.instance("vm1").disks == before.disks
    assert not os.path.exists(os.path.join(env.fsd, "vm1", "disk1"))
    log = [e.message for e in job.all_log()]
    assert any("rolled back: creation of disk 1" in m for m in log)


async def test_failure_of_a_later_step_undoes_the_earlier_hotplugs(env: Env) -> None:
    svc = env.service
    before = svc.instance("vm1")
    env.fail_hotplug("add", "nic")
    job = await run_ops(
        svc,
        modify(disks=[["add", -1, {"size": 16}]], nics=[["add", -1, {"link": "br9"}]]),
    )
    error_of(job)
    assert svc.instance("vm1").disks == before.disks and svc.instance("vm1").nics == before.nics
    assert len(env.fake_state()["disk_devices"]) == 1  # the hot-added disk was unplugged
    assert not os.path.exists(os.path.join(env.fsd, "vm1", "disk1"))


async def test_nic_add_modify_remove(env: Env) -> None:
    svc = env.service
    job = await run_ops(svc, modify(nics=[["add", -1, {"link": "br0", "name": "data"}]]))
    assert_ok(job)
    inst = svc.instance("vm1")
    assert len(inst.nics) == 2 and inst.nics[1].nicparams == {"link": "br0"}
    nics = env.fake_state()["nic_devices"]
    assert [(n["uuid"], n["link"]) for n in nics] == [
        (inst.nics[0].uuid, ""),
        (inst.nics[1].uuid, "br0"),
    ]
    assert job.ops[0].result[0][0] == "nic.1" and job.ops[0].result[0][1].startswith("add:mac=")

    job = await run_ops(svc, modify(nics=[["modify", "data", {"link": "br1", "ip": "192.0.2.9"}]]))
    assert_ok(job)
    assert ["nic.link/1", "br1"] in job.ops[0].result and ["nic.ip/1", "192.0.2.9"] in job.ops[
        0
    ].result
    assert env.fake_state()["nic_devices"][1]["link"] == "br1"
    assert svc.instance("vm1").nics[1].ip == "192.0.2.9"

    assert_ok(await run_ops(svc, modify(nics=[["remove", 0, {}]])))
    inst = svc.instance("vm1")
    assert [n.name for n in inst.nics] == ["data"]
    assert [n["uuid"] for n in env.fake_state()["nic_devices"]] == [inst.nics[0].uuid]


async def test_bad_modifications_are_refused_at_submission(env: Env) -> None:
    svc = env.service
    cases = [
        ({"disks": [["attach", -1, {"name": "x"}]]}, "disks.0", "attach"),
        ({"disks": [["grow", 0, {}]]}, "disks.0", "unknown action"),
        ({"disks": [["add", -1, {}]]}, "disks.0.size", "needs a size"),
        ({"disks": [["add", -1, {"size": "lots"}]]}, "disks.0.size", ""),
        ({"disks": [["remove", 0, {"size": 1}]]}, "disks.0", "no parameters"),
        ({"disks": [["modify", 0, {"size": 1}]]}, "disks.0", "unknown parameter"),
        ({"nics": [["add", -1, {"mac": "zz"}]]}, "nics.0.mac", "not a MAC"),
        ({"nics": [["add", -1, {"mode": "tunnel"}]]}, "nics.0.mode", ""),
    ]
    for fields, key, needle in cases:
        with pytest.raises(ParamError) as err:
            await svc.submit_job([modify(**fields)])
        assert key in err.value.problems, (fields, err.value.problems)
        assert needle in err.value.problems[key]
    # hvparams need the instance's hypervisor: checked when the job runs
    _, msg, ecode = error_of(await run_ops(svc, modify(hvparams={"cpu_mask": "0-x"})))
    assert ecode == ErrorKind.INVALID.value and "cpu_mask" in msg and "not a CPU" in msg


async def test_unknown_device_and_last_disk(env: Env) -> None:
    svc = env.service
    _, msg, ecode = error_of(await run_ops(svc, modify(disks=[["remove", 5, {}]])))
    assert ecode == ErrorKind.NOT_FOUND.value and "disks.0" in msg
    _, msg, ecode = error_of(await run_ops(svc, modify(nics=[["modify", "nosuch", {"link": "x"}]])))
    assert ecode == ErrorKind.NOT_FOUND.value
    _, msg, _ = error_of(await run_ops(svc, modify(disks=[["remove", 0, {}]])))
    assert "last disk" in msg


async def test_cpu_mask_must_fit_the_vcpus_and_is_applied_at_runtime(env: Env) -> None:
    svc = env.service
    job = await run_ops(svc, create_op("vm2", hvparams={"cpu_mask": "0:0"}))
    _, msg, _ = error_of(job)  # vcpus=1, two masks
    assert "cpu_mask" in msg and "per-vCPU" in msg
    assert svc.instances() and "vm2" not in [i.name for i in svc.instances()]

    job = await run_ops(svc, modify(hvparams={"cpu_mask": "0"}))
    assert_ok(job)
    assert env.fake_state()["cpu_mask"] == "0"  # pinned on the running instance
    assert svc.instance("vm1").hvparams["cpu_mask"] == "0"
    job = await run_ops(svc, modify(beparams={"vcpus": 2}, hvparams={"cpu_mask": "0:0:0"}))
    _, msg, _ = error_of(job)
    assert "cpu_mask" in msg
    assert env.fake_state()["cpu_mask"] == "0" and svc.instance("vm1").hvparams["cpu_mask"] == "0"

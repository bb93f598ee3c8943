"""Instance operations end to end: master service -> real NodeBackend with the fake hypervisor.

The only fake is the transport (``FakeInProcessRunner``: calls go to the real node backend in
this process instead of over mutual-TLS HTTPS). Disks are real files made by the real file
storage driver in a temporary root, OS scripts are real scripts of a small test OS definition.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator

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
from corral.objects.instance import AdminState
from corral.objects.opcodes import (
    DiskArg,
    NicArg,
    OpInstanceConsole,
    OpInstanceGrowDisk,
    OpInstanceQueryData,
    OpInstanceReboot,
    OpInstanceReinstall,
    OpInstanceRemove,
    OpInstanceRename,
    OpInstanceSetParams,
    OpInstanceShutdown,
    OpInstanceStartup,
    OpOsDiagnose,
    OpTagsDel,
    OpTagsSet,
)
from corral.store.sqlite import SqliteStore

MiB = 1024 * 1024


@dataclasses.dataclass
class Env:
    service: MasterService
    runner: FakeInProcessRunner
    paths: Paths
    fsd: str

    def disk(self, instance: str, index: int = 0) -> str:
        return os.path.join(self.fsd, instance, f"disk{index}")

    def head(self, instance: str, size: int = 80, offset: int = 0) -> str:
        with open(self.disk(instance), "rb") as fh:
            fh.seek(offset)
            return fh.read(size).split(b"\n")[0].decode()


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
        yield Env(service, runner, paths, paths.file_storage_dir)
    finally:
        await service.stop(grace=2)
        store.close()


async def test_instance_lifecycle(env: Env):
    svc = env.service
    # create + start
    job = await run_ops(svc, create_op())
    assert_ok(job)
    assert job.ops[0].result == ["node1"]
    inst = svc.instance("vm1")
    assert inst.admin_state is AdminState.UP
    assert inst.disks[0].logical_id == env.disk("vm1")
    assert inst.nics[0].mac.startswith("aa:00:00:")
    assert env.head("vm1") == "installed vm1 hello reinstall=0"
    assert os.path.getsize(env.disk("vm1")) == 64 * MiB
    live = await svc.live_instances()
    assert live["vm1"].memory == 256
    messages = [e.message for e in job.all_log()]
    assert any("creating disk 0" in m for m in messages)
    assert any("installing OS testos" in m for m in messages)

    # query data and console
    job = await run_ops(svc, OpInstanceQueryData(instances=["vm1"]))
    assert_ok(job)
    data = job.ops[0].result["vm1"]
    assert data["run_state"] == "up" and data["config_state"] == "up"
    assert data["oper_state"] == "running"
    assert data["pnode"] == "node1" and data["disk_template"] == "file"
    assert data["disks"][0]["size"] == 64 and data["disks"][0]["pstatus"]["size"] == 64
    assert data["be_actual"]["maxmem"] == 256 and data["hv_actual"]["boot_delay"] == 0.0
    job = await run_ops(svc, OpInstanceConsole(instance_name="vm1"))
    assert_ok(job)
    assert job.ops[0].result["instance"] == "vm1" and job.ops[0].result["kind"] == "msg"

    # reboot (hard) counts on the fake hypervisor
    assert_ok(await run_ops(svc, OpInstanceReboot(instance_name="vm1", reboot_type="hard")))
    assert (await svc.live_instances())["vm1"].details["reboots"] == 1

    # runtime memory within [minmem, maxmem]; parameter changes stored
    job = await run_ops(
        svc, OpInstanceSetParams(instance_name="vm1", runtime_mem=100, beparams={"vcpus": 2})
    )
    assert_ok(job)
    assert ["runtime_memory", 100] in job.ops[0].result and ["be/vcpus", 2] in job.ops[0].result
    assert (await svc.live_instances())["vm1"].memory == 100
    assert svc.instance("vm1").beparams["vcpus"] == 2
    job = await run_ops(svc, OpInstanceSetParams(instance_name="vm1", runtime_mem=1000))
    cls, msg, ecode = error_of(job)
    assert cls == "OpPrereqError" and ecode == ErrorKind.INVALID.value and "runtime_mem" in msg
    # a raised maxmem applies at the next start: the running guest keeps its bounds
    assert_ok(
        await run_ops(svc, OpInstanceSetParams(instance_name="vm1", beparams={"maxmem": 512}))
    )
    job = await run_ops(svc, OpInstanceSetParams(instance_name="vm1", runtime_mem=400))
    cls, msg, ecode = error_of(job)
    assert ecode == ErrorKind.INVALID.value and "next start" in msg and "256 MiB" in msg
    assert_ok(
        await run_ops(svc, OpInstanceSetParams(instance_name="vm1", beparams={"maxmem": 256}))
    )

    # grow the disk
    assert_ok(await run_ops(svc, OpInstanceGrowDisk(instance_name="vm1", disk=0, amount=32)))
    assert svc.instance("vm1").disks[0].size == 96
    assert os.path.getsize(env.disk("vm1")) == 96 * MiB
    job = await run_ops(
        svc, OpInstanceGrowDisk(instance_name="vm1", disk=0, amount=50, absolute=True)
    )
    assert "not larger" in error_of(job)[1]

    # startup of a running instance is a no-op success
    job = await run_ops(svc, OpInstanceStartup(instance_name="vm1"))
    assert_ok(job)
    assert any("already running" in e.message for e in job.all_log())

    # rename needs a stopped instance
    job = await run_ops(svc, OpInstanceRename(instance_name="vm1", new_name="vm2"))
    assert error_of(job)[2] == ErrorKind.WRONG_STATE.value
    assert_ok(await run_ops(svc, OpInstanceShutdown(instance_name="vm1", timeout=5)))
    assert svc.instance("vm1").admin_state is AdminState.DOWN
    assert "vm1" not in await svc.live_instances()
    job = await run_ops(svc, OpInstanceRename(instance_name="vm1", new_name="vm2"))
    assert_ok(job)
    assert job.ops[0].result == "vm2"
    assert [i.name for i in svc.instances()] == ["vm2"]
    assert svc.instance("vm2").disks[0].logical_id == env.disk("vm2")
    assert not os.path.exists(os.path.join(env.fsd, "vm1"))
    assert env.head("vm2", offset=512) == "renamed vm1 vm2"

    # reinstall with new OS parameters
    job = await run_ops(svc, OpInstanceReinstall(instance_name="vm2", osparams={"marker": "again"}))
    assert_ok(job)
    assert env.head("vm2") == "installed vm2 again reinstall=1"
    assert svc.instance("vm2").osparams == {"marker": "again"}

    # start again, then remove everything
    assert_ok(await run_ops(svc, OpInstanceStartup(instance_name="vm2")))
    assert "vm2" in await svc.live_instances()
    job = await run_ops(svc, OpInstanceRemove(instance_name="vm2", shutdown_timeout=5))
    assert_ok(job)
    assert svc.instances() == []
    assert await svc.live_instances() == {}
    assert not os.path.exists(os.path.join(env.fsd, "vm2"))


async def test_startup_shutdown_no_remember(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op(start=False)))
    assert svc.instance("vm1").admin_state is AdminState.DOWN
    assert_ok(await run_ops(svc, OpInstanceStartup(instance_name="vm1", no_remember=True)))
    assert "vm1" in await svc.live_instances()
    assert svc.instance("vm1").admin_state is AdminState.DOWN
    assert_ok(await run_ops(svc, OpInstanceStartup(instance_name="vm1")))
    assert svc.instance("vm1").admin_state is AdminState.UP
    assert_ok(await run_ops(svc, OpInstanceShutdown(instance_name="vm1", no_remember=True)))
    assert "vm1" not in await svc.live_instances()
    assert svc.instance("vm1").admin_state is AdminState.UP
    job = await run_ops(svc, OpInstanceReboot(instance_name="vm1"))
    assert error_of(job)[2] == ErrorKind.WRONG_STATE.value
    job = await run_ops(svc, OpInstanceConsole(instance_name="vm1"))
    _cls, msg, ecode = error_of(job)
    assert ecode == ErrorKind.WRONG_STATE.value and "ERROR_down" in msg
    job = await run_ops(svc, OpInstanceQueryData(instances=["vm1"]))
    assert job.ops[0].result["vm1"]["oper_state"] == "ERROR_down"


async def test_os_script_failure_rolls_back(env: Env):
    svc = env.service
    job = await run_ops(svc, create_op(osparams={"fail": "yes"}))
    cls, msg, _ = error_of(job)
    assert cls == "OpExecError"
    assert "disk layout refused for vm1" in msg  # the script's stderr
    log = "\n".join(e.message for e in job.all_log())
    assert "disk layout refused for vm1" in log
    assert "rolled back: disk 0" in log
    assert svc.instances() == []
    assert not os.path.exists(os.path.join(env.fsd, "vm1"))
    assert await svc.live_instances() == {}


async def test_start_failure_rolls_back_store_and_disks(env: Env):
    """A start refused by the node undoes everything (the refusal is injected at the
    transport, standing in for QEMU refusing to start)."""
    env.runner.fail_calls["instance_start"] = HypervisorError("qemu: could not open disk")
    job = await run_ops(env.service, create_op())
    assert "could not open disk" in error_of(job)[1]
    assert env.service.instances() == []
    assert not os.path.exists(env.disk("vm1"))


async def test_duplicate_name_refused_before_anything(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op(start=False, no_install=True)))
    env.runner.calls.clear()
    job = await run_ops(svc, create_op())
    cls, msg, ecode = error_of(job)
    assert (cls, ecode) == ("OpPrereqError", ErrorKind.EXISTS.value)
    assert "vm1" in msg
    assert "blockdev_create" not in env.runner.names()
    assert env.runner.names() == []


async def test_bad_parameters_name_the_key(env: Env):
    svc = env.service
    with pytest.raises(ParamError) as err:
        await svc.submit_job([create_op(beparams={"maxmem": "lots"})])
    assert "maxmem" in str(err.value)
    with pytest.raises(ParamError) as err:
        await svc.submit_job([create_op(name="bad;name")])
    assert "instance_name" in err.value.problems
    with pytest.raises(ParamError) as err:
        await svc.submit_job([create_op(disks=[DiskArg(size=0)])])
    assert "disks.0.size" in err.value.problems
    with pytest.raises(ParamError) as err:
        await svc.submit_job([create_op(nics=[NicArg(mac="zz:zz")])])
    assert "nics.0.mac" in err.value.problems
    job = await run_ops(svc, create_op(hvparams={"bogus_key": 1}))
    assert "bogus_key" in error_of(job)[1]
    job = await run_ops(svc, create_op(beparams={"minmem": "512M", "maxmem": "256M"}))
    assert "minmem" in error_of(job)[1]
    env.runner.calls.clear()
    job = await run_ops(svc, create_op(os_type="nosuchos"))
    assert error_of(job)[2] == ErrorKind.NOT_FOUND.value
    assert "blockdev_create" not in env.runner.names()
    job = await run_ops(svc, create_op(hypervisor="kvm"))
    assert "not enabled" in error_of(job)[1]
    assert svc.instances() == []


async def test_not_enough_memory(env: Env):
    job = await run_ops(env.service, create_op(beparams={"memory": "3T"}))
    _cls, msg, ecode = error_of(job)
    assert ecode == ErrorKind.NO_RESOURCES.value and "memory" in msg
    assert env.service.instances() == []


async def test_explicit_mac_must_be_unique(env: Env):
    svc = env.service
    mac = "aa:00:00:12:34:56"
    assert_ok(await run_ops(svc, create_op(nics=[NicArg(mac=mac)], start=False)))
    assert svc.instance("vm1").nics[0].mac == mac
    job = await run_ops(svc, create_op("vm2", nics=[NicArg(mac=mac.upper())], start=False))
    assert error_of(job)[2] == ErrorKind.NOT_UNIQUE.value


async def test_remove_with_ignore_failures(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op()))
    env.runner.fail_calls["blockdev_remove"] = HypervisorError("disk busy")
    job = await run_ops(svc, OpInstanceRemove(instance_name="vm1"))
    assert "disk busy" in error_of(job)[1]
    assert [i.name for i in svc.instances()] == ["vm1"]
    job = await run_ops(svc, OpInstanceRemove(instance_name="vm1", ignore_failures=True))
    assert_ok(job)
    assert svc.instances() == []
    assert any("ignored" in e.message for e in job.all_log())


async def test_tags_and_os_diagnose(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op(start=False, no_install=True)))
    assert_ok(await run_ops(svc, OpTagsSet(kind="instance", name="vm1", tags=["a", "b:c"])))
    assert svc.instance("vm1").tags == ["a", "b:c"]
    assert_ok(await run_ops(svc, OpTagsDel(kind="instance", name="vm1", tags=["a"])))
    assert svc.instance("vm1").tags == ["b:c"]
    with pytest.raises(ParamError):
        await svc.submit_job([OpTagsSet(kind="instance", name="vm1", tags=["bad tag"])])
    job = await run_ops(svc, OpTagsSet(kind="node", name="ghost", tags=["x"]))
    assert error_of(job)[2] == ErrorKind.NOT_FOUND.value
    job = await run_ops(svc, OpOsDiagnose(output_fields=["name", "valid", "parameters"]))
    assert_ok(job)
    rows = {r[0]: r for r in job.ops[0].result}
    assert rows["testos"][1] is True
    assert ["fail", "make the create script fail (yes/no)"] in rows["testos"][2]
    merged = {o.name: o for o in await svc.os_diagnose()}
    assert merged["testos"].valid


async def test_live_reads_skip_unreachable_nodes(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op()))
    env.runner.unreachable.add("node1")
    assert await svc.live_instances() == {}
    assert await svc.live_nodes() == {"node1": None}
    env.runner.unreachable.clear()
    nodes = await svc.live_nodes()
    assert nodes["node1"] is not None and nodes["node1"].memory_total > 0

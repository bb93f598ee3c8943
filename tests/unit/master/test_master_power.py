"""Pause/resume/suspend/unsuspend and the user-down watcher, master -> real NodeBackend.

The transport is the FAKE in-process runner (``master_fakes.FakeInProcessRunner``) and the
instances run on the ``fake`` hypervisor (a product feature with the KVM driver's contracts).
A guest powering itself off is simulated by writing state ``shutdown`` into the fake
instance's file — what the KVM driver reports after QEMU's SHUTDOWN event; the real thing is
tested in tests/integration/test_kvm_lifecycle.py and test_e2e_kvm_power.py.
"""

from __future__ import annotations

import dataclasses
import json
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
    wait_job,
    write_hook,
)

from corral.api.fields.base import InstanceContext
from corral.api.fields.instance import instance_status
from corral.common.errors import ErrorKind
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceState
from corral.master.service import MasterService
from corral.master.watcher import Watcher, interval_from_env
from corral.node.backend import NodeBackend
from corral.objects.instance import AdminState, AdminStateSource
from corral.objects.opcodes import (
    OpInstancePause,
    OpInstanceQueryData,
    OpInstanceRemove,
    OpInstanceRename,
    OpInstanceResume,
    OpInstanceShutdown,
    OpInstanceStartup,
    OpInstanceSuspend,
    OpInstanceUnsuspend,
)
from corral.store.sqlite import SqliteStore


@dataclasses.dataclass
class Env:
    service: MasterService
    runner: FakeInProcessRunner
    paths: Paths

    def fake_file(self, name: str) -> str:
        return os.path.join(self.paths.hv_run_dir("fake"), f"{name}.json")

    def set_fake_state(self, name: str, state: str) -> None:
        with open(self.fake_file(name)) as fh:
            data = json.load(fh)
        data["state"] = state
        with open(self.fake_file(name), "w") as fh:
            json.dump(data, fh)

    async def state(self, name: str) -> InstanceState | None:
        info = (await self.service.live_instances()).get(name)
        return info.state if info else None

    async def status(self, name: str) -> str:
        svc = self.service
        ctx = InstanceContext(
            cluster=svc.cluster(),
            nodes={n.name: n for n in svc.nodes()},
            live=await svc.live_instances(),
            bad_nodes=frozenset(),
        )
        return instance_status(ctx, svc.instance(name))


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
        yield Env(service, runner, paths)
    finally:
        await service.stop(grace=2)
        store.close()


async def test_pause_and_resume(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op()))
    job = await run_ops(svc, OpInstanceResume(instance_name="vm1"))
    assert error_of(job)[2] == ErrorKind.WRONG_STATE.value  # running, not paused
    assert_ok(await run_ops(svc, OpInstancePause(instance_name="vm1")))
    assert await env.state("vm1") is InstanceState.PAUSED
    # Ganeti has no paused status: still "running", the Corral field says paused
    assert await env.status("vm1") == "running"
    data = (await run_ops(svc, OpInstanceQueryData(instances=["vm1"]))).ops[0].result["vm1"]
    assert data["hv_state"] == "paused" and data["oper_state"] == "running"
    job = await run_ops(svc, OpInstancePause(instance_name="vm1"))
    assert error_of(job)[2] == ErrorKind.WRONG_STATE.value and "paused" in error_of(job)[1]
    assert_ok(await run_ops(svc, OpInstanceResume(instance_name="vm1")))
    assert await env.state("vm1") is InstanceState.RUNNING
    assert svc.instance("vm1").admin_state is AdminState.UP
    assert_ok(await run_ops(svc, OpInstanceShutdown(instance_name="vm1", timeout=0)))
    job = await run_ops(svc, OpInstancePause(instance_name="vm1"))
    assert error_of(job)[2] == ErrorKind.WRONG_STATE.value and "not running" in error_of(job)[1]


async def test_suspend_unsuspend_and_hooks(env: Env, tmp_path):
    svc = env.service
    assert_ok(await run_ops(svc, create_op()))
    out = tmp_path / "hook.env"
    write_hook(
        env.paths,
        "instance-suspend",
        "post",
        "10-dump",
        f'echo "$GANETI_HOOKS_PATH $GANETI_INSTANCE_NAME $GANETI_POST_SUSPEND_FILE" > {out}\n',
    )
    job = await run_ops(svc, OpInstanceSuspend(instance_name="vm1"))
    assert_ok(job)
    state_file = os.path.join(env.paths.data_dir, "suspend", "fake", "vm1.state")
    assert job.ops[0].result == state_file and os.path.isfile(state_file)
    inst = svc.instance("vm1")
    assert inst.suspended and inst.suspend_file == state_file
    assert inst.admin_state is AdminState.DOWN
    assert await env.state("vm1") is None
    assert await env.status("vm1") == "ADMIN_down"
    assert out.read_text().split() == ["instance-suspend", "vm1", state_file]

    # a suspended instance is neither started from scratch, nor renamed, nor suspended again
    for op in (
        OpInstanceStartup(instance_name="vm1"),
        OpInstanceRename(instance_name="vm1", new_name="vm9"),
        OpInstanceSuspend(instance_name="vm1"),
        OpInstanceResume(instance_name="vm1"),
    ):
        job = await run_ops(svc, op)
        assert error_of(job)[2] == ErrorKind.WRONG_STATE.value, op
        assert "suspended" in error_of(job)[1]

    assert_ok(await run_ops(svc, OpInstanceUnsuspend(instance_name="vm1")))
    inst = svc.instance("vm1")
    assert not inst.suspended and inst.suspend_file == ""
    assert inst.admin_state is AdminState.UP
    assert await env.state("vm1") is InstanceState.RUNNING
    assert not os.path.exists(state_file)
    job = await run_ops(svc, OpInstanceUnsuspend(instance_name="vm1"))
    assert error_of(job)[2] == ErrorKind.WRONG_STATE.value


async def test_a_paused_instance_is_restored_paused(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op()))
    assert_ok(await run_ops(svc, OpInstancePause(instance_name="vm1")))
    assert_ok(await run_ops(svc, OpInstanceSuspend(instance_name="vm1")))
    assert_ok(await run_ops(svc, OpInstanceUnsuspend(instance_name="vm1")))
    assert await env.state("vm1") is InstanceState.PAUSED


async def test_stopping_or_removing_a_suspended_instance_discards_its_state(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op()))
    assert_ok(await run_ops(svc, OpInstanceSuspend(instance_name="vm1")))
    state_file = svc.instance("vm1").suspend_file
    job = await run_ops(svc, OpInstanceShutdown(instance_name="vm1", timeout=0))
    assert_ok(job)
    assert any("discarded the saved state" in e.message for e in job.all_log())
    assert not svc.instance("vm1").suspended and not os.path.exists(state_file)
    assert_ok(await run_ops(svc, OpInstanceStartup(instance_name="vm1")))  # a fresh start
    assert_ok(await run_ops(svc, OpInstanceSuspend(instance_name="vm1")))
    assert os.path.exists(state_file)
    assert_ok(await run_ops(svc, OpInstanceRemove(instance_name="vm1", shutdown_timeout=0)))
    assert not os.path.exists(state_file)


async def test_watcher_records_a_guest_poweroff_as_user_down(env: Env):
    svc = env.service
    watcher = Watcher(svc, interval=0)
    assert_ok(await run_ops(svc, create_op()))
    assert await watcher.user_down() == {}  # running: nothing to do

    env.set_fake_state("vm1", "shutdown")  # the guest powered itself off
    assert await env.status("vm1") == "USER_down"  # before the watcher: live state says so
    submitted = await watcher.user_down()
    assert list(submitted) == ["vm1"]
    assert await watcher.user_down() == {}  # its job is in flight or done: not twice
    assert_ok(await wait_job(svc, submitted["vm1"], 20))
    inst = svc.instance("vm1")
    assert inst.admin_state is AdminState.DOWN
    assert inst.admin_state_source is AdminStateSource.USER
    assert await env.state("vm1") is None  # the node cleaned up
    assert await env.status("vm1") == "USER_down"
    data = (await run_ops(svc, OpInstanceQueryData(instances=["vm1"]))).ops[0].result["vm1"]
    assert data["oper_state"] == "USER_down" and data["admin_state_source"] == "user"

    # a start makes it the administrator's again
    assert_ok(await run_ops(svc, OpInstanceStartup(instance_name="vm1")))
    assert svc.instance("vm1").admin_state_source is AdminStateSource.ADMIN
    assert await env.status("vm1") == "running"


async def test_a_stale_user_down_request_leaves_a_restarted_instance_alone(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op()))
    # the watcher saw it powered off, but it was started again before the job ran
    job = await run_ops(
        svc, OpInstanceShutdown(instance_name="vm1", timeout=0, admin_state_source="user")
    )
    assert_ok(job)
    assert any("nothing to do" in e.message for e in job.all_log())
    assert svc.instance("vm1").admin_state is AdminState.UP
    assert await env.state("vm1") is InstanceState.RUNNING


async def test_crashed_guest_is_not_user_down(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op()))
    os.unlink(env.fake_file("vm1"))  # gone without a trace, like a killed QEMU
    assert await Watcher(svc).user_down() == {}
    assert await env.status("vm1") == "ERROR_down"
    assert svc.instance("vm1").admin_state is AdminState.UP


def test_watcher_interval_from_env(monkeypatch):
    monkeypatch.setenv("CORRAL_WATCHER_INTERVAL", "2.5")
    assert interval_from_env() == 2.5
    monkeypatch.setenv("CORRAL_WATCHER_INTERVAL", "soon")
    assert interval_from_env() == 30.0
    monkeypatch.setenv("CORRAL_WATCHER_INTERVAL", "0")
    assert interval_from_env() == 0.0

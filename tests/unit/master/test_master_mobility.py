"""Instance migrate/failover/move and node evacuate/migrate, master -> real NodeBackends.

Three nodes, each a real ``NodeBackend`` in its own root with certificates from one CA. The
transport between master and nodes is the FAKE in-process runner
(``master_fakes.FakeInProcessRunner``, the HTTPS transport is tested elsewhere); the volume
transfer of ``instance move`` runs over real mutual-TLS sockets between the backends. The
instances run on the ``fake`` hypervisor (a product feature keeping the KVM driver's
migration contracts); real QEMU guests are migrated in tests/integration/test_mobility_*.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
)

from corral.common.errors import ErrorKind, OpError, RpcError
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceState
from corral.master.config import encode, node_key
from corral.master.ops.mobility import migration_live
from corral.master.ops.mobility_steps import choose_target, storage_kind, target_problem
from corral.master.service import MasterService
from corral.node.backend import NodeBackend
from corral.objects.instance import AdminState, Disk, Instance
from corral.objects.node import Node
from corral.objects.opcodes import OpInstanceShutdown
from corral.objects.opcodes_mobility import (
    OpInstanceFailover,
    OpInstanceMigrate,
    OpInstanceMove,
    OpNodeEvacuate,
    OpNodeMigrate,
)
from corral.store.base import Put
from corral.store.sqlite import SqliteStore
from tests.unit.rpc.rpc_fakes import make_pki

NODES = ("node1", "node2", "node3")


@dataclasses.dataclass
class Env:
    service: MasterService
    runner: FakeInProcessRunner
    paths: dict[str, Paths]
    store: SqliteStore
    shared: str

    def fake_file(self, node: str, name: str) -> str:
        return os.path.join(self.paths[node].hv_run_dir("fake"), f"{name}.json")

    def where(self, name: str) -> list[str]:
        """Nodes whose fake hypervisor has the instance."""
        return [n for n in NODES if os.path.exists(self.fake_file(n, name))]

    def state(self, node: str, name: str) -> dict:
        with open(self.fake_file(node, name)) as fh:
            return json.load(fh)

    def set_node(self, name: str, **fields) -> None:
        node = self.service.node(name).model_copy(update=fields)
        self.store.txn([], [Put(node_key(name), encode(node))])

    def fill_memory(self, node: str, mib: int) -> None:
        """A fake instance on ``node`` that uses ``mib`` of its free memory (not in the config)."""
        os.makedirs(self.paths[node].hv_run_dir("fake"), exist_ok=True)
        with open(self.fake_file(node, "hog"), "w") as fh:
            json.dump(
                {
                    "name": "hog",
                    "uuid": "hog",
                    "state": "running",
                    "memory": mib,
                    "min_memory": mib,
                    "max_memory": mib,
                    "vcpus": 1,
                },
                fh,
            )


@pytest.fixture
async def env(tmp_path) -> AsyncIterator[Env]:
    shared = str(tmp_path / "shared")
    os.makedirs(shared)
    ca = None
    paths: dict[str, Paths] = {}
    for name in NODES:
        p = make_pki(str(tmp_path / name), name, ["127.0.0.1"], ca=ca)
        ca = ca or p
        install_test_os(p)
        paths[name] = p
    store = SqliteStore(paths["node1"].store_db)
    seed_cluster(
        store,
        file_storage_dir="/srv/corral/disks",
        hypervisors=("fake",),
        shared_file_storage_dir=shared,
        enabled_disk_templates=["file", "sharedfile", "diskless"],
    )
    store.txn(
        [],
        [Put(node_key(n), encode(Node(name=n, primary_ip="127.0.0.1"))) for n in NODES[1:]],
    )
    runner = FakeInProcessRunner({n: NodeBackend(paths[n], n) for n in NODES})
    service = MasterService(store, runner, paths["node1"], watch_interval=0)
    await service.start()
    try:
        yield Env(service, runner, paths, store, shared)
    finally:
        await service.stop(grace=2)
        store.close()


def shared_vm(name: str = "vm1", **kw) -> object:
    return create_op(name, disk_template="sharedfile", pnode="node1", **kw)


# --- pure pieces ---------------------------------------------------------------------------------


def test_choose_target_takes_most_free_memory_after_reservations():
    free = {"a": 1000, "b": 3000, "c": 3000}
    assert choose_target(free, 500) == "b"  # tie between b and c: the first name
    assert choose_target(free, 500, {"b": 2500}) == "c"
    assert choose_target(free, 2900, {"b": 200, "c": 200}) is None
    assert choose_target({}, 1) is None


def test_target_problem_and_storage_kind():
    n = Node(name="n2", primary_ip="127.0.0.1")
    assert target_problem(n, "n1") is None
    assert "current node" in str(target_problem(n, "n2"))
    assert "offline" in str(target_problem(n.model_copy(update={"offline": True}), "n1"))
    assert "drained" in str(target_problem(n.model_copy(update={"drained": True}), "n1"))
    assert "vm_capable" in str(target_problem(n.model_copy(update={"vm_capable": False}), "n1"))
    inst = Instance(name="i", primary_node="n1", os="x", hypervisor="fake", disk_template="file")
    assert storage_kind(inst) == "none"
    shared = Disk(size=1, dev_type="sharedfile", logical_id="/s/i/disk0")
    local = Disk(size=1, dev_type="file", logical_id="/l/i/disk0")
    assert storage_kind(inst.model_copy(update={"disks": [shared]})) == "shared"
    assert storage_kind(inst.model_copy(update={"disks": [shared, local]})) == "local"


def test_migration_mode_resolution():
    assert migration_live(None, None, {}) is True
    assert migration_live(None, None, {"migration_mode": "non-live"}) is False
    assert migration_live("non-live", None, {}) is False
    assert migration_live(None, False, {"migration_mode": "live"}) is False
    with pytest.raises(Exception, match="contradicts"):
        migration_live("live", False, {})


# --- migrate -------------------------------------------------------------------------------------


async def test_migrate_moves_a_running_instance(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm()))
    disk = svc.instance("vm1").disks[0]
    assert disk.dev_type == "sharedfile" and disk.logical_id.startswith(env.shared + "/")
    assert os.path.isfile(disk.logical_id)  # same path on every node, not re-rooted
    job = await run_ops(svc, OpInstanceMigrate(instance_name="vm1", target_node="node2"))
    assert_ok(job)
    result = job.ops[0].result
    assert result["source"] == "node1" and result["target"] == "node2"
    assert result["mode"] == "live"
    assert svc.instance("vm1").primary_node == "node2"
    assert env.where("vm1") == ["node2"]
    assert env.state("node2", "vm1")["state"] == "running"
    assert "migration" not in env.state("node2", "vm1")
    # the node calls, in order: nothing touched the target before the checks were done
    names = env.runner.names()
    assert names.index("blockdev_find") < names.index("migration_info")
    assert names.index("accept_instance") < names.index("migrate_instance")
    assert names.index("finalize_migration_dst") < names.index("finalize_migration_src")


async def test_migrate_without_target_picks_most_free_memory(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm()))
    env.fill_memory("node2", 1024)
    job = await run_ops(svc, OpInstanceMigrate(instance_name="vm1"))
    assert_ok(job)
    assert job.ops[0].result["target"] == "node3"


async def test_migration_refused_before_anything_moves(env: Env, monkeypatch):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm()))
    assert_ok(await run_ops(svc, create_op("local1", pnode="node1")))

    async def refused(op, kind: ErrorKind, text: str) -> None:
        env.runner.calls.clear()
        job = await run_ops(svc, op)
        _, msg, ecode = error_of(job)
        assert ecode == kind.value and text in msg, (msg, ecode)
        assert not {"accept_instance", "migrate_instance", "instance_shutdown"} & set(
            env.runner.names()
        )
        assert env.where(op.instance_name) == ["node1"]
        assert svc.instance(op.instance_name).primary_node == "node1"

    # offline, drained, not vm_capable, the source itself, unknown
    env.set_node("node2", offline=True)
    await refused(
        OpInstanceMigrate(instance_name="vm1", target_node="node2"),
        ErrorKind.WRONG_STATE,
        "offline",
    )
    env.set_node("node2", offline=False, drained=True)
    await refused(
        OpInstanceMigrate(instance_name="vm1", target_node="node2"),
        ErrorKind.WRONG_STATE,
        "drained",
    )
    env.set_node("node2", drained=False)
    await refused(
        OpInstanceMigrate(instance_name="vm1", target_node="node1"),
        ErrorKind.INVALID,
        "current node",
    )
    await refused(
        OpInstanceMigrate(instance_name="vm1", target_node="node9"), ErrorKind.NOT_FOUND, "node9"
    )
    # no room: node2's memory is taken
    total = (await svc.live_nodes())["node2"].memory_total
    env.fill_memory("node2", total)
    await refused(
        OpInstanceMigrate(instance_name="vm1", target_node="node2"),
        ErrorKind.NO_RESOURCES,
        "not enough memory on node node2",
    )
    os.unlink(env.fake_file("node2", "hog"))
    # another hypervisor version on the target
    # (the in-process nodes share one environment, so VERSION_ENV cannot tell them apart)
    monkeypatch.setattr(
        "corral.hypervisor.fake.FakeHypervisor.node_info",
        _versioned_node_info(env, {"node3": "9.9"}),
    )
    await refused(
        OpInstanceMigrate(instance_name="vm1", target_node="node3"),
        ErrorKind.INVALID,
        "hypervisor versions differ",
    )
    assert_ok(
        await run_ops(
            svc,
            OpInstanceMigrate(instance_name="vm1", target_node="node3", ignore_hvversions=True),
        )
    )
    # local disks: refused, pointing to move
    await refused(
        OpInstanceMigrate(instance_name="local1", target_node="node2"),
        ErrorKind.INVALID,
        "instance move",
    )


def _versioned_node_info(env: Env, versions: dict[str, str]):
    from corral.hypervisor.fake import FakeHypervisor

    original = FakeHypervisor.node_info

    def node_info(self):
        info = original(self)
        for node, version in versions.items():
            if self.run_dir == env.paths[node].hv_run_dir("fake"):
                return info.model_copy(update={"hv_version": version})
        return info.model_copy(update={"hv_version": "fake"})

    return node_info


async def test_migration_refused_when_target_does_not_reach_the_disks(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm()))
    path = svc.instance("vm1").disks[0].logical_id
    os.rename(path, path + ".away")  # as if node2 had not mounted the share
    job = await run_ops(svc, OpInstanceMigrate(instance_name="vm1", target_node="node2"))
    _, msg, ecode = error_of(job)
    assert ecode == ErrorKind.NOT_FOUND.value and "not reachable from node node2" in msg
    os.rename(path + ".away", path)


async def test_failed_migration_leaves_the_instance_on_the_source(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm()))
    env.runner.fail_calls["migrate_instance"] = RpcError(
        "node node1 did not answer", node="node1", reason="timeout"
    )
    job = await run_ops(svc, OpInstanceMigrate(instance_name="vm1", target_node="node2"))
    env.runner.fail_calls.clear()
    _, msg, _ = error_of(job)
    assert "the instance runs on node1" in msg
    assert env.where("vm1") == ["node1"]  # the paused target copy was removed
    assert env.state("node1", "vm1")["state"] == "running"
    assert svc.instance("vm1").primary_node == "node1"


async def test_target_gone_at_finalize_resumes_source_and_cleanup_removes_the_copy(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm()))
    real_call = env.runner.call

    async def call(node, call, request, *, timeout=None):
        if node.name == "node2" and call.name == "finalize_migration_dst":
            raise RpcError(
                f"node {node.name} (127.0.0.1:1811) unreachable: connection refused",
                node=node.name,
                call=call.name,
                reason="unreachable",
            )
        return await real_call(node, call, request, timeout=timeout)

    env.runner.call = call  # type: ignore[method-assign]
    job = await run_ops(svc, OpInstanceMigrate(instance_name="vm1", target_node="node2"))
    env.runner.call = real_call  # type: ignore[method-assign]
    _, msg, _ = error_of(job)
    assert "runs on node1" in msg and "--cleanup" in msg
    # exactly one copy executes: the source; node2 keeps a paused incoming copy
    assert env.state("node1", "vm1")["state"] == "running"
    assert env.state("node2", "vm1")["migration"]["role"] == "target"
    job = await run_ops(svc, OpInstanceMigrate(instance_name="vm1", cleanup=True))
    assert_ok(job)
    assert job.ops[0].result["runs_on"] == "node1"
    assert job.ops[0].result["stopped_copies"] == ["node2"]
    assert env.where("vm1") == ["node1"]


async def test_cleanup_records_the_node_the_instance_really_runs_on(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm()))
    os.makedirs(env.paths["node3"].hv_run_dir("fake"), exist_ok=True)
    os.rename(env.fake_file("node1", "vm1"), env.fake_file("node3", "vm1"))
    job = await run_ops(svc, OpInstanceMigrate(instance_name="vm1", cleanup=True))
    assert_ok(job)
    assert job.ops[0].result == {
        "instance": "vm1",
        "runs_on": "node3",
        "primary_changed": True,
        "stopped_copies": [],
        "unreachable": [],
    }
    assert svc.instance("vm1").primary_node == "node3"


async def test_stopped_instance_migrates_only_with_allow_failover(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm(start=False)))
    job = await run_ops(svc, OpInstanceMigrate(instance_name="vm1", target_node="node2"))
    assert error_of(job)[2] == ErrorKind.WRONG_STATE.value
    job = await run_ops(
        svc, OpInstanceMigrate(instance_name="vm1", target_node="node2", allow_failover=True)
    )
    assert_ok(job)
    assert svc.instance("vm1").primary_node == "node2" and env.where("vm1") == []


# --- failover ------------------------------------------------------------------------------------


async def test_failover_restarts_on_the_target(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm()))
    job = await run_ops(svc, OpInstanceFailover(instance_name="vm1", target_node="node3"))
    assert_ok(job)
    assert job.ops[0].result["started"] is True
    assert env.where("vm1") == ["node3"] and svc.instance("vm1").primary_node == "node3"
    assert env.state("node3", "vm1")["reboots"] == 0  # a fresh start, not a migration


async def test_failover_of_an_unreachable_node_needs_ignore_consistency(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm()))
    env.runner.unreachable.add("node1")
    job = await run_ops(svc, OpInstanceFailover(instance_name="vm1", target_node="node2"))
    assert "--ignore-consistency" in error_of(job)[1]
    assert svc.instance("vm1").primary_node == "node1"
    job = await run_ops(
        svc,
        OpInstanceFailover(instance_name="vm1", target_node="node2", ignore_consistency=True),
    )
    assert_ok(job)
    assert svc.instance("vm1").primary_node == "node2"
    assert env.state("node2", "vm1")["state"] == "running"


async def test_failover_refuses_local_disks(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op("vm1", pnode="node1")))
    job = await run_ops(svc, OpInstanceFailover(instance_name="vm1", target_node="node2"))
    _, msg, ecode = error_of(job)
    assert ecode == ErrorKind.INVALID.value and "instance move" in msg
    assert env.where("vm1") == ["node1"]


# --- move ----------------------------------------------------------------------------------------


def _sha(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


async def test_move_copies_file_disks_and_verifies_them(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op("vm1", pnode="node1")))
    disk = svc.instance("vm1").disks[0]
    src = env.paths["node1"].host_path(disk.logical_id)
    dst = env.paths["node2"].host_path(disk.logical_id)
    assert src != dst and os.path.isfile(src) and not os.path.exists(dst)
    with open(src, "r+b") as fh:  # data past the OS marker, after a hole
        fh.seek(40 * 1024 * 1024)
        fh.write(b"tail of the disk")
    want = _sha(src)
    job = await run_ops(svc, OpInstanceMove(instance_name="vm1", target_node="node2"))
    assert_ok(job)
    result = job.ops[0].result
    assert result["checksums"] == [want] and result["started"] is True
    assert _sha(dst) == want
    assert os.stat(dst).st_blocks * 512 < 8 * 1024 * 1024  # the copy stays sparse
    assert not os.path.exists(src)  # removed after the verified copy
    assert svc.instance("vm1").primary_node == "node2"
    assert env.where("vm1") == ["node2"]


async def test_failed_copy_keeps_everything_on_the_source(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op("vm1", pnode="node1")))
    disk = svc.instance("vm1").disks[0]
    env.runner.fail_calls["transfer_import_wait"] = OpError("disk full", kind=ErrorKind.FAULT)
    job = await run_ops(svc, OpInstanceMove(instance_name="vm1", target_node="node2"))
    env.runner.fail_calls.clear()
    assert "disk full" in error_of(job)[1]
    assert os.path.isfile(env.paths["node1"].host_path(disk.logical_id))
    assert not os.path.exists(env.paths["node2"].host_path(disk.logical_id))
    assert svc.instance("vm1").primary_node == "node1"
    assert env.where("vm1") == ["node1"]  # restarted where it ran


async def test_move_refuses_shared_disks(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm()))
    job = await run_ops(svc, OpInstanceMove(instance_name="vm1", target_node="node2"))
    assert "failover" in error_of(job)[1]


# --- node level ----------------------------------------------------------------------------------


async def test_node_evacuate_moves_every_primary_instance(env: Env):
    svc = env.service
    for op in (
        shared_vm("run1"),
        shared_vm("run2"),
        shared_vm("down1", start=False),
        create_op("local1", pnode="node1"),
        create_op("other", pnode="node2"),
    ):
        assert_ok(await run_ops(svc, op))
    job = await run_ops(svc, OpNodeEvacuate(node_name="node1"), timeout=60)
    assert_ok(job)
    actions = {r["instance"]: r["action"] for r in job.ops[0].result}
    assert actions == {
        "down1": "failover",
        "local1": "move",
        "run1": "migrate",
        "run2": "migrate",
    }
    for name in ("run1", "run2", "down1", "local1"):
        assert svc.instance(name).primary_node != "node1", name
    assert svc.instance("other").primary_node == "node2"
    for name in ("run1", "run2", "local1"):
        assert env.where(name) == [svc.instance(name).primary_node]
    assert env.where("down1") == []
    # the two migrations were spread by free memory: not both onto one node
    targets = {r["target"] for r in job.ops[0].result if r["action"] == "migrate"}
    assert targets == {"node2", "node3"}


async def test_node_evacuate_reports_each_failure(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm("ok1")))
    assert_ok(await run_ops(svc, create_op("local1", pnode="node1")))
    env.runner.fail_calls["transfer_export"] = OpError("wire cut", kind=ErrorKind.ENVIRONMENT)
    job = await run_ops(svc, OpNodeEvacuate(node_name="node1", remote_node="node2"), timeout=60)
    env.runner.fail_calls.clear()
    _, msg, _ = error_of(job)
    assert "1 of 2 instances" in msg and "local1: " in msg and "wire cut" in msg
    assert svc.instance("ok1").primary_node == "node2"
    assert svc.instance("local1").primary_node == "node1"


async def test_node_migrate_and_an_offline_target(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, shared_vm("a")))
    assert_ok(await run_ops(svc, shared_vm("b")))
    env.set_node("node3", offline=True)
    job = await run_ops(svc, OpNodeMigrate(node_name="node1", target_node="node3"))
    assert error_of(job)[2] == ErrorKind.WRONG_STATE.value
    job = await run_ops(svc, OpNodeMigrate(node_name="node1"), timeout=60)
    assert_ok(job)
    assert {r["target"] for r in job.ops[0].result} == {"node2"}
    assert env.where("a") == ["node2"] and env.where("b") == ["node2"]
    assert_ok(await run_ops(svc, OpInstanceShutdown(instance_name="a", timeout=0)))
    assert svc.instance("a").admin_state is AdminState.DOWN
    assert env.state("node2", "b")["state"] == InstanceState.RUNNING.value

"""Cluster verify and the watcher, master -> three real NodeBackends (fake hypervisor).

The only fake is the transport (``FakeInProcessRunner``: calls go through the real wire codec
and call handlers to a real ``NodeBackend`` per node, each with its own root) and the
``fake`` hypervisor (instances are JSON files, a product feature). A crash is simulated by
deleting an instance's file — what a killed QEMU leaves to the KVM driver's listing; the real
crash is tested in tests/integration/test_verify_kvm.py. Node daemon loss is the runner's
``unreachable`` set (the real one: tests/integration/test_verify_cluster.py).
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
    install_test_os,
    run_ops,
    seed_cluster,
    wait_job,
)

from corral.common.paths import Paths
from corral.master.config import encode, node_key
from corral.master.ops.verify_checks import Finding, Findings, Severity, check_files
from corral.master.service import MasterService
from corral.master.watcher import (
    MAX_RESTART_ATTEMPTS,
    PAUSE_KEY,
    Watcher,
    read_pause,
)
from corral.node.backend import NodeBackend
from corral.node.backend.membership import cluster_files
from corral.objects.instance import AdminState, AdminStateSource
from corral.objects.job import JobStatus
from corral.objects.node import Node
from corral.objects.opcodes import OpInstanceShutdown
from corral.objects.opcodes_cluster import (
    OpClusterSetWatcherPause,
    OpClusterVerify,
    OpClusterWatcherInfo,
)
from corral.rpc.calls_cluster import FileChecksumsResponse
from corral.store.base import Put
from corral.store.sqlite import SqliteStore

NODES = ("node1", "node2", "node3")
STORAGE = "/srv/corral/disks"


@dataclasses.dataclass
class Env:
    service: MasterService
    runner: FakeInProcessRunner
    roots: dict[str, Paths]

    def fake_file(self, node: str, name: str) -> str:
        return os.path.join(self.roots[node].hv_run_dir("fake"), f"{name}.json")

    def crash(self, node: str, name: str) -> None:
        os.unlink(self.fake_file(node, name))

    def copy_guest(self, src: str, dst: str, name: str, new_name: str | None = None) -> None:
        """Start an instance "by hand" on another node (its fake file, copied)."""
        with open(self.fake_file(src, name)) as fh:
            data = json.load(fh)
        data["name"] = new_name or name
        os.makedirs(self.roots[dst].hv_run_dir("fake"), exist_ok=True)
        with open(self.fake_file(dst, new_name or name), "w") as fh:
            json.dump(data, fh)

    def disk_dir(self, node: str) -> str:
        return self.roots[node].host_path(STORAGE)

    async def verify(self, **kw) -> dict:
        job = await run_ops(self.service, OpClusterVerify(**kw))
        assert_ok(job)
        return job.ops[0].result

    def log(self, job_id: int) -> list[str]:
        return [e.message for e in self.service.get_job(job_id).all_log()]


def write_cluster_files(paths: Paths, role: str, content: bytes = b"same") -> None:
    for path in cluster_files(paths, role):
        if path.endswith("crl.pem"):
            continue  # no node was ever removed: absent everywhere
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(content + b" " + os.path.basename(path).encode())


@pytest.fixture
async def env(tmp_path) -> AsyncIterator[Env]:
    roots = {n: Paths(str(tmp_path / n)) for n in NODES}
    for name, paths in roots.items():
        paths.ensure()
        write_cluster_files(paths, "master" if name == "node1" else "regular")
        install_test_os(paths)
    store = SqliteStore(roots["node1"].store_db)
    seed_cluster(store, file_storage_dir=STORAGE, hypervisors=("fake",))
    for i, name in enumerate(NODES[1:], start=2):
        node = Node(name=name, primary_ip=f"127.0.0.{i}", master_candidate=False)
        store.txn([], [Put(node_key(name), encode(node))])
    runner = FakeInProcessRunner({n: NodeBackend(p, n) for n, p in roots.items()})
    service = MasterService(store, runner, roots["node1"], watch_interval=0)
    await service.start()
    try:
        yield Env(service, runner, roots)
    finally:
        await service.stop(grace=2)
        store.close()


def codes(result: dict) -> set[tuple[str, str, str]]:
    return {(f["severity"], f["code"], f["item"]) for f in result["findings"]}


# --- pure checks --------------------------------------------------------------------------------


def test_finding_formats_like_ganeti():
    f = Finding(Severity.ERROR, "ENODERPC", "node", "node2", "cannot reach the node daemon")
    assert f.format() == "ERROR: node node2: cannot reach the node daemon"
    assert f.format(error_codes=True) == "ERROR:ENODERPC:node:node2:cannot reach the node daemon"
    c = Finding(Severity.WARNING, "ECLUSTERCFG", "cluster", "", "x")
    assert c.format() == "WARNING: cluster: x"


def test_file_check_uses_the_masters_copy_as_reference():
    out = Findings()
    answers = {
        "node1": FileChecksumsResponse(checksums={"/ca.pem": "a" * 64, "/crl.pem": None}),
        "node2": FileChecksumsResponse(checksums={"/ca.pem": "b" * 64, "/crl.pem": None}),
        "node3": FileChecksumsResponse(checksums={"/ca.pem": "b" * 64, "/crl.pem": None}),
    }
    check_files("node1", answers, out)
    # the master is the reference even against a majority; a file absent everywhere is fine
    assert [(f.code, f.item) for f in out.items] == [
        ("ENODEFILECHECK", "node2"),
        ("ENODEFILECHECK", "node3"),
    ]
    out = Findings(ignore=["ENODEFILECHECK"])
    check_files("node1", answers, out)
    assert out.ok and {f.severity for f in out.items} == {Severity.WARNING}


# --- verify end to end --------------------------------------------------------------------------


async def test_verify_clean_then_each_breakage_is_found(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op("vm1", pnode="node1")))
    assert_ok(await run_ops(svc, create_op("vm2", pnode="node2")))
    result = await env.verify()
    assert result == {"ok": True, "findings": []}

    # a cluster file differs on node2
    with open(env.roots["node2"].ca_cert, "wb") as fh:
        fh.write(b"tampered")
    # an orphan disk file on node3
    orphan = os.path.join(env.disk_dir("node3"), "lost", "disk0")
    os.makedirs(os.path.dirname(orphan))
    with open(orphan, "wb") as fh:
        fh.write(b"x")
    # vm1 also started by hand on node3, and an unknown guest on node2
    env.copy_guest("node1", "node3", "vm1")
    env.copy_guest("node2", "node2", "vm2", new_name="ghost")
    result = await env.verify()
    assert result["ok"] is False
    assert codes(result) == {
        ("ERROR", "ENODEFILECHECK", "node2"),
        ("WARNING", "ENODEORPHANLV", "node3"),
        ("ERROR", "EINSTANCEWRONGNODE", "vm1"),
        ("ERROR", "EINSTANCELAYOUT", "vm1"),
        ("ERROR", "ENODEORPHANINSTANCE", "node2"),
    }
    messages = {f["code"]: f["message"] for f in result["findings"]}
    assert "/var/lib/corral/crypto/ca.pem" in messages["ENODEFILECHECK"]
    assert messages["ENODEORPHANLV"] == f"volume {STORAGE}/lost/disk0 is unknown"
    assert messages["EINSTANCEWRONGNODE"] == "instance should not run on node node3"
    assert "ghost" in messages["ENODEORPHANINSTANCE"]

    # node3's daemon is gone: one ENODERPC, nothing concluded about what runs there
    env.runner.unreachable.add("node3")
    result = await env.verify(error_codes=True)
    assert ("ERROR", "ENODERPC", "node3") in codes(result)
    assert not any(f["item"] == "vm1" for f in result["findings"])
    assert not any(f["code"] == "ENODEORPHANLV" for f in result["findings"])


async def test_verify_reports_crashed_instance_and_missing_disk(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op("vm1", pnode="node2")))
    env.crash("node2", "vm1")
    disk = svc.instance("vm1").disks[0].logical_id
    os.unlink(env.roots["node2"].host_path(disk))
    result = await env.verify()
    assert codes(result) == {
        ("ERROR", "EINSTANCEDOWN", "vm1"),
        ("ERROR", "EINSTANCEMISSINGDISK", "vm1"),
    }
    job_id = await svc.submit_job([OpClusterVerify(error_codes=True)])
    await wait_job(svc, job_id)
    lines = env.log(job_id)
    assert (
        "  - ERROR:EINSTANCEDOWN:instance:vm1:instance not running on its primary node "
        "node2" in lines
    )
    assert "* Verifying instance status" in lines
    # admin down and running: ERROR_up
    assert_ok(await run_ops(svc, OpInstanceShutdown(instance_name="vm1", timeout=0)))
    assert_ok(await run_ops(svc, create_op("vm3", pnode="node3")))
    svc.config.modify_instance("vm3", lambda i: setattr(i, "admin_state", AdminState.DOWN))
    result = await env.verify(ignore_errors=["EINSTANCEMISSINGDISK"])
    assert codes(result) == {
        ("WARNING", "EINSTANCEMISSINGDISK", "vm1"),
        ("ERROR", "EINSTANCEUP", "vm3"),
    }


async def test_verify_config_and_version_checks(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op("vm1", pnode="node1")))
    assert_ok(await run_ops(svc, create_op("vm2", pnode="node1")))
    mac = svc.instance("vm1").nics[0].mac
    svc.config.modify_instance("vm2", lambda i: setattr(i.nics[0], "mac", mac))
    svc.config.modify_node("node1", lambda n: setattr(n, "master_candidate", False))
    svc.config.modify_node("node3", lambda n: setattr(n, "offline", True))
    result = await env.verify()
    found = {(f["code"], f["message"]) for f in result["findings"]}
    assert ("ECLUSTERCFG", "master node node1 is not a master candidate") in found
    assert any(c == "ECLUSTERCFG" and mac in m for c, m in found)
    # the offline node is skipped entirely: not asked, no finding about it
    assert not any(f["item"] == "node3" for f in result["findings"])
    assert ("node3", "version") not in env.runner.calls


async def test_verify_bad_arguments_are_refused(env: Env):
    from corral.common.errors import ParamError

    with pytest.raises(ParamError, match="ENOSUCH"):
        await env.service.submit_job([OpClusterVerify(ignore_errors=["ENOSUCH"])])


# --- watcher ------------------------------------------------------------------------------------


async def test_watcher_restarts_a_crashed_instance_on_its_node_only(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op("vm1", pnode="node2")))
    assert_ok(await run_ops(svc, create_op("vm2", pnode="node3")))
    watcher = Watcher(svc, interval=0)
    assert await watcher.run_once() == {}  # all running
    env.crash("node2", "vm1")
    env.crash("node3", "vm2")
    env.runner.unreachable.add("node3")  # vm2's node does not answer: left alone
    submitted = await watcher.run_once()
    assert list(submitted) == ["vm1"]
    job = await wait_job(svc, submitted["vm1"])
    assert job.status is JobStatus.SUCCESS
    assert os.path.exists(env.fake_file("node2", "vm1"))
    assert not os.path.exists(env.fake_file("node1", "vm1"))  # never started elsewhere
    inst = svc.instance("vm1")
    assert inst.admin_state is AdminState.UP and inst.admin_state_source is AdminStateSource.ADMIN
    # seen running again: the attempt record is dropped
    assert await watcher.run_once() == {}
    info = (await run_ops(svc, OpClusterWatcherInfo())).ops[0].result
    assert info["restarts"] == {} and info["paused"] is False


async def test_watcher_gives_up_after_the_attempt_limit(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op("vm1", pnode="node2")))
    env.crash("node2", "vm1")
    # every start fails on the node: the hypervisor refuses (boot fails)
    from corral.common.errors import HypervisorError

    watcher = Watcher(svc, interval=0)
    env.runner.fail_calls["instance_start"] = HypervisorError("qemu died at boot")
    for attempt in range(1, MAX_RESTART_ATTEMPTS + 1):
        submitted = await watcher.run_once()
        assert list(submitted) == ["vm1"], attempt
        job = await wait_job(svc, submitted["vm1"])
        assert job.status is JobStatus.ERROR
    assert await watcher.run_once() == {}  # gave up
    info = (await run_ops(svc, OpClusterWatcherInfo())).ops[0].result
    assert info["restarts"]["vm1"]["attempts"] == MAX_RESTART_ATTEMPTS
    assert info["restarts"]["vm1"]["gave_up"] is True
    # a new watcher (another master) keeps the count: still given up
    assert await Watcher(svc, interval=0).run_once() == {}
    # the administrator stops it: the record is dropped; it is not restarted
    del env.runner.fail_calls["instance_start"]
    assert_ok(await run_ops(svc, OpInstanceShutdown(instance_name="vm1", timeout=0)))
    assert await watcher.run_once() == {}
    info = (await run_ops(svc, OpClusterWatcherInfo())).ops[0].result
    assert info["restarts"] == {}


async def test_watcher_leaves_user_and_admin_down_alone(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op("vm1", pnode="node2")))
    assert_ok(await run_ops(svc, create_op("vm2", pnode="node3")))
    assert_ok(await run_ops(svc, OpInstanceShutdown(instance_name="vm2", timeout=0)))
    # the guest powers itself off: the watcher records it user-down, never restarts it
    with open(env.fake_file("node2", "vm1")) as fh:
        data = json.load(fh)
    data["state"] = "shutdown"
    with open(env.fake_file("node2", "vm1"), "w") as fh:
        json.dump(data, fh)
    watcher = Watcher(svc, interval=0)
    submitted = await watcher.run_once()
    job = await wait_job(svc, submitted["vm1"])
    assert job.ops[0].input["OP_ID"] == "OP_INSTANCE_SHUTDOWN"
    assert svc.instance("vm1").admin_state_source is AdminStateSource.USER
    assert await watcher.run_once() == {}
    assert not os.path.exists(env.fake_file("node2", "vm1"))
    assert not os.path.exists(env.fake_file("node3", "vm2"))


async def test_watcher_pause_is_kept_in_the_store_and_expires(env: Env):
    svc = env.service
    assert_ok(await run_ops(svc, create_op("vm1", pnode="node2")))
    env.crash("node2", "vm1")
    job = await run_ops(svc, OpClusterSetWatcherPause(duration=3600))
    assert_ok(job)
    assert job.ops[0].result["paused"] is True
    assert svc.config.store.get(PAUSE_KEY) is not None
    watcher = Watcher(svc, interval=0)
    assert await watcher.run_once() == {}  # paused: nothing done
    # another master's watcher sees the same pause; after expiry it acts
    later = Watcher(svc, interval=0, clock=lambda: 1e12)
    assert read_pause(svc.config, 1e12) is None
    assert list(await later.run_once()) == ["vm1"]
    # continue: the key is gone
    job = await run_ops(svc, OpClusterSetWatcherPause(duration=None))
    assert job.ops[0].result["paused"] is False
    assert svc.config.store.get(PAUSE_KEY) is None

"""Hooks: the environment the scripts get, pre-hook refusal, post-hook failures, unreachable
nodes. Scripts run for real through the node's hooks runner (in-process transport)."""

from __future__ import annotations

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
    write_hook,
)

from corral.common.errors import HookError
from corral.common.paths import Paths
from corral.master.config import ClusterConfig
from corral.master.ops.base import OpContext, Operation
from corral.master.ops.hooks import Hooks, build_env, instance_env
from corral.master.service import MasterService
from corral.node.backend import NodeBackend
from corral.objects.node import Node
from corral.objects.opcodes import OpInstanceShutdown, OpInstanceStartup, OpTestDelay
from corral.store.sqlite import SqliteStore

DUMP = 'env | grep ^GANETI_ | sort > "{out}"\n'


@pytest.fixture
async def hk(tmp_path):
    paths = Paths(str(tmp_path / "root"))
    paths.ensure()
    store = SqliteStore(paths.store_db)
    seed_cluster(store, file_storage_dir=paths.file_storage_dir)
    install_test_os(paths)
    runner = FakeInProcessRunner({"node1": NodeBackend(paths, "node1")})
    svc = MasterService(store, runner, paths, watch_interval=0)
    await svc.start()
    yield svc, runner, paths, tmp_path
    await svc.stop(grace=2)
    store.close()


def read_env(path: str) -> dict[str, str]:
    with open(path) as fh:
        return dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)


async def test_hook_environment(hk):
    svc, _, paths, tmp = hk
    assert_ok(await run_ops(svc, create_op(start=False)))
    pre_out, post_out = tmp / "pre.env", tmp / "post.env"
    write_hook(paths, "instance-start", "pre", "10-dump", DUMP.format(out=pre_out))
    write_hook(paths, "instance-start", "post", "10-dump", DUMP.format(out=post_out))
    write_hook(paths, "instance-start", "pre", "ignored.sh", "exit 1\n")  # bad name: skipped
    assert_ok(await run_ops(svc, OpInstanceStartup(instance_name="vm1", force=True)))
    pre, post = read_env(str(pre_out)), read_env(str(post_out))
    expected = {
        "GANETI_HOOKS_VERSION": "2",
        "GANETI_HOOKS_PHASE": "PRE",
        "GANETI_CLUSTER": "testcluster",
        "GANETI_MASTER": "node1",
        "GANETI_OP_CODE": "OP_INSTANCE_STARTUP",
        "GANETI_OBJECT_TYPE": "INSTANCE",
        "GANETI_DATA_DIR": paths.data_dir,
        "GANETI_HOOKS_PATH": "instance-start",
        "GANETI_OP_TARGET": "vm1",
        "GANETI_FORCE": "True",
        "GANETI_INSTANCE_NAME": "vm1",
        "GANETI_INSTANCE_PRIMARY": "node1",
        "GANETI_INSTANCE_SECONDARY": "",
        "GANETI_INSTANCE_OS_TYPE": "testos",
        "GANETI_INSTANCE_STATUS": "down",
        "GANETI_INSTANCE_MEMORY": "256",
        "GANETI_INSTANCE_MAXMEM": "256",
        "GANETI_INSTANCE_MINMEM": "64",
        "GANETI_INSTANCE_VCPUS": "1",
        "GANETI_INSTANCE_DISK_TEMPLATE": "file",
        "GANETI_INSTANCE_HYPERVISOR": "fake",
        "GANETI_INSTANCE_NIC_COUNT": "1",
        "GANETI_INSTANCE_NIC0_MODE": "bridged",
        "GANETI_INSTANCE_DISK_COUNT": "1",
        "GANETI_INSTANCE_DISK0_SIZE": "64",
        "GANETI_INSTANCE_DISK0_MODE": "rw",
        "GANETI_INSTANCE_DISK0_DEV_TYPE": "file",
        "GANETI_INSTANCE_BE_maxmem": "256",
        "GANETI_INSTANCE_HV_boot_delay": "0.0",
    }
    for key, value in expected.items():
        assert pre.get(key) == value, key
    assert pre["GANETI_INSTANCE_NIC0_MAC"].startswith("aa:00:00:")
    assert not any(k.startswith("GANETI_POST_") for k in pre)
    assert post["GANETI_HOOKS_PHASE"] == "POST"
    assert post["GANETI_INSTANCE_STATUS"] == "down"  # the state before the operation
    assert post["GANETI_POST_INSTANCE_STATUS"] == "up"  # ... and after it
    assert {k for k in pre if not k.startswith("GANETI_")} == set()


async def test_failing_pre_hook_aborts(hk):
    svc, _, paths, _ = hk
    assert_ok(await run_ops(svc, create_op(start=False)))
    write_hook(paths, "instance-start", "pre", "50-policy", "echo 'denied by policy'\nexit 1\n")
    job = await run_ops(svc, OpInstanceStartup(instance_name="vm1"))
    cls, msg, _ = error_of(job)
    assert cls == "HooksAbort"
    assert "instance-start-pre.d/50-policy" in msg and "denied by policy" in msg
    assert "node1" in msg
    assert "vm1" not in await svc.live_instances()  # execute never ran
    assert svc.instance("vm1").admin_state.value == "down"


async def test_failing_post_hook_is_only_logged(hk):
    svc, _, paths, _ = hk
    assert_ok(await run_ops(svc, create_op()))
    write_hook(paths, "instance-stop", "post", "20-notify", "echo 'mail failed'\nexit 2\n")
    job = await run_ops(svc, OpInstanceShutdown(instance_name="vm1", timeout=1))
    assert_ok(job)
    assert any("20-notify" in e.message and "mail failed" in e.message for e in job.all_log())
    assert "vm1" not in await svc.live_instances()


async def test_no_hooks_for_ops_without_hpath(hk):
    svc, runner, _, _ = hk
    runner.calls.clear()
    assert_ok(await run_ops(svc, OpTestDelay()))
    assert "hooks_run" not in runner.names()


class _Probe(Operation[Any]):
    OPCODE = OpTestDelay
    HPATH = "instance-start"
    HTYPE = "INSTANCE"

    def hooks_nodes(self) -> tuple[list[str], list[str]]:
        return ["node1", "node2"], ["node1", "node2"]


async def test_unreachable_node_is_not_a_refusal(hk):
    svc, runner, paths, _ = hk
    svc.config.add_node(Node(name="node2", primary_ip="127.0.0.2"))
    runner.unreachable.add("node2")
    ctx = OpContext(config=svc.config, runner=runner, paths=paths)
    probe = _Probe(OpTestDelay(), ctx)
    await Hooks(probe).run_pre()  # node1 has no hooks, node2 is down: goes on
    write_hook(paths, "instance-start", "pre", "01-no", "exit 1\n")
    with pytest.raises(HookError) as err:
        await Hooks(probe).run_pre()
    assert err.value.fields["failures"][0]["node"] == "node1"


def test_build_env_prefixes(tmp_path):
    store = SqliteStore(str(tmp_path / "db"))
    try:
        seed_cluster(store, file_storage_dir=str(tmp_path))
        ctx = OpContext(config=ClusterConfig(store), runner=None, paths=Paths(str(tmp_path)))  # type: ignore[arg-type]
        probe = _Probe(OpTestDelay(), ctx)
        env = build_env(probe, "post", {"A": "1"}, {"A": "2"})
        assert env["GANETI_A"] == "1" and env["GANETI_POST_A"] == "2"
        assert env["GANETI_HOOKS_PHASE"] == "POST" and env["GANETI_OP_CODE"] == "OP_TEST_DELAY"
        assert all(k.startswith("GANETI_") for k in env)
    finally:
        store.close()


def test_instance_env_lists_and_tags(tmp_path):
    from corral.objects.cluster import Cluster
    from corral.objects.instance import NIC, Disk, Instance

    cluster = Cluster(name="c", master_node="n", enabled_hypervisors=["fake"])
    inst = Instance(
        name="i",
        primary_node="n",
        secondary_nodes=["s1", "s2"],
        os="o",
        hypervisor="fake",
        disk_template="file",
        tags=["t1", "t2"],
        nics=[NIC(mac="aa:00:00:00:00:01", nicparams={"mode": "routed"})],
        disks=[Disk(size=10)],
    )
    env = instance_env(cluster, inst)
    assert env["INSTANCE_SECONDARY"] == "s1 s2"
    assert env["INSTANCE_TAGS"] == "t1 t2"
    assert env["INSTANCE_NIC0_MODE"] == "routed" and "INSTANCE_NIC0_BRIDGE" not in env

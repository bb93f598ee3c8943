"""OP_NODE_POWERCYCLE end to end against an in-process node backend with a tmp root.

The node's "powercycle" writes ``b`` to ``<root>/proc/sysrq-trigger``, a plain file under the
test root, so nothing reaches this host's kernel.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from master_fakes import FakeInProcessRunner, assert_ok, error_of, run_ops, seed_cluster

from corral.common.errors import ErrorKind
from corral.common.paths import Paths
from corral.master.service import MasterService
from corral.node.backend import NodeBackend
from corral.objects.opcodes_node import OpNodePowercycle
from corral.store.sqlite import SqliteStore


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[MasterService, Paths]]:
    paths = Paths(str(tmp_path / "root"))
    paths.ensure()
    os.makedirs(os.path.dirname(paths.sysrq_trigger))
    store = SqliteStore(paths.store_db)
    seed_cluster(store, file_storage_dir=paths.file_storage_dir, hypervisors=("fake",))
    runner = FakeInProcessRunner({"node1": NodeBackend(paths, "node1")})
    svc = MasterService(store, runner, paths, watch_interval=0)
    await svc.start()
    try:
        yield svc, paths
    finally:
        await svc.stop(grace=2)
        store.close()


async def test_master_needs_force_then_the_node_resets_after_answering(
    service: tuple[MasterService, Paths],
) -> None:
    svc, paths = service
    assert paths.root != "/"
    _cls, msg, ecode = error_of(await run_ops(svc, OpNodePowercycle(node_name="node1")))
    assert ecode == ErrorKind.WRONG_STATE.value and "needs force" in msg
    assert not os.path.exists(paths.sysrq_trigger)
    job = await run_ops(svc, OpNodePowercycle(node_name="node1", force=True))
    assert_ok(job)
    assert "node node1 will powercycle" in job.ops[0].result
    deadline = time.monotonic() + 10
    while not os.path.exists(paths.sysrq_trigger) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.05)
    with open(paths.sysrq_trigger, encoding="ascii") as fh:
        assert fh.read() == "b"
    _cls, _msg, ecode = error_of(await run_ops(svc, OpNodePowercycle(node_name="nosuch")))
    assert ecode == ErrorKind.NOT_FOUND.value

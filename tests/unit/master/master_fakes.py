"""Test helpers for the master: a cluster in a store, an in-process node runner, a test OS.

``FakeInProcessRunner`` is a *fake transport*: it hands each call to the real
``NodeBackend`` (through the real wire codec and call handlers) in a worker thread instead of
sending it over mutual-TLS HTTPS. The HTTPS transport itself is covered by the RPC tests and by
``tests/integration/test_master_daemons.py``.
"""

from __future__ import annotations

import asyncio
import os
import stat
import textwrap
from typing import Any, TypeVar

from corral.common.errors import CorralError
from corral.common.paths import Paths
from corral.master.config import CLUSTER_KEY, encode, node_key
from corral.node.backend import NodeBackend
from corral.node.handlers import CallHandlers
from corral.objects.cluster import Cluster
from corral.objects.job import Job, JobStatus
from corral.objects.node import Node
from corral.objects.opcodes import DiskArg, NicArg, OpCode, OpInstanceCreate
from corral.rpc import codec
from corral.rpc.calls import Call, Msg
from corral.store.base import Put, Store

Req = TypeVar("Req", bound=Msg)
Resp = TypeVar("Resp", bound=Msg)


def seed_cluster(
    store: Store,
    *,
    file_storage_dir: str,
    hypervisors: tuple[str, ...] = ("fake",),
    node: str = "node1",
    address: str = "127.0.0.1",
    **cluster_fields: Any,
) -> Cluster:
    """Store a cluster with one node (what ``init_cluster`` writes, minus the files)."""
    cluster = Cluster(
        name="testcluster",
        master_node=node,
        enabled_hypervisors=list(hypervisors),
        file_storage_dir=file_storage_dir,
        **cluster_fields,
    )
    store.txn(
        [],
        [
            Put(CLUSTER_KEY, encode(cluster)),
            Put(node_key(node), encode(Node(name=node, primary_ip=address))),
        ],
    )
    return cluster


class FakeInProcessRunner:
    """Fake transport: runs node calls on real ``NodeBackend`` objects in this process.

    Args:
        backends: node name -> backend.
        unreachable: node names that behave as if their daemon were down (RpcError).
    """

    def __init__(self, backends: dict[str, NodeBackend]) -> None:
        self.handlers = {name: CallHandlers(b) for name, b in backends.items()}
        self.calls: list[tuple[str, str]] = []
        self.unreachable: set[str] = set()
        self.fail_calls: dict[str, CorralError] = {}

    async def call(
        self, node: Node, call: Call[Req, Resp], request: Req, *, timeout: float | None = None
    ) -> Resp:
        from corral.common.errors import RpcError

        self.calls.append((node.name, call.name))
        if node.name in self.unreachable:
            raise RpcError(f"node {node.name} unreachable: connection refused", node=node.name)
        if call.name in self.fail_calls:
            raise self.fail_calls[call.name]
        handlers = self.handlers[node.name]
        body = codec.encode_request(call, request)
        reply = await asyncio.to_thread(handlers.handle, call.name, body)
        answer = codec.decode_answer(call, reply.body)
        if isinstance(answer, CorralError):
            raise answer
        return answer

    async def aclose(self) -> None:
        return None

    def names(self) -> list[str]:
        """Call names made so far."""
        return [c for _, c in self.calls]


class UnusedRunner:
    """A runner for tests whose jobs must not call nodes (any call fails the test)."""

    async def call(
        self, node: Node, call: Call[Req, Resp], request: Req, *, timeout: float | None = None
    ) -> Resp:
        raise AssertionError(f"unexpected RPC {call.name} to {node.name}")

    async def aclose(self) -> None:
        return None


def _write_exec(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(text).lstrip())
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def install_test_os(paths: Paths, name: str = "testos") -> str:
    """A small Ganeti API-20 OS definition in the node's search path.

    ``create`` writes ``installed <name> <marker>`` at the start of disk 0 (``OSP_MARKER``) and
    fails with a message on stderr when ``OSP_FAIL=yes``; ``rename`` appends a line naming the
    old and new names.
    """
    osdir = os.path.join(paths.os_search_path[0], name)
    os.makedirs(osdir, exist_ok=True)
    with open(os.path.join(osdir, "ganeti_api_version"), "w") as fh:
        fh.write("20\n")
    with open(os.path.join(osdir, "parameters.list"), "w") as fh:
        fh.write("fail make the create script fail (yes/no)\nmarker text written to disk 0\n")
    usage = 'case "$1" in -h|--help) echo "usage: $0"; exit 0;; esac\n'
    _write_exec(
        os.path.join(osdir, "create"),
        "#!/bin/sh\n"
        + usage
        + """
        if [ "$OSP_FAIL" = "yes" ]; then
            echo "testos: disk layout refused for $INSTANCE_NAME" >&2
            exit 3
        fi
        printf 'installed %s %s reinstall=%s\\n' "$INSTANCE_NAME" "$OSP_MARKER" \
            "${INSTANCE_REINSTALL:-0}" | dd of="$DISK_0_PATH" conv=notrunc status=none
        """,
    )
    _write_exec(
        os.path.join(osdir, "rename"),
        "#!/bin/sh\n"
        + usage
        + """
        printf 'renamed %s %s\\n' "$OLD_INSTANCE_NAME" "$INSTANCE_NAME" \
            | dd of="$DISK_0_PATH" bs=1 seek=512 conv=notrunc status=none
        """,
    )
    for script in ("export", "import"):
        _write_exec(os.path.join(osdir, script), "#!/bin/sh\n" + usage + "exit 0\n")
    _write_exec(
        os.path.join(osdir, "verify"),
        "#!/bin/sh\n"
        + usage
        + """
        case "$OSP_FAIL" in ""|yes|no) exit 0;; esac
        echo "fail must be yes or no" >&2
        exit 1
        """,
    )
    return name


def write_hook(paths: Paths, hpath: str, phase: str, name: str, body: str) -> str:
    """An executable hook script; returns its path."""
    directory = os.path.join(paths.hooks_dir, f"{hpath}-{phase}.d")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    _write_exec(path, "#!/bin/sh\n" + body)
    return path


async def wait_job(service: Any, job_id: int, timeout: float = 20.0) -> Any:
    """Wait until the job is finished; return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    prev: list[Any] | None = None
    serial: int | None = None
    while True:
        job = service.get_job(job_id)
        if job.finalized:
            return job
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"job {job_id} not finished after {timeout}s: {job.status}")
        res = await service.wait_for_job_change(job_id, ["status"], prev, serial, min(left, 2.0))
        if res is not None:
            prev = res["job_info"]
            if res["log_entries"]:
                serial = res["log_entries"][-1][0]


async def run_ops(service: Any, *ops: OpCode, timeout: float = 20.0) -> Any:
    """Submit a job and wait for it."""
    job_id = await service.submit_job(list(ops))
    return await wait_job(service, job_id, timeout)


def create_op(name: str = "vm1", **kw) -> OpInstanceCreate:
    args = dict(
        instance_name=name,
        os_type="testos",
        disk_template="file",
        disks=[DiskArg(size=64)],
        nics=[NicArg()],
        beparams={"maxmem": "256M", "minmem": "64M", "vcpus": 1},
        osparams={"marker": "hello"},
        start=True,
    )
    args.update(kw)
    return OpInstanceCreate(**args)


def assert_ok(job: Job) -> None:
    assert job.status is JobStatus.SUCCESS, (job.ops[-1].result, [e.message for e in job.all_log()])


def error_of(job: Job) -> tuple[str, str, str]:
    """(class, message, ecode) of the failed opcode."""
    assert job.status is JobStatus.ERROR
    failed = next(op for op in job.ops if op.status == "error")
    cls, (msg, ecode) = failed.result
    return cls, msg, ecode

"""An in-memory stand-in for ``corral.master.service.MasterService``.

FAKE, by design: the API/CLI unit tests exercise every route, the auth rules, the error
mapping and the CLI parsers without daemons, node RPC or a store. It implements the
``MasterServiceApi`` protocol the API codes against (TEAM-BRIEF contract) with a tiny
"executor" that applies the opcodes the tests need to in-memory objects right away (or leaves
jobs queued when ``auto_run`` is False, to test cancel and long polling). The real service is
tested by the master's own tests and by ``tests/integration/test_rapi_client.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from corral.common.errors import CorralError, ErrorKind, JobError, OpError, ParamError
from corral.hypervisor.base import InstanceInfo, InstanceState
from corral.objects.cluster import Cluster
from corral.objects.instance import NIC, AdminState, Disk, Instance
from corral.objects.job import Job, JobStatus, LogEntry, OpStatus, QueuedOp
from corral.objects.node import Node
from corral.objects.opcodes import OpCode, opcode_from_dict
from corral.rpc.calls import NodeInfoResponse, OsInfo, StorageSpace


class FakeMaster:
    """In-memory master: state, a job list and an immediate executor."""

    def __init__(self, *, auto_run: bool = True) -> None:
        self.auto_run = auto_run
        self._cluster = Cluster(
            name="cluster.example", master_node="node1", enabled_hypervisors=["fake", "kvm"]
        )
        self._nodes = {
            "node1": Node(name="node1", primary_ip="127.0.0.1"),
            "node2": Node(name="node2", primary_ip="127.0.0.2", master_candidate=False),
        }
        self._instances: dict[str, Instance] = {}
        self.live: dict[str, InstanceInfo] = {}
        self.unreachable: set[str] = set()
        self.jobs: dict[int, Job] = {}
        self.submitted: list[list[OpCode]] = []
        self.fail_next: CorralError | None = None
        self._next_id = 1
        self._serial = 0
        self.oses = [
            OsInfo(name="busybox", path="/builtin/busybox", valid=True, api_versions=[20],
                   variants=["default", "tiny"], builtin=True),
            OsInfo(name="noop", path="/usr/share/ganeti/os/noop", valid=True,
                   api_versions=[20, 15]),
            OsInfo(name="broken", path="/srv/corral/os/broken", valid=False,
                   error="missing create script"),
        ]  # fmt: skip

    # --- helpers for tests -------------------------------------------------------------------
    def add_instance(self, name: str, *, running: bool = False, **kw: Any) -> Instance:
        """Put an instance into the state (optionally running on its node)."""
        inst = Instance(
            name=name,
            primary_node=kw.pop("primary_node", "node1"),
            os=kw.pop("os", "busybox"),
            hypervisor=kw.pop("hypervisor", "fake"),
            disk_template=kw.pop("disk_template", "file"),
            disks=kw.pop("disks", [Disk(size=1024, logical_id=f"/srv/{name}.disk0")]),
            nics=kw.pop("nics", [NIC(mac="aa:00:00:11:22:33")]),
            admin_state=AdminState.UP if running else AdminState.DOWN,
            **kw,
        )
        self._instances[name] = inst
        if running:
            self.live[name] = InstanceInfo(name=name, state=InstanceState.RUNNING, memory=128,
                                           vcpus=1)  # fmt: skip
        return inst

    # --- jobs ----------------------------------------------------------------------------------
    async def submit_job(self, ops: Sequence[OpCode]) -> int:
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        job_id = self._next_id
        self._next_id += 1
        self.submitted.append(list(ops))
        job = Job(
            id=job_id,
            ops=[QueuedOp(input=op.to_dict()) for op in ops],
            summary=[op.summary() for op in ops],
        )
        self.jobs[job_id] = job
        if self.auto_run:
            self._run(job, list(ops))
        return job_id

    def _log(self, job: Job, op: QueuedOp, message: str) -> None:
        self._serial += 1
        job.log_serial = self._serial
        op.log.append(LogEntry(serial=self._serial, timestamp=time.time(), message=message))

    def _run(self, job: Job, ops: list[OpCode]) -> None:
        job.status = JobStatus.RUNNING
        job.start_timestamp = time.time()
        for qop, op in zip(job.ops, ops, strict=True):
            qop.status = OpStatus.RUNNING
            qop.start_timestamp = qop.exec_timestamp = time.time()
            try:
                self._log(job, qop, f"{op.summary()} started")
                qop.result = self._apply(op)
                qop.status = OpStatus.SUCCESS
            except CorralError as exc:
                qop.status = OpStatus.ERROR
                qop.result = exc.to_wire()
                self._log(job, qop, f"Failure: {exc}")
                job.status = JobStatus.ERROR
                break
            finally:
                qop.end_timestamp = time.time()
        else:
            job.status = JobStatus.SUCCESS
        job.end_timestamp = time.time()

    def finish(self, job_id: int) -> None:
        """Run a queued job now (``auto_run=False``)."""
        job = self.jobs[job_id]
        self._run(job, [opcode_from_dict(dict(q.input)) for q in job.ops])

    def _apply(self, op: OpCode) -> Any:
        op_id = op.OP_ID
        data = op.model_dump()
        if op_id == "OP_INSTANCE_CREATE":
            name = data["instance_name"]
            if name in self._instances:
                raise OpError(f"instance {name} already exists", kind=ErrorKind.EXISTS)
            self.add_instance(
                name,
                running=data["start"],
                os=data["os_type"] or "busybox",
                hypervisor=data["hypervisor"] or "fake",
                disks=[Disk(size=d["size"]) for d in data["disks"]],
                nics=[NIC(mac=f"aa:00:00:00:00:{i:02x}") for i in range(len(data["nics"]))],
                beparams=data["beparams"],
            )
            return ["node1"]
        if op_id == "OP_TEST_DELAY":
            return None
        if op_id.startswith(("OP_NODE_", "OP_GROUP_")):
            return []  # node membership and groups: recorded only (see test_nodes_*.py)
        if op_id == "OP_OS_DIAGNOSE":
            return [[o.name, o.variants] for o in self.oses if o.valid]
        if op_id == "OP_INSTANCE_QUERY_DATA":
            return {n: {"name": n, "os": self.instance(n).os} for n in data["instances"]}
        name = data.get("instance_name") or data.get("name")
        inst = self.instance(name)
        if op_id == "OP_INSTANCE_STARTUP":
            inst.admin_state = AdminState.UP
            self.live[name] = InstanceInfo(name=name, state=InstanceState.RUNNING, memory=128,
                                           vcpus=1)  # fmt: skip
        elif op_id == "OP_INSTANCE_SHUTDOWN":
            inst.admin_state = AdminState.DOWN
            self.live.pop(name, None)
        elif op_id == "OP_INSTANCE_REMOVE":
            del self._instances[name]
            self.live.pop(name, None)
        elif op_id == "OP_INSTANCE_RENAME":
            del self._instances[name]
            inst.name = data["new_name"]
            self._instances[inst.name] = inst
        elif op_id == "OP_INSTANCE_SET_PARAMS":
            inst.beparams.update(data["beparams"])
            inst.hvparams.update(data["hvparams"])
        elif op_id == "OP_INSTANCE_GROW_DISK":
            inst.disks[data["disk"]].size += data["amount"]
        elif op_id == "OP_TAGS_SET":
            inst.tags = sorted(set(inst.tags) | set(data["tags"]))
        elif op_id == "OP_TAGS_DEL":
            inst.tags = sorted(set(inst.tags) - set(data["tags"]))
        elif op_id == "OP_INSTANCE_CONSOLE":
            if name not in self.live:
                raise OpError(f"instance {name} is not running", kind=ErrorKind.WRONG_STATE)
            return {"instance": name, "kind": "ssh", "host": "127.0.0.1", "port": None,
                    "command": ["socat", "STDIO,raw,echo=0", f"UNIX-CONNECT:/run/{name}.serial"],
                    "message": "", "socket": f"/run/{name}.serial"}  # fmt: skip
        return None

    def get_job(self, job_id: int) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise JobError(f"job {job_id} not found", kind=ErrorKind.NOT_FOUND) from None

    def list_jobs(self) -> list[Job]:
        return list(self.jobs.values())

    async def cancel_job(self, job_id: int) -> tuple[bool, str]:
        job = self.get_job(job_id)
        if job.status in (JobStatus.QUEUED, JobStatus.WAITING):
            job.status = JobStatus.CANCELED
            for op in job.ops:
                op.status = OpStatus.CANCELED
            return True, f"Job {job_id} canceled"
        return False, f"Job {job_id} is no longer waiting in the queue"

    async def wait_for_job_change(
        self,
        job_id: int,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
        timeout: float,
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            info = self.job_fields(job, fields)
            entries = [e.to_ganeti() for e in job.all_log()
                       if prev_log_serial is None or e.serial > prev_log_serial]  # fmt: skip
            if info != prev_job_info or entries:
                return {"job_info": info, "log_entries": entries}
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.01)

    def job_fields(self, job: Job, fields: list[str]) -> list[Any]:
        def ts(value: float | None) -> list[int] | None:
            if value is None:
                return None
            return [int(value), int((value - int(value)) * 1_000_000)]

        values: dict[str, Any] = {
            "id": job.id,
            "status": job.status.value,
            "ops": [op.input for op in job.ops],
            "opresult": [op.result for op in job.ops],
            "opstatus": [op.status.value for op in job.ops],
            "oplog": [[e.to_ganeti() for e in op.log] for op in job.ops],
            "summary": job.summary,
            "received_ts": ts(job.received_timestamp),
            "start_ts": ts(job.start_timestamp),
            "end_ts": ts(job.end_timestamp),
            "priority": job.priority,
            "opstart": [ts(op.start_timestamp) for op in job.ops],
            "opexec": [ts(op.exec_timestamp) for op in job.ops],
            "opend": [ts(op.end_timestamp) for op in job.ops],
        }
        unknown = [f for f in fields if f not in values]
        if unknown:
            raise ParamError({f: "unknown job field" for f in unknown})
        return [values[f] for f in fields]

    # --- state reads ---------------------------------------------------------------------------
    def cluster(self) -> Cluster:
        return self._cluster

    def is_leader(self) -> bool:
        return True

    def leader(self) -> str | None:
        return self._cluster.master_node

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def node(self, name: str) -> Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise OpError(f"node {name} not found", kind=ErrorKind.NOT_FOUND) from None

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    def instance(self, name: str) -> Instance:
        try:
            return self._instances[name]
        except KeyError:
            raise OpError(f"instance {name} not found", kind=ErrorKind.NOT_FOUND) from None

    async def live_instances(self) -> dict[str, InstanceInfo]:
        return {n: i for n, i in self.live.items()
                if self._instances.get(n) and self._instances[n].primary_node
                not in self.unreachable}  # fmt: skip

    async def live_nodes(self) -> dict[str, NodeInfoResponse | None]:
        out: dict[str, NodeInfoResponse | None] = {}
        for name in self._nodes:
            if name in self.unreachable:
                out[name] = None
            else:
                out[name] = NodeInfoResponse(
                    name=name, boot_id="boot-" + name, memory_total=4096, memory_free=3000,
                    cpu_total=2, storage=[StorageSpace(location="/srv", total=10240, free=8192)],
                )  # fmt: skip
        return out

    async def os_diagnose(self) -> list[OsInfo]:
        return list(self.oses)

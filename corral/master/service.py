"""The master's service facade: what the API (and tests) call.

:class:`MasterService` joins the state (:class:`ClusterConfig`), the job queue, the executor and
the node runner. Changes go through jobs (:meth:`MasterService.submit_job`); reads of the state
and of live node data need no job. See ``docs/dev/TEAM-BRIEF.md`` for the contract.

Instance status (Ganeti's ``oper_state``): the store keeps what the administrator wants
(``admin_state``); :meth:`MasterService.live_instances` says what runs. The API combines both
into ``running`` / ``ADMIN_down`` / ``ERROR_down`` / ``ERROR_up`` (see
``ops/instance_query.oper_state_name``). A guest that powered itself off while marked up is
reported by its node in state SHUTDOWN and shown ``USER_down``; the watcher
(``master/watcher.py``) then records it down with ``admin_state_source`` ``user`` (still
``USER_down``) and has the node clean up, as Ganeti's watcher does. A guest that crashed stays
marked up and shows ``ERROR_down``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from corral.common.errors import CorralError, ParamError
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceInfo
from corral.master.config import ClusterConfig
from corral.master.jobs.executor import DEFAULT_MAX_JOBS, JobExecutor
from corral.master.jobs.queue import JobQueue, job_fields
from corral.master.locking import LockManager
from corral.master.ops.base import OPERATIONS, operation_class
from corral.master.ops.misc import merge_os_lists
from corral.master.rpcrunner import NodeRunner, call_many
from corral.objects.cluster import Cluster
from corral.objects.instance import Instance
from corral.objects.job import Job, OpStatus
from corral.objects.node import Node
from corral.objects.opcodes import OpCode
from corral.rpc.calls import (
    ALL_INSTANCES_INFO,
    NODE_INFO,
    OS_DIAGNOSE,
    AllInstancesInfoResponse,
    Empty,
    InstanceListRequest,
    NodeInfoRequest,
    NodeInfoResponse,
    OsDiagnoseResponse,
    OsInfo,
)
from corral.store.base import Store

log = logging.getLogger(__name__)


class MasterService:
    """The control plane of one master process.

    Args:
        store: the cluster-state store (holding an initialised cluster).
        runner: node RPCs.
        paths: this master's paths.
        max_jobs: jobs run at once.
        watch_interval: how long the executor's watch for jobs submitted by other processes
            blocks (0 disables that watch).
    """

    def __init__(
        self,
        store: Store,
        runner: NodeRunner,
        paths: Paths,
        *,
        max_jobs: int = DEFAULT_MAX_JOBS,
        watch_interval: float = 1.0,
    ) -> None:
        self.paths = paths
        self.runner = runner
        self.config = ClusterConfig(store)
        self.queue = JobQueue(self.config)
        self.locks = LockManager()
        self.executor = JobExecutor(
            self.config,
            self.queue,
            runner,
            paths,
            locks=self.locks,
            max_jobs=max_jobs,
            watch_interval=watch_interval,
        )

    async def start(self) -> None:
        """Recover interrupted jobs and start running queued ones.

        Raises:
            StoreError: the store cannot be read (or holds no cluster).
        """
        self.config.cluster()
        await self.executor.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the executor (running jobs get ``grace`` seconds) and the long polls."""
        await self.executor.stop(grace)
        self.queue.close()

    # --- jobs -----------------------------------------------------------------------------

    async def submit_job(self, ops: Sequence[OpCode]) -> int:
        """Check the opcodes' arguments and queue them as one job.

        Raises:
            ParamError: no opcodes, or a bad argument (naming it).
            OpError: an unsupported opcode or inconsistent arguments.
            StoreError: the job could not be stored.
        """
        if not ops:
            raise ParamError({"ops": "a job needs at least one opcode"}, context="job")
        for op in ops:
            operation_class(op.OP_ID)(op).check_arguments()
        job = self.queue.submit(ops)
        self.executor.enqueue(job.id, job.priority)
        return job.id

    def get_job(self, job_id: int) -> Job:
        """One job.

        Raises:
            JobError: no such job (NOT_FOUND).
        """
        return self.queue.get(job_id)

    def list_jobs(self) -> list[Job]:
        """Every job, by id."""
        return self.queue.list_jobs()

    async def cancel_job(self, job_id: int) -> tuple[bool, str]:
        """Cancel a job (see :meth:`JobQueue.cancel`).

        Raises:
            JobError: no such job (NOT_FOUND).
        """
        outcome = self.queue.cancel(job_id, interruptible=_reaches_cancellation_point)
        if outcome[0]:
            self.executor.request_cancel(job_id)
        return outcome

    async def wait_for_job_change(
        self,
        job_id: int,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
        timeout: float,
    ) -> dict[str, Any] | None:
        """Long poll on a job (see :meth:`JobQueue.wait_for_change`)."""
        return await self.queue.wait_for_change(
            job_id, fields, prev_job_info, prev_log_serial, timeout
        )

    def job_fields(self, job: Job, fields: list[str]) -> list[Any]:
        """Ganeti job field values (see :func:`corral.master.jobs.queue.job_fields`)."""
        return job_fields(job, fields)

    def lock_status(self) -> list[dict[str, Any]]:
        """Locks held and waited for (``gnt-debug locks``)."""
        return self.locks.snapshot()

    # --- state reads ----------------------------------------------------------------------

    def cluster(self) -> Cluster:
        """The cluster object."""
        return self.config.cluster()

    def nodes(self) -> list[Node]:
        """Every node, by name."""
        return self.config.nodes()

    def node(self, name: str) -> Node:
        """One node (OpError NOT_FOUND if unknown)."""
        return self.config.node(name)

    def instances(self) -> list[Instance]:
        """Every instance, by name."""
        return self.config.instances()

    def instance(self, name: str) -> Instance:
        """One instance (OpError NOT_FOUND if unknown)."""
        return self.config.instance(name)

    # --- live reads -----------------------------------------------------------------------

    async def live_instances(self) -> dict[str, InstanceInfo]:
        """Instances running on the nodes, by name (offline or unreachable nodes skipped)."""
        cluster = self.config.cluster()
        nodes = [n for n in self.config.nodes() if not n.offline]
        answers = await call_many(
            self.runner,
            nodes,
            ALL_INSTANCES_INFO,
            InstanceListRequest(hypervisors=list(cluster.enabled_hypervisors)),
        )
        live: dict[str, InstanceInfo] = {}
        for node_name, answer in answers.items():
            if isinstance(answer, CorralError):
                log.warning("live instances of node %s unavailable: %s", node_name, answer)
                continue
            assert isinstance(answer, AllInstancesInfoResponse)
            for info in answer.instances:
                live[info.name] = info
        return live

    async def live_nodes(self) -> dict[str, NodeInfoResponse | None]:
        """Each node's live facts; None for offline or unreachable nodes."""
        cluster = self.config.cluster()
        nodes = self.config.nodes()
        online = [n for n in nodes if not n.offline]
        answers = await call_many(
            self.runner,
            online,
            NODE_INFO,
            NodeInfoRequest(
                hypervisors=list(cluster.enabled_hypervisors),
                storage_dirs=[cluster.file_storage_dir],
            ),
        )
        out: dict[str, NodeInfoResponse | None] = {n.name: None for n in nodes}
        for node_name, answer in answers.items():
            if isinstance(answer, CorralError):
                log.warning("node %s unavailable: %s", node_name, answer)
            else:
                assert isinstance(answer, NodeInfoResponse)
                out[node_name] = answer
        return out

    async def os_diagnose(self) -> list[OsInfo]:
        """The OS definitions of all online nodes, merged (valid only if valid everywhere)."""
        nodes = [n for n in self.config.nodes() if not n.offline]
        answers = await call_many(self.runner, nodes, OS_DIAGNOSE, Empty())
        per_node = {}
        for node_name, answer in answers.items():
            if isinstance(answer, CorralError):
                log.warning("OS diagnose on node %s failed: %s", node_name, answer)
                continue
            assert isinstance(answer, OsDiagnoseResponse)
            per_node[node_name] = answer.oses
        return merge_os_lists(per_node)


def _reaches_cancellation_point(job: Job) -> bool:
    """Whether a running job will still check for cancellation.

    It does between operations, and inside operations that declare ``INTERRUPTIBLE``.
    """
    running = [i for i, op in enumerate(job.ops) if op.status is OpStatus.RUNNING]
    if not running:
        return True  # between operations, or still taking locks
    index = running[0]
    if index < len(job.ops) - 1:
        return True
    op_id = str(job.ops[index].input.get("OP_ID", ""))
    cls = OPERATIONS.get(op_id)
    return bool(cls is not None and cls.INTERRUPTIBLE)

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

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from corral.common.errors import CorralError, ParamError
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceInfo
from corral.master.config import ClusterConfig
from corral.master.jobs.executor import DEFAULT_MAX_JOBS, JobExecutor
from corral.master.jobs.queue import JobQueue, job_fields
from corral.master.leader import (
    FencedConfig,
    LeaderElection,
    Leadership,
    NotLeaderError,
    SoleLeadership,
    read_leader,
)
from corral.master.locking import LockManager
from corral.master.masterip import MasterIp, params_from_cluster
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

#: Seconds between two looks at the leadership state (no I/O: a clock comparison).
LEADERSHIP_POLL = 0.05
#: Seconds running jobs get to finish when the leader hands the role over on purpose.
HANDOFF_GRACE = 10.0

#: A task run only while this master leads; it must return soon after its event is set.
LeaderTask = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class MasterService:
    """The control plane of one master process.

    Every master candidate runs one; the API works on all of them (reads, and job submission,
    which only stores the job). Only while :meth:`is_leader` holds does this one run the job
    executor (over a fenced config: ``master/leader.py``), the leader tasks (the watcher) and
    hold the master IP. Leadership changes are followed by a monitor task: on becoming the
    leader it records ``cluster.master_node``, recovers and takes over jobs, starts the
    executor and the leader tasks and turns the master IP up; on losing it, it stops them
    without recording anything about running jobs (the new leader decides) and turns the IP
    down.

    Args:
        store: the cluster-state store (holding an initialised cluster).
        runner: node RPCs.
        paths: this master's paths.
        max_jobs: jobs run at once.
        watch_interval: how long the executor's watch for jobs submitted by other processes
            blocks (0 disables that watch).
        leadership: a :class:`LeaderElection` (etcd); default: this master always leads
            (SQLite, single host).
        node_name: this master's node (default: the cluster's ``master_node``).
        master_ip: turns the master IP up/down (default: one for ``paths``).
    """

    def __init__(
        self,
        store: Store,
        runner: NodeRunner,
        paths: Paths,
        *,
        max_jobs: int = DEFAULT_MAX_JOBS,
        watch_interval: float = 1.0,
        leadership: Leadership | None = None,
        node_name: str | None = None,
        master_ip: MasterIp | None = None,
    ) -> None:
        self.paths = paths
        self.runner = runner
        self.config = ClusterConfig(store)
        self.queue = JobQueue(self.config)
        self.locks = LockManager()
        self.max_jobs = max_jobs
        self.watch_interval = watch_interval
        self.node_name = node_name or (leadership.node if leadership is not None else None)
        self.leadership: Leadership | None = leadership
        self.master_ip = master_ip or MasterIp(paths)
        #: The executor of the current leadership term (None while not leading).
        self.executor: JobExecutor | None = None
        self._term_queue: JobQueue | None = None
        self._leader_tasks: list[LeaderTask] = []
        self._term_stop = asyncio.Event()
        self._term_tasks: list[asyncio.Task[None]] = []
        self._ip_params: Any = None
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False
        #: Set each time this master becomes the leader / stops leading (tests, bench).
        self.terms = 0

    def add_leader_task(self, task: LeaderTask) -> None:
        """Run ``task(stop_event)`` during every leadership term (call before :meth:`start`)."""
        self._leader_tasks.append(task)

    async def start(self) -> None:
        """Start following the leadership; when leading, recover jobs and run them.

        With the default leadership (single master) the executor runs when this returns.

        Raises:
            StoreError: the store cannot be read (or holds no cluster).
        """
        cluster = self.config.cluster()
        if self.leadership is None:
            self.node_name = self.node_name or cluster.master_node
            self.leadership = SoleLeadership(self.node_name)
        if isinstance(self.leadership, LeaderElection):
            self.leadership.start()
        if self.leadership.is_leader():
            await self._become_leader()
        self._monitor = asyncio.create_task(self._follow_leadership(), name="leadership")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop: running jobs get ``grace`` seconds; then give up the leadership.

        With a single master, jobs still running after ``grace`` end in ``error`` (the master
        was stopped); with an election they are left for the next leader to take over.
        """
        self._closing = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self.executor is not None:
            await self._step_down(grace=grace)
        if isinstance(self.leadership, LeaderElection):
            await asyncio.to_thread(self.leadership.stop)
        self.queue.close()

    # --- leadership -----------------------------------------------------------------------

    def is_leader(self) -> bool:
        """Whether this master leads now (runs the executor)."""
        return self.leadership is not None and self.leadership.is_leader()

    def leader(self) -> str | None:
        """The leader master's node name (None while nobody leads).

        Raises:
            StoreError: the store cannot be read (with an election).
        """
        if isinstance(self.leadership, LeaderElection):
            info = read_leader(self.config.store)
        elif self.leadership is not None:
            info = self.leadership.current()
        else:
            return self.config.cluster().master_node
        return info.node if info is not None else None

    async def _follow_leadership(self) -> None:
        leadership = self.leadership
        assert leadership is not None
        while not self._closing:
            handoff = (
                isinstance(leadership, LeaderElection) and leadership.handoff_requested.is_set()
            )
            if self.executor is None and leadership.is_leader() and not handoff:
                await self._become_leader()
            elif self.executor is not None and (not leadership.is_leader() or handoff):
                await self._step_down(grace=HANDOFF_GRACE if handoff else 0.0)
            elif handoff and isinstance(leadership, LeaderElection):
                await asyncio.to_thread(leadership.release)
            await asyncio.sleep(LEADERSHIP_POLL)

    async def _become_leader(self) -> None:
        leadership = self.leadership
        assert leadership is not None and self.node_name is not None
        node = self.node_name
        fenced = (
            FencedConfig(self.config.store, leadership)
            if isinstance(leadership, LeaderElection)
            else self.config
        )
        queue = JobQueue(fenced)
        executor = JobExecutor(
            fenced,
            queue,
            self.runner,
            self.paths,
            locks=self.locks,
            max_jobs=self.max_jobs,
            watch_interval=self.watch_interval,
            leadership=leadership,
        )
        try:
            cluster = fenced.cluster()
            if cluster.master_node != node:
                previous = cluster.master_node
                cluster = fenced.modify_cluster(lambda c: setattr(c, "master_node", node))
                log.info("master role moved from node %s to node %s", previous, node)
            await executor.start()
        except NotLeaderError as exc:
            log.warning("lost the leadership while taking it: %s", exc)
            await executor.abandon()
            queue.close()
            return
        except CorralError as exc:
            # NOTE: stay a follower in name; the monitor retries on its next round.
            log.error("cannot take over as the leader: %s", exc)
            await executor.abandon()
            queue.close()
            await asyncio.sleep(1.0)
            return
        self.executor, self._term_queue = executor, queue
        self.terms += 1
        log.info("node %s leads: job executor started", node)
        self._term_stop = asyncio.Event()
        self._term_tasks = [
            asyncio.create_task(task(self._term_stop), name="leader-task")
            for task in self._leader_tasks
        ]
        try:
            self._ip_params = params_from_cluster(cluster, node)
        except CorralError as exc:
            log.error("master IP not configured correctly: %s", exc)
            self._ip_params = None
        if self._ip_params is not None:
            try:
                await asyncio.to_thread(self.master_ip.turnup, self._ip_params)
            except CorralError as exc:
                log.error("cannot turn up the master IP %s: %s", self._ip_params.ip, exc)

    async def _step_down(self, *, grace: float) -> None:
        """End the leadership term: stop the executor and leader tasks, turn the IP down.

        With an election, running jobs get ``grace`` seconds and are then left to the next
        leader; with a single master they end in ``error`` after ``grace`` (it was stopped).
        Finally the lease is released. Never raises.
        """
        executor, queue = self.executor, self._term_queue
        self.executor = self._term_queue = None
        self._term_stop.set()
        await asyncio.gather(*self._term_tasks, return_exceptions=True)
        self._term_tasks = []
        if executor is not None:
            if isinstance(self.leadership, LeaderElection):
                log.warning("node %s stops leading: job executor stopped", self.node_name)
                await executor.drain_and_abandon(grace)
            else:
                await executor.stop(grace)
        if queue is not None:
            queue.close()
        if self._ip_params is not None:
            try:
                await asyncio.to_thread(self.master_ip.turndown, self._ip_params)
            except CorralError as exc:
                log.error("cannot turn down the master IP %s: %s", self._ip_params.ip, exc)
            self._ip_params = None
        if isinstance(self.leadership, LeaderElection):
            await asyncio.to_thread(self.leadership.release)

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
        if self.executor is not None:
            self.executor.enqueue(job.id, job.priority)
        # NOTE: otherwise the leader's executor finds the job through its watch on the store.
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
        if outcome[0] and self.executor is not None:
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

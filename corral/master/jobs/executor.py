"""The job executor: runs queued jobs concurrently on the master's event loop.

* Picks queued jobs by priority (lower value first, as Ganeti) then id, up to ``max_jobs`` at
  once. New jobs arrive through :meth:`JobExecutor.enqueue` (same process) or are noticed by
  a watch on ``/corral/jobs/`` (submitted by another process).
* Runs each opcode of a job in order through the phases of :class:`Operation`:
  ``check_arguments -> declare_locks -> acquire (job "waiting" while blocked) ->
  check_prereq -> pre hooks -> execute -> post hooks``, and stores the result.
* A failing opcode fails the job; the error is logged here, once, with the job and opcode,
  added to the job log (with the tool's stderr, which the error message carries), and stored
  as the Ganeti-style result ``[ErrorClass, [message, ecode]]``.
* Cancellation points: before each opcode, while waiting for locks, and wherever an
  operation calls ``ctx.check_cancel()``.
* Recovery and takeover (:meth:`JobExecutor.start`, run by every new leader): for a job a
  previous master (a dead or deposed leader, or this master before a restart) left
  ``running``, the opcode it was running is re-run from its start when its operation declares
  ``IDEMPOTENT`` (the job log says "resumed after master X was lost"); otherwise the job is
  failed with :func:`lost_master_message`, naming that master and warning that the operation
  may have been applied partly. A job between two opcodes, and ``waiting`` jobs (they had not
  started their opcode), are queued again; ``canceling`` ones are canceled; ``queued`` ones
  run. So no job is lost and no non-idempotent opcode runs twice.
* Leadership: the executor runs only on the leader master (``master/leader.py``). Its
  :class:`ClusterConfig` is normally a fenced one, so once deposed none of its writes can land;
  it also checks :meth:`Leadership.is_leader` before each opcode. :meth:`JobExecutor.abandon`
  stops it on a lost leadership without recording anything (the next leader decides).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import os
import socket
import threading
import time
from typing import Any

from pydantic_core import to_jsonable_python

from corral.common.errors import (
    CorralError,
    ErrorKind,
    HookError,
    JobCanceled,
    JobError,
    ParamError,
)
from corral.common.log import context_logger
from corral.common.paths import Paths
from corral.master.config import JOBS_PREFIX, ClusterConfig, job_id_from_key
from corral.master.jobs.queue import JobQueue
from corral.master.leader import Leadership, NotLeaderError, owner_node
from corral.master.locking import LockManager
from corral.master.ops.base import (
    OPERATIONS,
    OpContext,
    Operation,
    load_operations,
    operation_class,
)
from corral.master.ops.hooks import Hooks
from corral.master.rpcrunner import NodeRunner
from corral.objects.job import Job, JobStatus, OpStatus
from corral.objects.opcodes import opcode_from_dict
from corral.store.base import EventType

log = logging.getLogger(__name__)

#: Result of opcodes that were running when the master died (a master not known by name).
RESTART_MESSAGE = (
    "master restarted while the job was running; the operation was interrupted and may "
    "have been applied partly: check the objects it touched before retrying"
)
#: Result of opcodes that were running when the master was stopped on purpose.
SHUTDOWN_MESSAGE = "master was stopped while the job was running; the operation was interrupted"

#: Default number of jobs run at once.
DEFAULT_MAX_JOBS = 64


def lost_master_message(master: str, op_id: str) -> str:
    """Result of a non-idempotent opcode that was running when master ``master`` was lost."""
    return (
        f"master {master} was lost while the job was running; {op_id} is not idempotent, so "
        "it was not run again: the operation was interrupted and may have been applied "
        "partly: check the objects it touched before retrying"
    )


def resumed_message(master: str, op_id: str) -> str:
    """Job log line of an idempotent opcode re-run after master ``master`` was lost."""
    return f"resumed after master {master} was lost ({op_id} is idempotent: it runs again)"


def failure_result(exc: CorralError, phase: str) -> list[Any]:
    """The Ganeti form of a failed opcode's result: ``[ErrorClass, [message, ecode]]``."""
    if isinstance(exc, HookError):
        cls = "HooksAbort"
    elif isinstance(exc, ParamError) or phase == "prereq":
        cls = "OpPrereqError"
    else:
        cls = "OpExecError"
    return [cls, [str(exc), exc.kind.value]]


class JobExecutor:
    """Runs the jobs of one master process (see module docstring).

    Args:
        config: the cluster state.
        queue: the job queue.
        runner: node RPCs.
        paths: this master's paths (for hooks' DATA_DIR).
        locks: the lock manager (a fresh one by default).
        max_jobs: jobs run at once.
        watch_interval: seconds a watch for jobs submitted elsewhere blocks at most.
        leadership: whether this master leads (default: always, the single-host case);
            ``config`` should then be a :class:`~corral.master.leader.FencedConfig`.
    """

    def __init__(
        self,
        config: ClusterConfig,
        queue: JobQueue,
        runner: NodeRunner,
        paths: Paths,
        *,
        locks: LockManager | None = None,
        max_jobs: int = DEFAULT_MAX_JOBS,
        watch_interval: float = 1.0,
        leadership: Leadership | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.runner = runner
        self.paths = paths
        self.locks = locks or LockManager()
        self.max_jobs = max_jobs
        self.watch_interval = watch_interval
        self.leadership = leadership
        current = leadership.current() if leadership is not None else None
        self.owner = (
            current.owner
            if current is not None
            else f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"
        )
        self._abandoning = False
        self._pending: list[tuple[int, int]] = []
        self._seen: set[int] = set()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._lock_waiting: set[int] = set()
        self._cancel_requested: set[int] = set()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._scheduler: asyncio.Task[None] | None = None
        self._watcher: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover jobs of a previous master, queue the queued ones, start scheduling.

        Raises:
            StoreError: the store cannot be read or written.
        """
        self._loop = asyncio.get_running_loop()
        load_operations()
        start_rev = self.config.store.revision + 1
        for job in self.queue.list_jobs():
            self._recover(job)
        self._scheduler = asyncio.create_task(self._schedule(), name="job-scheduler")
        if self.watch_interval > 0:
            self._watcher = threading.Thread(
                target=self._watch_new_jobs, args=(start_rev,), name="job-watch", daemon=True
            )
            self._watcher.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking jobs; running ones get ``grace`` seconds, then are interrupted.

        Interrupted jobs end in ``error`` with :data:`SHUTDOWN_MESSAGE`.
        """
        self._stopping = True
        self._wakeup.set()
        if self._scheduler is not None:
            await self._scheduler
        tasks = list(self._running.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, self.watch_interval + 2)

    async def abandon(self) -> None:
        """Stop at once because this master lost the leadership (see :meth:`drain_and_abandon`)."""
        await self.drain_and_abandon(0.0)

    async def drain_and_abandon(self, grace: float) -> None:
        """Stop taking jobs; give running ones ``grace`` seconds, then interrupt them.

        Nothing is recorded about the interrupted jobs: the next leader takes them over (and
        once deposed our writes would be refused anyway). Used when this master stops leading.
        Never raises.
        """
        self._stopping = True
        self._wakeup.set()
        if self._scheduler is not None:
            await self._scheduler
        tasks = list(self._running.values())
        if tasks and grace > 0:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            tasks = list(pending)
        self._abandoning = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, self.watch_interval + 2)

    def _recover(self, job: Job) -> None:
        if job.status is JobStatus.QUEUED:
            self.enqueue(job.id, job.priority)
        elif job.status is JobStatus.WAITING:
            log.info("job %d was waiting for locks when the master stopped; queued again", job.id)
            self.queue.update(job.id, _requeue)
            self.enqueue(job.id, job.priority)
        elif job.status is JobStatus.CANCELING:
            self.queue.mark_canceled(job.id)
        elif job.status is JobStatus.RUNNING:
            self._take_over(job)

    def _take_over(self, job: Job) -> None:
        """A job left running by a previous master: resume, requeue or fail it."""
        index = next((i for i, op in enumerate(job.ops) if op.status is not OpStatus.SUCCESS), 0)
        master = owner_node(job.owner) if job.owner else ""
        op_id = str(job.ops[index].input.get("OP_ID", "?"))
        if job.ops[index].status is not OpStatus.RUNNING:
            log.info(
                "job %d was between two opcodes when master %s stopped; queued again",
                job.id,
                master or "?",
            )
            self.queue.update(job.id, _requeue)
            self.enqueue(job.id, job.priority)
            return
        cls = OPERATIONS.get(op_id)
        if master and cls is not None and cls.IDEMPOTENT:
            message = resumed_message(master, op_id)
            log.warning("job %d: %s", job.id, message)
            self.queue.append_log(job.id, index, message)
            self.queue.update(job.id, functools.partial(_resume, index=index))
            self.enqueue(job.id, job.priority)
            return
        message = lost_master_message(master, op_id) if master else RESTART_MESSAGE
        log.warning("job %d: %s", job.id, message)
        self.queue.append_log(job.id, index, message)
        self.queue.mark_failed(job.id, index, ["OpExecError", [message, ErrorKind.FAULT.value]])

    # --- intake ---------------------------------------------------------------------------

    def enqueue(self, job_id: int, priority: int = 0) -> None:
        """Schedule a queued job (idempotent; call from the event loop)."""
        if job_id in self._seen or self._stopping:
            return
        self._seen.add(job_id)
        heapq.heappush(self._pending, (priority, job_id))
        self._wakeup.set()

    def request_cancel(self, job_id: int) -> None:
        """Interrupt a job blocked on locks (call after :meth:`JobQueue.cancel`)."""
        task = self._running.get(job_id)
        if task is not None and job_id in self._lock_waiting:
            self._cancel_requested.add(job_id)
            task.cancel()

    def _watch_new_jobs(self, start_rev: int) -> None:
        """Thread: notice jobs stored by other processes."""
        rev = start_rev
        while not self._stopping:
            try:
                events = self.config.store.watch(JOBS_PREFIX, rev, self.watch_interval)
            except CorralError as exc:
                log.warning("job watch restarted: %s", exc)
                rev = self.config.store.revision + 1
                self._post(self._rescan)
                continue
            for event in events:
                rev = event.revision + 1
                if event.type is not EventType.PUT:
                    continue
                try:
                    job_id = job_id_from_key(event.key)
                except ValueError:
                    continue
                if job_id not in self._seen:
                    self._post(self._consider, job_id)

    def _post(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    def _consider(self, job_id: int) -> None:
        if job_id in self._seen:
            return
        try:
            job = self.queue.get(job_id)
        except CorralError:
            return
        if job.status is JobStatus.QUEUED:
            self.enqueue(job.id, job.priority)

    def _rescan(self) -> None:
        for job in self.queue.list_jobs():
            if job.status is JobStatus.QUEUED:
                self.enqueue(job.id, job.priority)

    # --- scheduling -----------------------------------------------------------------------

    async def _schedule(self) -> None:
        while not self._stopping:
            while self._pending and len(self._running) < self.max_jobs:
                _, job_id = heapq.heappop(self._pending)
                task = asyncio.create_task(self._run_job(job_id), name=f"job-{job_id}")
                self._running[job_id] = task
                task.add_done_callback(functools.partial(self._finished, job_id))
            self._wakeup.clear()
            await self._wakeup.wait()

    def _finished(self, job_id: int, _task: object = None) -> None:
        self._running.pop(job_id, None)
        self._cancel_requested.discard(job_id)
        self._lock_waiting.discard(job_id)
        self._wakeup.set()

    def running_jobs(self) -> list[int]:
        """Ids of the jobs this executor runs now."""
        return sorted(self._running)

    # --- running a job --------------------------------------------------------------------

    async def _run_job(self, job_id: int) -> None:
        jlog = context_logger(__name__, job_id=job_id)
        try:
            job = self.queue.get(job_id)
        except JobError:
            return
        if job.status is not JobStatus.QUEUED:
            return
        try:
            for index, queued in enumerate(job.ops):
                if queued.status is OpStatus.SUCCESS:
                    continue
                if not await self._run_op(job_id, index, queued.input):
                    return
        except asyncio.CancelledError:
            if self._abandoning:
                jlog.warning("interrupted: this master is not the leader any more")
                raise
            if job_id in self._cancel_requested:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                jlog.info("canceled while waiting for locks")
                self._finalize_canceled(job_id)
                return
            jlog.warning("interrupted: %s", SHUTDOWN_MESSAGE)
            self._store_failure(job_id, ["OpExecError", [SHUTDOWN_MESSAGE, ErrorKind.FAULT.value]])
            raise

    async def _run_op(self, job_id: int, index: int, data: dict[str, Any]) -> bool:
        """Run one opcode; return whether the job goes on with the next one."""
        op_id = str(data.get("OP_ID", "?"))
        jlog = context_logger(__name__, job_id=job_id, op=op_id)
        phase = "prereq"
        try:
            if self.leadership is not None and not self.leadership.is_leader():
                raise NotLeaderError(f"master {self.owner} is not the leader any more")
            if self.queue.cancel_requested(job_id):
                raise JobCanceled(f"job {job_id} was canceled")
            opcode = opcode_from_dict(data)
            ctx = OpContext(
                config=self.config,
                runner=self.runner,
                paths=self.paths,
                job_id=job_id,
                log=jlog,
                feedback=lambda msg: self._feedback(jlog, job_id, index, msg),
                check_cancel=lambda: self._check_cancel(job_id),
            )
            operation: Operation[Any] = operation_class(opcode.OP_ID)(opcode, ctx)
            operation.check_arguments()
            wanted = operation.declare_locks()

            def on_wait(lock_name: str) -> None:
                jlog.debug("waiting for lock %s", lock_name)
                self._lock_waiting.add(job_id)
                self.queue.mark_waiting(job_id, index)

            async with self.locks.acquire(f"job/{job_id}", wanted, on_wait=on_wait):
                self._lock_waiting.discard(job_id)
                self.queue.mark_running(job_id, index, owner=self.owner)
                await operation.check_prereq()
                hooks = Hooks(operation)
                phase = "hooks"
                await hooks.run_pre()
                if opcode.dry_run:
                    self._feedback(jlog, job_id, index, "dry run: checks passed, nothing done")
                    result = operation.dry_run_result
                else:
                    phase = "execute"
                    result = await operation.execute()
                    await hooks.run_post()
            self.queue.mark_op_success(job_id, index, to_jsonable_python(result))
            jlog.info("succeeded")
            return True
        except JobCanceled:
            jlog.info("canceled")
            self._finalize_canceled(job_id)
            return False
        except NotLeaderError as exc:
            # NOTE: nothing to record: our writes are fenced; the new leader takes it over.
            jlog.warning("stopped, not the leader any more: %s", exc)
            return False
        except CorralError as exc:
            jlog.error("failed (%s): %s", exc.kind.value, exc)
            self._fail(job_id, index, exc, phase)
            return False
        except Exception as exc:  # the handling boundary: a bug fails the job, not the master
            jlog.exception("internal error")
            err = CorralError(f"internal error: {type(exc).__name__}: {exc}", kind=ErrorKind.FAULT)
            self._fail(job_id, index, err, "execute")
            return False

    def _fail(self, job_id: int, index: int, exc: CorralError, phase: str) -> None:
        try:
            self.queue.append_log(job_id, index, f"error: {exc}")
            self.queue.mark_failed(job_id, index, failure_result(exc, phase))
        except CorralError as store_exc:
            log.error("job %d: cannot record its failure: %s", job_id, store_exc)

    def _store_failure(self, job_id: int, result: list[Any]) -> None:
        try:
            job = self.queue.get(job_id)
            index = next(
                (
                    i
                    for i, op in enumerate(job.ops)
                    if op.status not in (OpStatus.SUCCESS, OpStatus.ERROR, OpStatus.CANCELED)
                ),
                None,
            )
            if index is not None:
                self.queue.append_log(job_id, index, str(result[1][0]))
                self.queue.mark_failed(job_id, index, result)
        except CorralError as exc:
            log.error("job %d: cannot record its interruption: %s", job_id, exc)

    def _finalize_canceled(self, job_id: int) -> None:
        try:
            if not self.queue.get(job_id).finalized:
                self.queue.mark_canceled(job_id)
        except CorralError as exc:
            log.error("job %d: cannot record its cancellation: %s", job_id, exc)

    def _feedback(
        self, jlog: logging.LoggerAdapter[logging.Logger], job_id: int, index: int, message: str
    ) -> None:
        jlog.info("%s", message)
        try:
            self.queue.append_log(job_id, index, message)
        except CorralError as exc:
            jlog.warning("cannot add to the job log: %s", exc)

    def _check_cancel(self, job_id: int) -> None:
        if job_id in self._cancel_requested or self.queue.cancel_requested(job_id):
            raise JobCanceled(f"job {job_id} was canceled")


def _requeue(job: Job) -> None:
    for op in job.ops:
        if op.status is OpStatus.WAITING:
            op.status = OpStatus.QUEUED
    job.status = JobStatus.QUEUED


def _resume(job: Job, *, index: int) -> None:
    """Make opcode ``index`` (left running by a lost master) and the job queued again."""
    if job.status is not JobStatus.RUNNING or job.ops[index].status is not OpStatus.RUNNING:
        return  # changed meanwhile (canceled): leave it
    job.ops[index].status = OpStatus.QUEUED
    job.status = JobStatus.QUEUED

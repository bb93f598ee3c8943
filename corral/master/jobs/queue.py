"""The persistent job queue: jobs live in the store, every state change is one transaction.

Life of a job (Ganeti's statuses, see ``docs/architecture/jobs.md``)::

    submit ──> queued ──> waiting ──> running ──> success | error
                 │           │           │
                 └─cancel────┴─> canceled └─cancel─> canceling ──> canceled
                                                      (at the next cancellation point)

* :meth:`JobQueue.submit` allocates the id and stores the job in one transaction: it bumps
  ``/corral/serial/job`` guarded by its revision, so two submitters never get the same id.
* Each opcode has its own status, result, timestamps and log; log entries carry job-wide
  serials (``Job.log_serial``) so clients can ask for "everything after serial N".
* Every update is a read-modify-write guarded by the job key's revision
  (:meth:`ClusterConfig.modify`): a cancel from the API and a status change from the executor
  never overwrite each other; transitions re-check the status they start from.
* :meth:`JobQueue.wait_for_change` is the long poll behind ``/2/jobs/<id>/wait``; it uses
  :meth:`Store.watch` on the job's key, so it also sees changes made by another process.

Store calls are synchronous and short (SQLite, no fsync per commit in WAL mode); the blocking
``watch`` runs in a dedicated thread pool so long polls never starve other work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from corral.common.errors import CorralError, ErrorKind, JobCanceled, JobError, ParamError
from corral.master.config import (
    JOB_SERIAL_KEY,
    JOBS_PREFIX,
    ClusterConfig,
    Versioned,
    job_key,
)
from corral.objects.job import Job, JobStatus, LogEntry, LogType, OpStatus, QueuedOp
from corral.objects.opcodes import OpCode
from corral.store.base import Compare, Put

log = logging.getLogger(__name__)

#: Result stored in opcodes that were canceled.
CANCELED_RESULT = "Job canceled by request"
#: The longest single ``Store.watch`` call of a long poll (keeps shutdown prompt).
_WATCH_SLICE = 2.0
#: Attempts to allocate a job id when other submitters race us.
_SUBMIT_RETRIES = 50

#: Job fields :func:`job_fields` knows (Ganeti's names).
JOB_FIELDS = (
    "id",
    "status",
    "ops",
    "opresult",
    "opstatus",
    "oplog",
    "summary",
    "received_ts",
    "start_ts",
    "end_ts",
    "priority",
    "opstart",
    "opexec",
    "opend",
)


def ganeti_ts(ts: float | None) -> list[int] | None:
    """A timestamp as Ganeti sends it: ``[seconds, microseconds]`` (None stays None)."""
    if ts is None:
        return None
    sec = int(ts)
    return [sec, round((ts - sec) * 1_000_000)]


def job_fields(job: Job, fields: Sequence[str]) -> list[Any]:
    """The values of Ganeti job fields, JSON-native, in the order asked.

    Raises:
        ParamError: an unknown field (named in the error).
    """
    getters: dict[str, Callable[[], Any]] = {
        "id": lambda: job.id,
        "status": lambda: job.status.value,
        "ops": lambda: [op.input for op in job.ops],
        "opresult": lambda: [op.result for op in job.ops],
        "opstatus": lambda: [op.status.value for op in job.ops],
        "oplog": lambda: [[e.to_ganeti() for e in op.log] for op in job.ops],
        "summary": lambda: list(job.summary),
        "received_ts": lambda: ganeti_ts(job.received_timestamp),
        "start_ts": lambda: ganeti_ts(job.start_timestamp),
        "end_ts": lambda: ganeti_ts(job.end_timestamp),
        "priority": lambda: job.priority,
        "opstart": lambda: [ganeti_ts(op.start_timestamp) for op in job.ops],
        "opexec": lambda: [ganeti_ts(op.exec_timestamp) for op in job.ops],
        "opend": lambda: [ganeti_ts(op.end_timestamp) for op in job.ops],
    }
    unknown = [f for f in fields if f not in getters]
    if unknown:
        raise ParamError(
            {f: f"unknown job field (known: {', '.join(JOB_FIELDS)})" for f in unknown},
            context="job fields",
        )
    return [getters[f]() for f in fields]


def _job_missing(job_id: int) -> JobError:
    return JobError(f"job {job_id} does not exist", kind=ErrorKind.NOT_FOUND, job_id=job_id)


class JobQueue:
    """Jobs in the store: submission, state transitions, logs, cancel and long polls."""

    def __init__(self, config: ClusterConfig, *, watch_threads: int = 64) -> None:
        self.config = config
        self._watch_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=watch_threads, thread_name_prefix="job-watch"
        )

    def close(self) -> None:
        """Stop the long-poll threads (pending polls end within a couple of seconds)."""
        self._watch_pool.shutdown(wait=False, cancel_futures=True)

    # --- reads ----------------------------------------------------------------------------

    def get_versioned(self, job_id: int) -> Versioned[Job]:
        """A job with its revision.

        Raises:
            JobError: no such job (kind NOT_FOUND).
            StoreError: the store failed.
        """
        found = self.config.read(job_key(job_id), Job)
        if found is None:
            raise _job_missing(job_id)
        return found

    def get(self, job_id: int) -> Job:
        """A job (see :meth:`get_versioned`)."""
        return self.get_versioned(job_id).value

    def list_jobs(self) -> list[Job]:
        """Every job, by id."""
        return [v.value for v in self.config.read_all(JOBS_PREFIX, Job)]

    # --- submission -----------------------------------------------------------------------

    def submit(self, ops: Sequence[OpCode]) -> Job:
        """Store a new queued job made of ``ops``; allocate its id atomically.

        Raises:
            ParamError: no opcodes.
            StoreError: the store failed (nothing was stored), or the id could not be
                allocated because of constant contention (kind TEMP_NO_RESOURCES).
        """
        if not ops:
            raise ParamError({"ops": "a job needs at least one opcode"}, context="job")
        for _ in range(_SUBMIT_RETRIES):
            serial_kv = self.config.store.get(JOB_SERIAL_KEY)
            last = int(serial_kv.value) if serial_kv else 0
            job_id = last + 1
            now = time.time()
            job = Job(
                id=job_id,
                ops=[QueuedOp(input=op.to_dict(), priority=op.priority) for op in ops],
                priority=min(op.priority for op in ops),
                received_timestamp=now,
                summary=[op.summary() for op in ops],
            )
            compare = Compare.unchanged(serial_kv) if serial_kv else Compare.absent(JOB_SERIAL_KEY)
            result = self.config.store.txn(
                [compare, Compare.absent(job_key(job_id))],
                [
                    Put(JOB_SERIAL_KEY, str(job_id).encode()),
                    Put(job_key(job_id), job.model_dump_json().encode()),
                ],
            )
            if result.succeeded:
                log.info("job %d submitted: %s", job_id, ", ".join(job.summary))
                return job
        raise JobError(
            "could not allocate a job id (too many concurrent submissions); retry",
            kind=ErrorKind.TEMP_NO_RESOURCES,
        )

    # --- updates --------------------------------------------------------------------------

    def update(self, job_id: int, change: Callable[[Job], None]) -> Job:
        """Read-modify-write a job (retrying on concurrent writes); ``change`` may raise.

        Raises:
            JobError: no such job (NOT_FOUND); whatever ``change`` raises.
            StoreError: the store failed.
        """
        return self.config.modify(
            job_key(job_id), Job, change, missing=lambda: _job_missing(job_id)
        )

    def mark_waiting(self, job_id: int, index: int) -> Job:
        """Opcode ``index`` waits for its locks.

        Raises:
            JobCanceled: the job was canceled meanwhile.
        """

        def change(job: Job) -> None:
            _refuse_if_canceled(job)
            op = job.ops[index]
            op.status = OpStatus.WAITING
            op.start_timestamp = op.start_timestamp or time.time()
            job.start_timestamp = job.start_timestamp or op.start_timestamp
            job.status = JobStatus.WAITING

        return self.update(job_id, change)

    def mark_running(self, job_id: int, index: int, *, owner: str = "") -> Job:
        """Opcode ``index`` holds its locks and starts; the job becomes ``running``.

        Raises:
            JobCanceled: the job was canceled (or a cancel was requested) meanwhile.
        """

        def change(job: Job) -> None:
            _refuse_if_canceled(job)
            now = time.time()
            op = job.ops[index]
            op.status = OpStatus.RUNNING
            op.start_timestamp = op.start_timestamp or now
            op.exec_timestamp = now
            job.start_timestamp = job.start_timestamp or now
            job.status = JobStatus.RUNNING
            if owner:
                job.owner = owner

        return self.update(job_id, change)

    def mark_op_success(self, job_id: int, index: int, result: Any) -> Job:
        """Opcode ``index`` succeeded with ``result``; the last one finishes the job."""

        def change(job: Job) -> None:
            now = time.time()
            op = job.ops[index]
            op.status = OpStatus.SUCCESS
            op.result = result
            op.end_timestamp = now
            if index == len(job.ops) - 1:
                job.status = JobStatus.SUCCESS
                job.end_timestamp = now

        return self.update(job_id, change)

    def mark_failed(self, job_id: int, index: int, result: Any) -> Job:
        """Opcode ``index`` failed: it and every later opcode end in ``error``, as the job.

        ``result`` is the Ganeti-style failure ``[ErrorClass, [message, ecode]]``.
        """

        def change(job: Job) -> None:
            now = time.time()
            for op in job.ops[index:]:
                if op.status in (OpStatus.SUCCESS, OpStatus.ERROR, OpStatus.CANCELED):
                    continue
                op.status = OpStatus.ERROR
                op.result = result
                op.start_timestamp = op.start_timestamp or now
                op.end_timestamp = now
            job.status = JobStatus.ERROR
            job.end_timestamp = now

        return self.update(job_id, change)

    def mark_canceled(self, job_id: int) -> Job:
        """Every unfinished opcode and the job end as ``canceled`` (no-op once finished)."""

        def change(job: Job) -> None:
            if not job.finalized:
                _cancel_now(job)

        return self.update(job_id, change)

    def append_log(
        self, job_id: int, index: int, message: str, log_type: LogType = LogType.MESSAGE
    ) -> int:
        """Add a log line to opcode ``index``; return its job-wide serial.

        Raises:
            JobError: no such job.
            StoreError: the store failed.
        """
        serial = 0

        def change(job: Job) -> None:
            nonlocal serial
            job.log_serial += 1
            serial = job.log_serial
            job.ops[index].log.append(
                LogEntry(serial=serial, timestamp=time.time(), type=log_type, message=message)
            )

        self.update(job_id, change)
        return serial

    # --- cancel ---------------------------------------------------------------------------

    def cancel(
        self, job_id: int, *, interruptible: Callable[[Job], bool] | None = None
    ) -> tuple[bool, str]:
        """Cancel a job.

        Queued and waiting jobs are canceled at once; running ones become ``canceling`` and
        stop at their next cancellation point, if they have one: ``interruptible(job)`` says
        whether a running job still reaches one (e.g. it has operations left, or its running
        operation checks for cancellation); when it does not, the cancel is refused.

        Returns:
            ``(True, message)`` when canceled or scheduled for cancellation, ``(False,
            message)`` when the job had already finished or cannot be interrupted any more.

        Raises:
            JobError: no such job (NOT_FOUND).
        """
        outcome: tuple[bool, str] = (False, "")

        def change(job: Job) -> None:
            nonlocal outcome
            if job.status in (JobStatus.QUEUED, JobStatus.WAITING):
                _cancel_now(job)
                outcome = (True, f"Job {job_id} canceled")
            elif job.status is JobStatus.RUNNING:
                if interruptible is not None and not interruptible(job):
                    outcome = (
                        False,
                        f"Job {job_id} is running its last operation, which cannot be "
                        "interrupted; it will finish",
                    )
                    raise _NoChange
                job.status = JobStatus.CANCELING
                outcome = (True, f"Job {job_id} will be canceled at its next cancellation point")
            elif job.status is JobStatus.CANCELING:
                outcome = (True, f"Job {job_id} is already being canceled")
                raise _NoChange
            else:
                outcome = (False, f"Job {job_id} has already finished ({job.status.value})")
                raise _NoChange

        with contextlib.suppress(_NoChange):
            self.update(job_id, change)
        log.info("cancel of job %d: %s", job_id, outcome[1])
        return outcome

    def cancel_requested(self, job_id: int) -> bool:
        """Whether the job is being (or was) canceled — the cancellation-point check."""
        return self.get(job_id).status in (JobStatus.CANCELING, JobStatus.CANCELED)

    # --- long poll ------------------------------------------------------------------------

    async def wait_for_change(
        self,
        job_id: int,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
        timeout: float,
    ) -> dict[str, Any] | None:
        """Wait until a job changes (Ganeti's ``WaitForJobChanges``).

        A change is: the values of ``fields`` differ from ``prev_job_info``, or there are log
        entries after ``prev_log_serial``.

        A finished job answers at once (its final state), so clients never wait on it.

        Returns:
            ``{"job_info": [...], "log_entries": [[serial, [s, us], type, msg], ...]}``, or
            None when nothing changed within ``timeout`` seconds.

        Raises:
            JobError: no such job (NOT_FOUND).
            ParamError: an unknown field.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # NOTE: always yield once, so a client polling in a loop cannot starve the jobs.
            await asyncio.sleep(0)
            current = self.get_versioned(job_id)
            job = current.value
            info = job_fields(job, fields)
            entries = [
                e.to_ganeti()
                for e in job.all_log()
                if prev_log_serial is None or e.serial > prev_log_serial
            ]
            if prev_job_info is None or info != prev_job_info or entries or job.finalized:
                return {"job_info": info, "log_entries": entries}
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await loop.run_in_executor(
                    self._watch_pool,
                    self.config.store.watch,
                    job_key(job_id),
                    current.revision + 1,
                    min(remaining, _WATCH_SLICE),
                )
            except CorralError as exc:
                # History compacted past our revision: just re-read the job.
                log.debug("watch of job %d restarted: %s", job_id, exc)


class _NoChange(Exception):
    """Raised inside an update to leave the job as it is."""


def _refuse_if_canceled(job: Job) -> None:
    if job.status in (JobStatus.CANCELING, JobStatus.CANCELED):
        raise JobCanceled(f"job {job.id} was canceled", job_id=job.id)


def _cancel_now(job: Job) -> None:
    now = time.time()
    for op in job.ops:
        if op.status in (OpStatus.SUCCESS, OpStatus.ERROR, OpStatus.CANCELED):
            continue
        op.status = OpStatus.CANCELED
        op.result = CANCELED_RESULT
        op.end_timestamp = now
    job.status = JobStatus.CANCELED
    job.end_timestamp = now

r"""Jobs: a list of opcodes with per-opcode status, results and log (Ganeti's job model).

Status strings are Ganeti's, so ``/2/jobs/<id>`` answers what RAPI clients expect::

    queued -> waiting -> running -> success | error | canceled
          \-> canceling -> canceled           (cancel before the job runs an opcode)
"""

from __future__ import annotations

import enum
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(enum.StrEnum):
    """Status of a whole job."""

    QUEUED = "queued"
    WAITING = "waiting"
    CANCELING = "canceling"
    RUNNING = "running"
    CANCELED = "canceled"
    SUCCESS = "success"
    ERROR = "error"

    @property
    def finalized(self) -> bool:
        """True once the job can no longer change."""
        return self in (JobStatus.CANCELED, JobStatus.SUCCESS, JobStatus.ERROR)


class OpStatus(enum.StrEnum):
    """Status of one opcode of a job."""

    QUEUED = "queued"
    WAITING = "waiting"
    CANCELING = "canceling"
    RUNNING = "running"
    CANCELED = "canceled"
    SUCCESS = "success"
    ERROR = "error"


class LogType(enum.StrEnum):
    """Kind of job log entry (Ganeti ELOG_*)."""

    MESSAGE = "message"
    REMOTE_IMPORT = "remote-import"
    JQUEUE_TEST = "jqueue-test"


class LogEntry(BaseModel):
    """One job log line: a job-wide serial, a timestamp, a type and a message."""

    model_config = ConfigDict(extra="forbid")

    serial: int
    timestamp: float
    type: LogType = LogType.MESSAGE
    message: str

    def to_ganeti(self) -> list[Any]:
        """Ganeti's wire form ``[serial, [sec, usec], type, message]``."""
        sec = int(self.timestamp)
        usec = int((self.timestamp - sec) * 1_000_000)
        return [self.serial, [sec, usec], self.type.value, self.message]


class QueuedOp(BaseModel):
    """One opcode inside a job, with its own status, result and log."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any]  # the opcode's dict form (with OP_ID)
    status: OpStatus = OpStatus.QUEUED
    result: Any = None
    log: list[LogEntry] = Field(default_factory=list)
    start_timestamp: float | None = None
    exec_timestamp: float | None = None
    end_timestamp: float | None = None
    priority: int = 0


class Job(BaseModel):
    """A job as stored and as shown by the API."""

    model_config = ConfigDict(extra="forbid")

    id: int
    ops: list[QueuedOp]
    status: JobStatus = JobStatus.QUEUED
    priority: int = 0
    received_timestamp: float = Field(default_factory=time.time)
    start_timestamp: float | None = None
    end_timestamp: float | None = None
    summary: list[str] = Field(default_factory=list)
    #: Who runs it: the master instance that took it (for failover and restart recovery).
    owner: str = ""
    log_serial: int = 0

    @property
    def finalized(self) -> bool:
        """True once the job can no longer change."""
        return self.status.finalized

    def all_log(self) -> list[LogEntry]:
        """Every log entry of every opcode, ordered by serial."""
        return sorted((e for op in self.ops for e in op.log), key=lambda e: e.serial)

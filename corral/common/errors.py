"""The error tree of Corral.

Every error Corral raises on purpose derives from :class:`CorralError`. Each carries an
:class:`ErrorKind` (what a caller can do about it, mapped to Ganeti's ``ECODE_*`` and to HTTP
statuses by ``api/errors.py``) and structured fields; ``str()`` builds the message from them.

::

    CorralError                      kind, message, fields
    ├── ParamError                   one or more parameter problems (key -> reason)
    ├── CommandError                 an external program failed (argv, rc, stdout, stderr)
    │   └── CommandTimeout           ... or did not finish in time
    ├── StoreError                   the state store
    │   └── RevisionConflict         a transaction's compare failed (retry with fresh data)
    ├── HypervisorError              a hypervisor driver
    │   └── LaunchError              a guest process did not start (argv, exitcode, log_tail)
    ├── StorageError                 a storage driver
    ├── OsError                      an OS definition (missing, invalid, script failed)
    ├── HookError                    a pre-hook refused an operation
    ├── RpcError                     master <-> node transport (unreachable, TLS, timeout)
    │   └── TlsError                 certificates: missing, unreadable, invalid, not ours
    ├── JobError                     the job queue (unknown job, wrong state, canceled)
    │   └── JobCanceled              raised inside an operation when its job is canceled
    └── OpError                      an operation's checks or execution

Rules (STYLE.md §4): raise with ``from exc`` at layer boundaries, never let ``OSError`` and the
like leak out of a driver, log once where the error is handled (executor or API handler).
Errors cross the RPC wire as ``{"type", "kind", "message", "fields"}`` and are rebuilt by
:func:`error_from_wire` from the registry below; anything unknown becomes a plain
:class:`CorralError` with the same kind and message.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class ErrorKind(enum.StrEnum):
    """What kind of problem an error is; the Ganeti ``ECODE_*`` equivalent."""

    NOT_FOUND = "unknown_entity"
    EXISTS = "already_exists"
    WRONG_STATE = "wrong_state"
    INVALID = "wrong_input"
    NO_RESOURCES = "insufficient_resources"
    TEMP_NO_RESOURCES = "temp_insufficient_resources"
    ENVIRONMENT = "environment_error"
    NOT_UNIQUE = "resource_not_unique"
    FAULT = "internal_error"


class CorralError(Exception):
    """Root of all of Corral's errors.

    Args:
        message: what went wrong, in words an administrator understands.
        kind: the :class:`ErrorKind`; subclasses set a sensible default.
        **fields: structured details (JSON-serialisable), kept for callers and the wire.
    """

    default_kind: ClassVar[ErrorKind] = ErrorKind.FAULT

    def __init__(self, message: str, *, kind: ErrorKind | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind or self.default_kind
        self.fields: dict[str, Any] = fields

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON form used across RPC and in job results."""
        return {
            "type": type(self).__name__,
            "kind": self.kind.value,
            "message": str(self),
            "fields": _jsonable(self.fields),
        }


class ParamError(CorralError):
    """One or more parameters are invalid.

    ``problems`` maps each offending key to the reason; all problems are reported together.
    """

    default_kind = ErrorKind.INVALID

    def __init__(
        self,
        problems: Mapping[str, str],
        *,
        context: str = "",
        kind: ErrorKind | None = None,
        **fields: Any,
    ) -> None:
        self.problems = dict(problems)
        self.context = context
        prefix = f"invalid {context}: " if context else "invalid parameters: "
        text = "; ".join(f"{key}: {why}" for key, why in sorted(self.problems.items()))
        super().__init__(
            prefix + text, kind=kind, problems=self.problems, context=context, **fields
        )


class CommandError(CorralError):
    """An external program exited non-zero (or could not be started)."""

    default_kind = ErrorKind.ENVIRONMENT

    def __init__(
        self,
        argv: Sequence[str],
        rc: int | None,
        stdout: str = "",
        stderr: str = "",
        *,
        message: str = "",
        kind: ErrorKind | None = None,
    ) -> None:
        self.argv = list(argv)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr.strip() or stdout.strip())[-2000:]
        text = message or f"command {self.argv[0]!r} failed with exit code {rc}"
        if detail:
            text = f"{text}: {detail}"
        super().__init__(text, kind=kind, argv=self.argv, rc=rc, stderr=stderr[-4000:])


class CommandTimeout(CommandError):
    """An external program did not finish within its timeout (it was killed)."""

    def __init__(self, argv: Sequence[str], timeout: float, stdout: str = "", stderr: str = ""):
        super().__init__(
            argv,
            None,
            stdout,
            stderr,
            message=f"command {argv[0]!r} timed out after {timeout:g}s",
        )
        self.fields["timeout"] = timeout


class StoreError(CorralError):
    """The cluster state store failed or holds inconsistent data."""


class RevisionConflict(StoreError):
    """A transaction's comparison failed: somebody changed the data first."""

    default_kind = ErrorKind.TEMP_NO_RESOURCES


class HypervisorError(CorralError):
    """A hypervisor driver could not do what was asked."""

    default_kind = ErrorKind.ENVIRONMENT


class LaunchError(HypervisorError):
    """A guest process did not start; carries the command line and the end of its log."""

    def __init__(
        self, message: str, *, argv: Sequence[str], exitcode: int | None, log_tail: str = ""
    ) -> None:
        text = message + (f": {log_tail.strip()}" if log_tail.strip() else "")
        super().__init__(text, argv=list(argv), exitcode=exitcode, log_tail=log_tail)


class StorageError(CorralError):
    """A storage driver could not do what was asked."""

    default_kind = ErrorKind.ENVIRONMENT


class OsError(CorralError):
    """An OS definition is missing, invalid, or one of its scripts failed."""

    default_kind = ErrorKind.ENVIRONMENT


class HookError(CorralError):
    """A pre-operation hook refused the operation."""

    default_kind = ErrorKind.WRONG_STATE


class RpcError(CorralError):
    """A node could not be reached or did not answer in time."""

    default_kind = ErrorKind.ENVIRONMENT


class TlsError(RpcError):
    """A certificate or key is missing, unreadable or invalid, or cannot be created."""


class JobError(CorralError):
    """A job-queue request failed (unknown job, wrong state for the request)."""

    default_kind = ErrorKind.WRONG_STATE


class JobCanceled(JobError):
    """The job was canceled while it waited or between its operations."""


class OpError(CorralError):
    """An operation was refused by its checks or failed while executing."""

    default_kind = ErrorKind.INVALID


#: Error kind of a bare HTTP status (an answer without Corral's ``kind``), shared by the API
#: (errors it raises itself) and the client (answers from servers that send no kind).
HTTP_STATUS_KIND: dict[int, ErrorKind] = {
    400: ErrorKind.INVALID,
    401: ErrorKind.INVALID,
    403: ErrorKind.INVALID,
    404: ErrorKind.NOT_FOUND,
    405: ErrorKind.INVALID,
    409: ErrorKind.WRONG_STATE,
    415: ErrorKind.INVALID,
    502: ErrorKind.ENVIRONMENT,
    503: ErrorKind.TEMP_NO_RESOURCES,
    504: ErrorKind.TEMP_NO_RESOURCES,
}


_REGISTRY: dict[str, type[CorralError]] = {
    cls.__name__: cls
    for cls in (
        CorralError,
        StoreError,
        RevisionConflict,
        HypervisorError,
        StorageError,
        OsError,
        HookError,
        RpcError,
        TlsError,
        JobError,
        JobCanceled,
        OpError,
    )
}


def error_from_wire(data: Mapping[str, Any]) -> CorralError:
    """Rebuild an error sent by :meth:`CorralError.to_wire`.

    Only classes in an allow-list are rebuilt with their own type (never unpickled); others,
    and classes with their own constructor signature (ParamError, CommandError, ...), come back
    as a :class:`CorralError` of the same kind, message and fields, with the original type name
    kept in ``fields["remote_type"]``. Malformed input gives a FAULT error, never an exception.
    """
    try:
        kind = ErrorKind(data.get("kind", ErrorKind.FAULT.value))
    except ValueError:
        kind = ErrorKind.FAULT
    message = str(data.get("message", "unknown remote error"))
    fields = data.get("fields") or {}
    if not isinstance(fields, Mapping):
        fields = {}
    type_name = str(data.get("type", "CorralError"))
    problems = fields.get("problems")
    if type_name == "ParamError" and isinstance(problems, Mapping):
        return ParamError(
            {str(k): str(v) for k, v in problems.items()},
            context=str(fields.get("context", "")),
            kind=kind,
        )
    cls = _REGISTRY.get(type_name, CorralError)
    err = cls(message, kind=kind, **{k: v for k, v in fields.items() if isinstance(k, str)})
    if cls is CorralError and type_name != "CorralError":
        err.fields["remote_type"] = type_name
    return err


def error_from_result(result: Any) -> CorralError:
    """Rebuild the error a failed opcode left as its result.

    Accepts Corral's wire form (``{"type", "kind", "message", "fields"}``) and Ganeti's
    (``[ErrorClass, [message, ecode]]``); anything else becomes a FAULT with its text.
    """
    if isinstance(result, dict) and "message" in result:
        return error_from_wire(result)
    if isinstance(result, list | tuple) and len(result) == 2:
        cls_name, args = result
        if isinstance(args, list | tuple) and args:
            kind = ErrorKind.FAULT
            if len(args) > 1:
                try:
                    kind = ErrorKind(str(args[1]))
                except ValueError:
                    kind = ErrorKind.FAULT
            return CorralError(str(args[0]), kind=kind, remote_type=str(cls_name))
    return CorralError(f"operation failed: {result!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)

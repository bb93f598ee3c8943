"""Logging for Corral's daemons and a context adapter for jobs, operations and instances.

Daemons call :func:`setup_logging` once at startup::

    setup_logging(log_file=paths.log_dir + "/corral-noded.log", level="INFO", name="noded")

Lines look like::

    2024-05-01 12:00:00,123 noded[4242] INFO corral.rpc.server: listening on 127.0.0.2:1811

The file handler reopens the file when logrotate moves it (``WatchedFileHandler``).

Code that works for a job, an operation or an instance logs through a :class:`ContextLogger`
(STYLE §6), which prefixes every message with its context and also puts the fields on the
record (``record.job_id`` ...) for handlers that want them::

    log = context_logger(__name__, job_id=12, op="OP_INSTANCE_STARTUP", instance="vm1")
    log.info("starting on %s", node)       # "[job 12 OP_INSTANCE_STARTUP vm1] starting on n1"
    nlog = log.bind(node="n1")
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Self

from corral.common.errors import CorralError, ErrorKind

#: The context fields, in the order they are shown.
CONTEXT_FIELDS = ("job_id", "op", "instance", "node")

_FORMAT = "%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s"
_MARK = "_corral_handler"
_NOISY = {
    "asyncio": logging.INFO,
    "httpcore": logging.WARNING,
    "httpx": logging.WARNING,
    "hpack": logging.WARNING,
    "qemu": logging.INFO,
}


def parse_level(level: int | str) -> int:
    """``"debug"``, ``"INFO"``, ``20`` ... -> a logging level number.

    Raises:
        CorralError: an unknown level name (kind INVALID).
    """
    if isinstance(level, int):
        return level
    value = logging.getLevelNamesMapping().get(level.strip().upper())
    if value is None:
        raise CorralError(
            f"unknown log level {level!r} (use debug, info, warning or error)",
            kind=ErrorKind.INVALID,
            level=level,
        )
    return value


def setup_logging(
    *, log_file: str | None, level: int | str = logging.INFO, name: str = "corral"
) -> None:
    """Send all of Corral's log records to ``log_file`` (or stderr when None).

    Replaces handlers installed by an earlier call, so it can be called again (e.g. after
    daemonizing) without duplicating lines.

    Raises:
        CorralError: the level is unknown (INVALID) or the log file cannot be opened
            (ENVIRONMENT).
    """
    numeric = parse_level(level)
    handler: logging.Handler
    if log_file:
        try:
            os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
            handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise CorralError(
                f"cannot open log file {log_file}: {exc.strerror or exc}",
                kind=ErrorKind.ENVIRONMENT,
                path=log_file,
            ) from exc
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT.format(name=name)))
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    # Third-party libraries are chatty: httpx logs every request at INFO and httpcore every
    # TLS/HTTP step at DEBUG (our RPC client logs each call itself), QMP each message.
    for noisy, floor in _NOISY.items():
        logging.getLogger(noisy).setLevel(max(numeric, floor))


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter carrying ``job_id``, ``op``, ``instance`` and ``node`` (any subset).

    Messages get a ``[job 12 OP_X vm1 node=n1]`` prefix; the fields are also set on each
    record as attributes.
    """

    def __init__(self, logger: logging.Logger, context: Mapping[str, Any]) -> None:
        super().__init__(logger, dict(context))

    @property
    def context(self) -> dict[str, Any]:
        """The fields this adapter adds (a copy)."""
        return dict(self.extra or {})

    def bind(self, **fields: Any) -> Self:
        """A new adapter with more (or changed) context fields."""
        return type(self)(self.logger, {**self.context, **fields})

    def prefix(self) -> str:
        """The text put before each message, e.g. ``[job 12 OP_X vm1 node=n1]``."""
        ctx = self.context
        parts = []
        if ctx.get("job_id") is not None:
            parts.append(f"job {ctx['job_id']}")
        if ctx.get("op"):
            parts.append(str(ctx["op"]))
        if ctx.get("instance"):
            parts.append(str(ctx["instance"]))
        if ctx.get("node"):
            parts.append(f"node={ctx['node']}")
        parts += [f"{k}={v}" for k, v in ctx.items() if k not in CONTEXT_FIELDS]
        return f"[{' '.join(parts)}] " if parts else ""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        """Prefix the message and merge our fields into the record's ``extra``."""
        extra = dict(kwargs.get("extra") or {})
        for key, value in self.context.items():
            extra.setdefault(key, value)
        kwargs["extra"] = extra
        return f"{self.prefix()}{msg}", kwargs


def context_logger(name: str, **fields: Any) -> ContextLogger:
    """``ContextLogger(logging.getLogger(name), fields)`` (None values are dropped)."""
    return ContextLogger(
        logging.getLogger(name), {k: v for k, v in fields.items() if v is not None}
    )

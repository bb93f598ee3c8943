"""Submitting and following jobs: job options, live progress, the final error.

``corral`` shows a spinner with the job's current status on stderr and prints each job log
line above it as it arrives (rich). ``gnt-*`` prints the log lines as Ganeti does
(``<ctime> <message>`` on stdout). ``--submit`` skips all of it and prints ``JobID: N``;
``--print-jobid`` (Ganeti's) prints the bare id first either way.

A failed job is reported once: the master logs its error as the job's last log entry
(``error: X``) and the command ends with that error on stderr (``error: X``, or ``Failure: X``
for ``gnt-*``), so the log line that repeats the final error is not shown.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.text import Text

from corral.cli.common import Cli
from corral.client import job_error

#: Prefixes with which the master logs an opcode's failure in the job log.
_ERROR_PREFIXES = ("error: ", "Failure: ")


@dataclasses.dataclass(frozen=True, slots=True)
class JobOptions:
    """How a command submits its jobs and waits for them.

    Attributes:
        submit: print ``JobID: N`` and return without waiting (``--submit``).
        dry_run: ask the master to run the checks only (``--dry-run``, RAPI ``?dry-run=1``).
        reason: the reason recorded in the opcodes' reason trail (``--reason``).
        print_jobid: print the bare job id as soon as it is known (``--print-jobid``).
    """

    submit: bool = False
    dry_run: bool = False
    reason: str | None = None
    print_jobid: bool = False

    def api(self) -> dict[str, Any]:
        """The keyword arguments every job-submitting ``CorralClient`` method takes."""
        return {"dry_run": self.dry_run, "reason": self.reason}


def log_line(entry: list[Any]) -> str:
    """Ganeti's feedback line for a job log entry ``[serial, [sec, usec], type, message]``."""
    stamp = entry[1]
    sec = stamp[0] if isinstance(stamp, list | tuple) else stamp
    return f"{time.ctime(float(sec))} {entry[3]}"


def submitted(cli: Cli, job_id: int) -> None:
    """Report a job submitted with ``--submit``."""
    if cli.json:
        cli.print(f'{{"job_id": {job_id}}}')
    else:
        cli.print(f"JobID: {job_id}")


class _LogPrinter:
    """Shows job log entries; holds back an error entry until the job's end.

    An error entry that only repeats the job's final error is dropped: the command's own
    error line says it once.
    """

    def __init__(self, show: Callable[[list[Any]], None]) -> None:
        self._show = show
        self._held: list[Any] | None = None

    def __call__(self, entry: list[Any]) -> None:
        self._release()
        if str(entry[3]).startswith(_ERROR_PREFIXES):
            self._held = entry
        else:
            self._show(entry)

    def _release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._show(held)

    def finish(self, final_error: str | None) -> None:
        """Show the held entry unless it only repeats ``final_error``."""
        if self._held is not None and final_error is not None:
            message = str(self._held[3])
            for prefix in _ERROR_PREFIXES:
                message = message.removeprefix(prefix)
            if message == final_error:
                self._held = None
        self._release()


def wait_job(cli: Cli, job_id: int, *, what: str = "") -> dict[str, Any]:
    """Follow a job until it ends, showing its log; return the finished job.

    Raises:
        CorralError: the job failed or was canceled (its error, rebuilt with its kind), or
            the API could not be reached.
    """
    client = cli.client()
    label = what or f"job {job_id}"
    if cli.ganeti or cli.json or not cli.err.is_terminal:
        stream: Console = cli.out if cli.ganeti else cli.err

        def show(entry: list[Any]) -> None:
            if not cli.json:
                stream.print(log_line(entry), markup=False, highlight=False, emoji=False)

        printer = _LogPrinter(show)
        job = client.follow_job(job_id, printer)
        err = job_error(job)
        printer.finish(None if err is None else str(err))
    else:
        # NOTE: Text, not str: rich's spinner reads a str as markup with emoji codes.
        with cli.err.status(Text(f"{label}: waiting"), spinner="dots") as status:

            def show_live(entry: list[Any]) -> None:
                cli.err.print(f"  {entry[3]}", markup=False, highlight=False, emoji=False)
                status.update(Text(f"{label}: {entry[3]}"))

            printer = _LogPrinter(show_live)
            job = client.follow_job(job_id, printer)
            err = job_error(job)
            printer.finish(None if err is None else str(err))
    if err is not None:
        raise err
    return job


def run_job(
    cli: Cli,
    job_id: int,
    opts: JobOptions,
    *,
    what: str = "",
    dry_run_text: str = "",
) -> dict[str, Any] | None:
    """Report and follow a submitted job as ``opts`` say.

    ``--print-jobid`` prints the id; ``--submit`` prints ``JobID: N`` and returns None;
    otherwise the job is followed (see :func:`wait_job`) and returned. After a dry run,
    ``corral`` says ``dry run: <dry_run_text>`` (callers then skip their success message).

    Raises:
        CorralError: as :func:`wait_job`.
    """
    if opts.print_jobid:
        cli.print(str(job_id))
    if opts.submit:
        submitted(cli, job_id)
        return None
    job = wait_job(cli, job_id, what=what)
    if opts.dry_run and not cli.ganeti:
        cli.print(f"dry run: {dry_run_text or 'the checks passed, nothing was changed'}")
    return job


def last_result(job: dict[str, Any] | None) -> Any:
    """The result of a finished job's last opcode."""
    if not job:
        return None
    results = job.get("opresult") or []
    return results[-1] if results else None

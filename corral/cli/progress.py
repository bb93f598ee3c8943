"""Following jobs: live progress for long operations.

``corral`` shows a spinner with the job's current status on stderr and prints each job log
line above it as it arrives (rich). ``gnt-*`` prints the log lines as Ganeti does
(``<ctime> <message>`` on stdout). ``--submit`` skips all of it and prints ``JobID: N``.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from corral.cli.common import Cli
from corral.client import job_error


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
                stream.print(log_line(entry), markup=False, highlight=False)

        job = client.follow_job(job_id, show)
    else:
        with cli.err.status(f"{label}: waiting", spinner="dots") as status:

            def show_live(entry: list[Any]) -> None:
                cli.err.print(f"  {entry[3]}", markup=False, highlight=False)
                status.update(f"{label}: {entry[3]}")

            job = client.follow_job(job_id, show_live)
    err = job_error(job)
    if err is not None:
        raise err
    return job


def run_job(cli: Cli, job_id: int, *, submit: bool, what: str = "") -> dict[str, Any] | None:
    """``--submit``: print the job id; otherwise wait for the job (see :func:`wait_job`)."""
    if submit:
        submitted(cli, job_id)
        return None
    return wait_job(cli, job_id, what=what)


def last_result(job: dict[str, Any] | None) -> Any:
    """The result of a finished job's last opcode."""
    if not job:
        return None
    results = job.get("opresult") or []
    return results[-1] if results else None

"""``corral cluster verify`` and ``corral cluster watcher pause|continue|info`` (+ gnt-cluster).

Both submit opcodes as a job of raw opcodes on the master's local socket (``POST /2/jobs``,
like Ganeti's luxi: ``gnt-cluster verify`` and ``gnt-cluster watcher`` are local commands in
Ganeti too, and the RAPI has no resource for them):

* ``OP_CLUSTER_VERIFY``: ``corral cluster verify`` waits for the job, then prints each finding
  Ganeti-style (``ERROR: node node2: ...``, or ``ETYPE:ECODE:ITEM_TYPE:ITEM:MSG`` with
  ``--error-codes``) and exits 1 when there is an error (warnings do not fail).
  ``gnt-cluster verify`` prints the job's log as Ganeti does (``<ctime> * Verifying ...``,
  ``<ctime>   - ERROR: ...``) and exits the same way.
* ``OP_CLUSTER_SET_WATCHER_PAUSE`` / ``OP_CLUSTER_WATCHER_INFO``: the watcher's pause, kept in
  the store with its expiry (``pause 1h``: Ganeti's time spec, ``s m h d w`` suffixes).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from corral.cli.common import EXIT_FAILURE, Cli, run_command
from corral.cli.output import print_json
from corral.cli.parsing import UsageError
from corral.cli.progress import last_result, wait_job
from corral.objects.opcodes import OpCode
from corral.objects.opcodes_cluster import (
    OpClusterSetWatcherPause,
    OpClusterVerify,
    OpClusterWatcherInfo,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SPEC = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_timespec(text: str) -> float:
    """Seconds from Ganeti's time spec: ``90``, ``30s``, ``15m``, ``2h``, ``1d``, ``1w``.

    Raises:
        UsageError: not a positive number with an optional unit.
    """
    m = _SPEC.match(text)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(
            f"invalid duration {text!r}: a positive number with an optional unit s, m, h, d or w"
        )
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def submit_ops(cli: Cli, ops: list[OpCode]) -> int:
    """Submit a job of raw opcodes on the master's local socket; its id.

    Raises:
        CorralError: the master refused the job (over the RAPI: not allowed, 403).
    """
    job_id = cli.client().request("POST", "/2/jobs", body={"ops": [op.to_dict() for op in ops]})
    return int(job_id)


def _run_op(cli: Cli, op: OpCode, *, show_log: bool) -> Any:
    """Run one opcode as a job; its result."""
    job_id = submit_ops(cli, [op])
    if show_log:
        job = wait_job(cli, job_id)
    else:
        job = cli.client().follow_job(job_id)
        from corral.client import job_error

        err = job_error(job)
        if err is not None:
            raise err
    return last_result(job)


def cluster_verify(
    cli: Cli,
    *,
    error_codes: bool = False,
    ignore_errors: list[str] | None = None,
    skip_checks: list[str] | None = None,
    verbose: bool = False,
) -> int:
    """Verify the cluster; 0 when no error was found, 1 otherwise.

    Raises:
        CorralError: the job could not be submitted or failed (bad argument, store failure).
    """
    op = OpClusterVerify(
        error_codes=error_codes,
        ignore_errors=list(ignore_errors or []),
        skip_checks=list(skip_checks or []),
        verbose=verbose,
    )
    result = _run_op(cli, op, show_log=cli.ganeti) or {"ok": False, "findings": []}
    if cli.json:
        print_json(result)
    elif not cli.ganeti:
        for f in result["findings"]:
            if error_codes:
                line = f"{f['severity']}:{f['code']}:{f['item_type']}:{f['item']}:{f['message']}"
            else:
                item = f" {f['item']}" if f["item"] else ""
                line = f"{f['severity']}: {f['item_type']}{item}: {f['message']}"
            cli.print(line)
        errors = sum(1 for f in result["findings"] if f["severity"] == "ERROR")
        warnings = len(result["findings"]) - errors
        cli.print(
            f"Cluster verify {'passed' if result['ok'] else 'failed'}: {errors} error(s), "
            f"{warnings} warning(s)"
        )
    return 0 if result["ok"] else EXIT_FAILURE


def _print_watcher(cli: Cli, info: dict[str, Any]) -> None:
    if cli.json:
        print_json(info)
        return
    if info.get("paused"):
        cli.print(f"The watcher is paused until {time.ctime(float(info['paused_until']))}.")
    else:
        cli.print("The watcher is not paused.")
    for name, rec in sorted((info.get("restarts") or {}).items()):
        state = "gave up" if rec.get("gave_up") else "restarting"
        cli.print(f"  {name}: {rec.get('attempts')} restart attempt(s), {state}")


def watcher_pause(cli: Cli, duration: str) -> None:
    """Pause the watcher for ``duration`` (time spec), in the store.

    Raises:
        UsageError: a bad duration.
    """
    seconds = parse_timespec(duration)
    info = _run_op(cli, OpClusterSetWatcherPause(duration=seconds), show_log=False)
    _print_watcher(cli, info)


def watcher_continue(cli: Cli) -> None:
    """Resume the watcher."""
    info = _run_op(cli, OpClusterSetWatcherPause(duration=None), show_log=False)
    _print_watcher(cli, info)


def watcher_info(cli: Cli) -> None:
    """Show whether the watcher is paused and its restart records."""
    _print_watcher(cli, _run_op(cli, OpClusterWatcherInfo(), show_log=False))


# --- corral (typer) -----------------------------------------------------------------------------


def _run(ctx: typer.Context, action: Callable[[Cli], int | None]) -> None:
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: action(cli)))


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]


watcher_app = typer.Typer(help="Pause, resume or show the watcher.", no_args_is_help=True)


def register(cluster_app: typer.Typer) -> None:
    """Add ``verify`` and ``watcher`` to the ``corral cluster`` command group."""

    @cluster_app.command("verify")
    def verify_cmd(
        ctx: typer.Context,
        error_codes: Annotated[
            bool, typer.Option("--error-codes", help="ETYPE:ECODE:ITEM_TYPE:ITEM:MSG lines.")
        ] = False,
        ignore_errors: Annotated[
            list[str] | None,
            typer.Option("-I", "--ignore-errors", help="Report these error codes as warnings."),
        ] = None,
        skip_checks: Annotated[
            list[str] | None, typer.Option("--skip-checks", help="nplusone_mem")
        ] = None,
        verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
    ) -> None:
        """Check the cluster's configuration, nodes and instances (exit 1 on errors)."""
        _run(
            ctx,
            lambda cli: cluster_verify(
                cli,
                error_codes=error_codes,
                ignore_errors=_split(ignore_errors),
                skip_checks=_split(skip_checks),
                verbose=verbose,
            ),
        )

    @watcher_app.command("pause")
    def pause_cmd(
        ctx: typer.Context,
        duration: Annotated[str, typer.Argument(help="How long: 90, 30m, 2h, 1d, 1w.")],
    ) -> None:
        """Pause the watcher (kept in the store; expires by itself)."""
        _run(ctx, lambda cli: watcher_pause(cli, duration))

    @watcher_app.command("continue")
    def continue_cmd(ctx: typer.Context) -> None:
        """Resume the watcher."""
        _run(ctx, watcher_continue)

    @watcher_app.command("info")
    def info_cmd(ctx: typer.Context) -> None:
        """Show the watcher's pause and restart records."""
        _run(ctx, watcher_info)

    cluster_app.add_typer(watcher_app, name="watcher")


# --- gnt-cluster (argparse) ---------------------------------------------------------------------


def add_gnt_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``verify`` and ``watcher {pause,continue,info}`` to ``gnt-cluster``."""
    p = sub.add_parser("verify", help="verify the cluster")
    p.add_argument("--error-codes", action="store_true")
    p.add_argument("-I", "--ignore-errors", action="append", default=[])
    p.add_argument("--skip-checks", action="append", default=[])
    p.add_argument("--verbose", "-v", action="store_true")
    p.add_argument("--debug-simulate-errors", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(
        handler=lambda c, a: cluster_verify(
            c,
            error_codes=a.error_codes,
            ignore_errors=_split(a.ignore_errors),
            skip_checks=_split(a.skip_checks),
            verbose=a.verbose,
        )
    )
    p = sub.add_parser("watcher", help="pause, resume or show the watcher")
    wsub = p.add_subparsers(dest="watcher_command", metavar="{pause,continue,info}")
    wsub.required = True
    w = wsub.add_parser("pause", help="pause the watcher for a duration")
    w.add_argument("duration")
    w.set_defaults(handler=lambda c, a: watcher_pause(c, a.duration))
    w = wsub.add_parser("continue", help="resume the watcher")
    w.set_defaults(handler=lambda c, a: watcher_continue(c))
    w = wsub.add_parser("info", help="show the watcher's pause")
    w.set_defaults(handler=lambda c, a: watcher_info(c))

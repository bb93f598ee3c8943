"""``corral job list|list-fields|info|watch|cancel``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from corral.cli import actions, cluster_actions
from corral.cli.actions import ListOptions
from corral.cli.common import Cli, run_command

app = typer.Typer(help="Job queue commands.", no_args_is_help=True)


def _run(ctx: typer.Context, action: Callable[[Cli], int | None]) -> None:
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: action(cli)))


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, typer.Argument(help="Only these jobs.")] = None,
    fields: Annotated[
        str | None, typer.Option("-o", "--fields", help="id,status,summary,...")
    ] = None,
    no_headers: Annotated[bool, typer.Option("--no-headers")] = False,
    separator: Annotated[str | None, typer.Option("--separator")] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status", help="Only jobs with this status (repeatable): queued, running, error, ..."
        ),
    ] = None,
    force_filter: Annotated[
        bool,
        typer.Option(
            "-F", "--filter", help="The argument is a query filter, e.g. 'status == \"running\"'."
        ),
    ] = False,
) -> None:
    """List jobs (default: id, status, summary)."""
    opts = ListOptions(fields, no_headers, separator, force_filter=force_filter)
    _run(ctx, lambda cli: cluster_actions.job_list(cli, ids or [], opts, statuses=status or []))


@app.command("list-fields")
def list_fields_cmd(
    ctx: typer.Context, names: Annotated[list[str] | None, typer.Argument()] = None
) -> None:
    """List the fields 'job list -o' accepts."""
    _run(ctx, lambda cli: actions.list_fields(cli, "job", names or []))


@app.command("info")
def info_cmd(ctx: typer.Context, ids: Annotated[list[str] | None, typer.Argument()] = None) -> None:
    """Show jobs in detail: opcodes, statuses, results and log."""
    _run(ctx, lambda cli: cluster_actions.job_info(cli, ids or []))


@app.command("watch")
def watch_cmd(ctx: typer.Context, job_id: str = typer.Argument(...)) -> None:
    """Follow a job's log live until it ends (exit 1 if it failed)."""
    _run(ctx, lambda cli: cluster_actions.job_watch(cli, job_id))


@app.command("cancel")
def cancel_cmd(ctx: typer.Context, ids: Annotated[list[str], typer.Argument()]) -> None:
    """Cancel jobs that have not started running."""
    _run(ctx, lambda cli: cluster_actions.job_cancel(cli, ids or []))

"""``corral group add|remove|rename|assign-nodes|modify|list|info``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from corral.cli import node_actions
from corral.cli.common import Cli, run_command
from corral.cli.progress import JobOptions

app = typer.Typer(help="Node group commands.", no_args_is_help=True)

SUBMIT = typer.Option("--submit", help="Print the job id and return at once.")
DRY_RUN = typer.Option("--dry-run", help="Only run the master's checks; change nothing.")
REASON = typer.Option("--reason", help="Reason recorded in the job's reason trail.")
POLICY = typer.Option("--alloc-policy", help="preferred, last_resort or unallocable.")
NDPARAMS = typer.Option("-N", "--node-parameters", help="key=value,...")


def _run(ctx: typer.Context, action: Callable[[Cli], int | None]) -> None:
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: action(cli)))


@app.command("add")
def add_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    alloc_policy: Annotated[str | None, POLICY] = None,
    ndparams: Annotated[list[str] | None, NDPARAMS] = None,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Create a node group."""
    job = JobOptions(submit=submit, dry_run=dry_run, reason=reason)
    _run(
        ctx,
        lambda cli: node_actions.group_add(
            cli, name, job=job, alloc_policy=alloc_policy, ndparams=ndparams
        ),
    )


@app.command("remove")
def remove_cmd(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument()],
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Remove empty node groups."""
    job = JobOptions(submit=submit, dry_run=dry_run, reason=reason)
    _run(ctx, lambda cli: node_actions.group_remove(cli, names, job=job))


@app.command("rename")
def rename_cmd(
    ctx: typer.Context,
    old: Annotated[str, typer.Argument()],
    new: Annotated[str, typer.Argument()],
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Rename a node group."""
    job = JobOptions(submit=submit, dry_run=dry_run, reason=reason)
    _run(ctx, lambda cli: node_actions.group_rename(cli, old, new, job=job))


@app.command("assign-nodes")
def assign_cmd(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument()],
    nodes: Annotated[list[str], typer.Argument()],
    force: Annotated[bool, typer.Option("--force")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Move nodes into a group."""
    job = JobOptions(submit=submit, dry_run=dry_run, reason=reason)
    _run(ctx, lambda cli: node_actions.group_assign_nodes(cli, group, nodes, job=job, force=force))


@app.command("modify")
def modify_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    alloc_policy: Annotated[str | None, POLICY] = None,
    ndparams: Annotated[list[str] | None, NDPARAMS] = None,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Change a group's allocation policy or node parameters."""
    job = JobOptions(submit=submit, dry_run=dry_run, reason=reason)
    _run(
        ctx,
        lambda cli: node_actions.group_modify(
            cli, name, job=job, alloc_policy=alloc_policy, ndparams=ndparams
        ),
    )


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument()] = None,
    no_headers: Annotated[bool, typer.Option("--no-headers")] = False,
) -> None:
    """List node groups."""
    _run(ctx, lambda cli: node_actions.group_list(cli, names or [], no_headers=no_headers))


@app.command("info")
def info_cmd(
    ctx: typer.Context, names: Annotated[list[str] | None, typer.Argument()] = None
) -> None:
    """Show node groups in detail."""
    _run(ctx, lambda cli: node_actions.group_info(cli, names or []))

"""``corral node list|info``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from corral.cli import actions, cluster_actions
from corral.cli.actions import ListOptions
from corral.cli.common import Cli, run_command

app = typer.Typer(help="Node commands.", no_args_is_help=True)


def _run(ctx: typer.Context, action: Callable[[Cli], int | None]) -> None:
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: action(cli)))


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Only these nodes.")] = None,
    fields: Annotated[
        str | None, typer.Option("-o", "--fields", help="Comma-separated fields.")
    ] = None,
    no_headers: Annotated[bool, typer.Option("--no-headers")] = False,
    separator: Annotated[str | None, typer.Option("--separator")] = None,
    units: Annotated[str | None, typer.Option("--units", help="h, m, g or t")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
    force_filter: Annotated[
        bool,
        typer.Option(
            "-F", "--filter", help="The argument is a query filter, e.g. 'status == \"running\"'."
        ),
    ] = False,
) -> None:
    """List nodes (default: name, dtotal, dfree, mtotal, mnode, mfree, pinst_cnt, sinst_cnt)."""
    opts = ListOptions(fields, no_headers, separator, units, verbose, force_filter)
    _run(ctx, lambda cli: cluster_actions.node_list(cli, names or [], opts))


@app.command("list-fields")
def list_fields_cmd(
    ctx: typer.Context, names: Annotated[list[str] | None, typer.Argument()] = None
) -> None:
    """List the fields 'node list -o' accepts."""
    _run(ctx, lambda cli: actions.list_fields(cli, "node", names or []))


@app.command("info")
def info_cmd(
    ctx: typer.Context, names: Annotated[list[str] | None, typer.Argument()] = None
) -> None:
    """Show nodes in detail."""
    _run(ctx, lambda cli: cluster_actions.node_info(cli, names or []))

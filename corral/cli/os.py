"""``corral os list|diagnose``."""

from __future__ import annotations

import typer

from corral.cli import cluster_actions
from corral.cli.common import Cli, run_command

app = typer.Typer(help="Operating system definitions.", no_args_is_help=True)


@app.command("list")
def list_cmd(ctx: typer.Context, no_headers: bool = typer.Option(False, "--no-headers")) -> None:
    """List the valid OS definitions (name+variant)."""
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: cluster_actions.os_list(cli, no_headers=no_headers)))


@app.command("diagnose")
def diagnose_cmd(ctx: typer.Context) -> None:
    """Show every OS definition found, and why invalid ones are invalid."""
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: cluster_actions.os_diagnose(cli)))

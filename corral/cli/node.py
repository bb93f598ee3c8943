"""``corral node list|info|add|readd|remove|modify|powercycle|join-prepare``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from corral.cli import actions, cluster_actions, node_actions
from corral.cli.actions import ListOptions
from corral.cli.common import Cli, run_command
from corral.cli.progress import JobOptions

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


SUBMIT = typer.Option("--submit", help="Print the job id and return at once.")
DRY_RUN = typer.Option("--dry-run", help="Only run the master's checks; change nothing.")
REASON = typer.Option("--reason", help="Reason recorded in the job's reason trail.")
YES_NO = "yes or no"


@app.command("add")
def add_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The new node's name (its certificate's name).")],
    address: Annotated[
        str | None,
        typer.Option("--address", "--primary-ip", "-p", help="Its primary IP (default: DNS)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--join-token", help="The token 'corral-noded --join' printed there."),
    ] = None,
    secondary_ip: Annotated[str | None, typer.Option("-s", "--secondary-ip")] = None,
    group: Annotated[str | None, typer.Option("-g", "--node-group", "--group")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Its node daemon's port.")] = None,
    master_candidate: Annotated[
        str | None, typer.Option("-C", "--master-candidate", help=YES_NO)
    ] = None,
    master_capable: Annotated[str | None, typer.Option("--master-capable", help=YES_NO)] = None,
    vm_capable: Annotated[str | None, typer.Option("--vm-capable", help=YES_NO)] = None,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Add a node: the host must run 'corral-noded --join' (it prints the join token)."""
    _run(
        ctx,
        lambda cli: node_actions.node_add(
            cli,
            name,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            address=address,
            token=token,
            secondary_ip=secondary_ip,
            group=group,
            port=port,
            master_candidate=node_actions.parse_bool(master_candidate, "--master-candidate"),
            master_capable=node_actions.parse_bool(master_capable, "--master-capable"),
            vm_capable=node_actions.parse_bool(vm_capable, "--vm-capable"),
        ),
    )


@app.command("readd")
def readd_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    token: Annotated[
        str | None,
        typer.Option("--join-token", help="Needed when the host is in join mode again."),
    ] = None,
    address: Annotated[str | None, typer.Option("--address", "--primary-ip", "-p")] = None,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Re-add a known node: new certificate (with a join token) and cluster files."""
    _run(
        ctx,
        lambda cli: node_actions.node_add(
            cli,
            name,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            address=address,
            token=token,
            readd=True,
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
    """Remove nodes; their certificates are revoked."""
    job = JobOptions(submit=submit, dry_run=dry_run, reason=reason)
    _run(ctx, lambda cli: node_actions.node_remove(cli, names, job=job))


@app.command("modify")
def modify_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    master_candidate: Annotated[
        str | None, typer.Option("-C", "--master-candidate", help=YES_NO)
    ] = None,
    offline: Annotated[str | None, typer.Option("-O", "--offline", help=YES_NO)] = None,
    drained: Annotated[str | None, typer.Option("-D", "--drained", help=YES_NO)] = None,
    master_capable: Annotated[str | None, typer.Option("--master-capable", help=YES_NO)] = None,
    vm_capable: Annotated[str | None, typer.Option("--vm-capable", help=YES_NO)] = None,
    secondary_ip: Annotated[str | None, typer.Option("-s", "--secondary-ip")] = None,
    auto_promote: Annotated[bool, typer.Option("--auto-promote")] = False,
    force: Annotated[bool, typer.Option("--force")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Change a node's roles: candidate, offline, drained, master/vm capable."""
    pb = node_actions.parse_bool
    _run(
        ctx,
        lambda cli: node_actions.node_modify(
            cli,
            name,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            master_candidate=pb(master_candidate, "--master-candidate"),
            offline=pb(offline, "--offline"),
            drained=pb(drained, "--drained"),
            master_capable=pb(master_capable, "--master-capable"),
            vm_capable=pb(vm_capable, "--vm-capable"),
            secondary_ip=secondary_ip,
            auto_promote=auto_promote,
            force=force,
        ),
    )


@app.command("powercycle")
def powercycle_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Also the master node.")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Hard-reset a node at once (no clean shutdown), as Ganeti's node powercycle."""
    job = JobOptions(submit=submit, dry_run=dry_run, reason=reason)
    _run(
        ctx,
        lambda cli: node_actions.node_powercycle(cli, name, job=job, yes=yes, force=force),
    )


@app.command("join-prepare")
def join_prepare_cmd(
    ctx: typer.Context,
    new_token: Annotated[bool, typer.Option("--new-token", help="Replace the token.")] = False,
) -> None:
    """On a new host: create its key, bootstrap certificate and join token (prints it)."""
    _run(ctx, lambda cli: node_actions.node_join_prepare(cli, new_token=new_token))

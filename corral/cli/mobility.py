"""``corral instance migrate|failover|move`` and ``corral node evacuate|migrate|failover``.

The commands are added to the ``instance`` and ``node`` typer apps when this module is
imported (``cli/main.py`` does); the Ganeti spellings (``gnt-instance migrate``, ``gnt-node
evacuate`` ...) are added to ``gnt.py``'s parsers by :func:`gnt_instance_commands` and
:func:`gnt_node_commands`. Every command submits one job per instance or node through the RAPI
routes of ``api/rapi2/mobility.py`` and follows it; ``node failover`` does what Ganeti's does:
one ``OP_INSTANCE_FAILOVER`` job per primary instance of the node.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from corral.cli import instance as instance_cli
from corral.cli import node as node_cli
from corral.cli.actions import confirm
from corral.cli.common import Cli, run_command
from corral.cli.output import print_json
from corral.cli.parsing import UsageError
from corral.cli.progress import JobOptions, last_result, run_job
from corral.client.client import job_params

SUBMIT = typer.Option("--submit", help="Print the job id and return at once.")
DRY_RUN = typer.Option("--dry-run", help="Only run the master's checks; change nothing.")
REASON = typer.Option("--reason", help="Reason recorded in the job's reason trail.")
TARGET = typer.Option("-n", "--target-node", help="Node to move to (default: most free memory).")


def _run(ctx: typer.Context, action: Callable[[Cli], int | None]) -> None:
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: action(cli)))


def _body(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _submit(cli: Cli, method: str, path: str, body: dict[str, Any], job: JobOptions) -> int:
    params = job_params(job.dry_run, job.reason)
    return int(cli.client().request(method, path, params=params, body=body or None))


def _report(cli: Cli, job_data: dict[str, Any] | None) -> None:
    """Print the per-instance results of a node operation (corral output only)."""
    result = last_result(job_data)
    if cli.ganeti or not isinstance(result, list):
        return
    if cli.json:
        print_json(result)
        return
    for row in result:
        where = f" -> {row['target']}" if row.get("target") else ""
        cli.print(f"{row['instance']}: {row.get('action', '')}{where} {row.get('status', '')}")


# --- actions (shared by corral and gnt-*)


def instance_migrate(
    cli: Cli,
    name: str,
    *,
    job: JobOptions,
    non_live: bool = False,
    mode: str | None = None,
    cleanup: bool = False,
    target_node: str | None = None,
    allow_failover: bool = False,
    ignore_hvversions: bool = False,
) -> None:
    """Migrate an instance (or clean up after a failed migration).

    Raises:
        UsageError: contradictory options.
        CorralError: the job failed (its error says where the instance runs).
    """
    if non_live and mode == "live":
        raise UsageError("--non-live contradicts --migration-mode=live")
    if mode is not None and mode not in ("live", "non-live"):
        raise UsageError(f"--migration-mode: expected live or non-live, got {mode!r}")
    if cleanup and (non_live or mode):
        raise UsageError("--cleanup takes no migration mode")
    body = _body(
        mode="non-live" if non_live else mode,
        cleanup=cleanup or None,
        target_node=target_node,
        allow_failover=allow_failover or None,
        ignore_hvversions=ignore_hvversions or None,
    )
    job_id = _submit(cli, "PUT", f"/2/instances/{name}/migrate", body, job)
    what = f"cleaning up the migration of {name}" if cleanup else f"migrating {name}"
    run_job(cli, job_id, job, what=what, dry_run_text=f"instance {name} would be migrated")


def instance_failover(
    cli: Cli,
    name: str,
    *,
    job: JobOptions,
    target_node: str | None = None,
    ignore_consistency: bool = False,
    shutdown_timeout: int | None = None,
    force: bool = False,
) -> None:
    """Fail an instance over to another node (it restarts there).

    Raises:
        ExitCode: not confirmed.
        CorralError: the job failed.
    """
    confirm(cli, f"Fail over instance {name}? It will be restarted.", force=force)
    body = _body(
        target_node=target_node,
        ignore_consistency=ignore_consistency or None,
        shutdown_timeout=shutdown_timeout,
    )
    job_id = _submit(cli, "PUT", f"/2/instances/{name}/failover", body, job)
    run_job(cli, job_id, job, what=f"failing over {name}", dry_run_text=f"{name} would fail over")


def instance_move(
    cli: Cli,
    name: str,
    *,
    job: JobOptions,
    target_node: str,
    shutdown_timeout: int | None = None,
    force: bool = False,
) -> None:
    """Copy an instance's disks to another node and run it there.

    Raises:
        ExitCode: not confirmed.
        CorralError: the job failed.
    """
    confirm(cli, f"Move instance {name} to {target_node}? It will be stopped.", force=force)
    body = _body(target_node=target_node, shutdown_timeout=shutdown_timeout)
    job_id = _submit(cli, "PUT", f"/2/instances/{name}/move", body, job)
    run_job(cli, job_id, job, what=f"moving {name}", dry_run_text=f"{name} would be moved")


def node_evacuate(
    cli: Cli,
    node: str,
    *,
    job: JobOptions,
    target_node: str | None = None,
    force: bool = False,
    stop_on_error: bool = False,
) -> None:
    """Move every primary instance off a node.

    Raises:
        ExitCode: not confirmed.
        CorralError: the job failed (its error lists the instances that were not moved).
    """
    confirm(cli, f"Move every primary instance off node {node}?", force=force)
    body = _body(remote_node=target_node, mode="primary-only", stop_on_error=stop_on_error or None)
    job_id = _submit(cli, "POST", f"/2/nodes/{node}/evacuate", body, job)
    _report(cli, run_job(cli, job_id, job, what=f"evacuating {node}"))


def node_migrate(
    cli: Cli,
    node: str,
    *,
    job: JobOptions,
    target_node: str | None = None,
    non_live: bool = False,
    force: bool = False,
    ignore_hvversions: bool = False,
) -> None:
    """Migrate every primary instance of a node.

    Raises:
        ExitCode: not confirmed.
        CorralError: the job failed.
    """
    confirm(cli, f"Migrate every primary instance of node {node}?", force=force)
    body = _body(
        mode="non-live" if non_live else None,
        target_node=target_node,
        ignore_hvversions=ignore_hvversions or None,
    )
    job_id = _submit(cli, "POST", f"/2/nodes/{node}/migrate", body, job)
    _report(cli, run_job(cli, job_id, job, what=f"migrating the instances of {node}"))


def node_failover(
    cli: Cli,
    node: str,
    *,
    job: JobOptions,
    target_node: str | None = None,
    ignore_consistency: bool = False,
    force: bool = False,
) -> int | None:
    """Fail over every primary instance of a node, one job each (as Ganeti does).

    Returns:
        1 when some failover failed (each failure is printed), else None.

    Raises:
        ExitCode: not confirmed.
        CorralError: the instance list cannot be read.
    """
    rows = cli.client().request("GET", "/2/instances", params=[("bulk", True)])
    names = sorted(r["name"] for r in rows if r.get("pnode") == node)
    if not names:
        cli.print(f"node {node} has no primary instances")
        return None
    confirm(cli, f"Fail over {', '.join(names)} (they will be restarted)?", force=force)
    failed = 0
    for name in names:
        try:
            instance_failover(
                cli,
                name,
                job=job,
                target_node=target_node,
                ignore_consistency=ignore_consistency,
                force=True,
            )
        except Exception as exc:  # one failover failing must not stop the others
            failed += 1
            cli.error(f"{name}: {exc}")
    return 1 if failed else None


# --- corral instance ...


@instance_cli.app.command("migrate")
def migrate_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The instance.")],
    non_live: Annotated[bool, typer.Option("--non-live", help="Pause it while it moves.")] = False,
    cleanup: Annotated[
        bool, typer.Option("--cleanup", help="Recover from a failed migration.")
    ] = False,
    target_node: Annotated[str | None, TARGET] = None,
    allow_failover: Annotated[
        bool, typer.Option("--allow-failover", help="Fail a stopped instance over instead.")
    ] = False,
    ignore_hvversions: Annotated[bool, typer.Option("--ignore-hvversions")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Move a running instance to another node without stopping it (shared storage)."""
    _run(
        ctx,
        lambda cli: instance_migrate(
            cli,
            name,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            non_live=non_live,
            cleanup=cleanup,
            target_node=target_node,
            allow_failover=allow_failover,
            ignore_hvversions=ignore_hvversions,
        ),
    )


@instance_cli.app.command("failover")
def failover_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The instance.")],
    target_node: Annotated[str | None, TARGET] = None,
    ignore_consistency: Annotated[
        bool, typer.Option("--ignore-consistency", help="Its node is down: do not stop it there.")
    ] = False,
    shutdown_timeout: Annotated[int | None, typer.Option("--shutdown-timeout")] = None,
    force: Annotated[bool, typer.Option("-f", "--force")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Restart an instance on another node (shared storage; cold)."""
    _run(
        ctx,
        lambda cli: instance_failover(
            cli,
            name,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            target_node=target_node,
            ignore_consistency=ignore_consistency,
            shutdown_timeout=shutdown_timeout,
            force=force,
        ),
    )


@instance_cli.app.command("move")
def move_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The instance.")],
    target_node: Annotated[str, typer.Option("-n", "--target-node", help="The new node.")],
    shutdown_timeout: Annotated[int | None, typer.Option("--shutdown-timeout")] = None,
    force: Annotated[bool, typer.Option("-f", "--force")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Copy an instance's disks to another node and run it there (stopped meanwhile)."""
    _run(
        ctx,
        lambda cli: instance_move(
            cli,
            name,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            target_node=target_node,
            shutdown_timeout=shutdown_timeout,
            force=force,
        ),
    )


# --- corral node ...


@node_cli.app.command("evacuate")
def evacuate_cmd(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="The node to empty.")],
    target_node: Annotated[str | None, TARGET] = None,
    stop_on_error: Annotated[bool, typer.Option("--stop-on-error")] = False,
    force: Annotated[bool, typer.Option("-f", "--force")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Move every primary instance off a node (migrate, else failover, else move)."""
    _run(
        ctx,
        lambda cli: node_evacuate(
            cli,
            node,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            target_node=target_node,
            force=force,
            stop_on_error=stop_on_error,
        ),
    )


@node_cli.app.command("migrate")
def node_migrate_cmd(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="The node.")],
    target_node: Annotated[str | None, TARGET] = None,
    non_live: Annotated[bool, typer.Option("--non-live")] = False,
    ignore_hvversions: Annotated[bool, typer.Option("--ignore-hvversions")] = False,
    force: Annotated[bool, typer.Option("-f", "--force")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Live-migrate every primary instance of a node (stopped ones are failed over)."""
    _run(
        ctx,
        lambda cli: node_migrate(
            cli,
            node,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            target_node=target_node,
            non_live=non_live,
            force=force,
            ignore_hvversions=ignore_hvversions,
        ),
    )


@node_cli.app.command("failover")
def node_failover_cmd(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="The node.")],
    target_node: Annotated[str | None, TARGET] = None,
    ignore_consistency: Annotated[bool, typer.Option("--ignore-consistency")] = False,
    force: Annotated[bool, typer.Option("-f", "--force")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Fail over every primary instance of a node (one job each)."""
    _run(
        ctx,
        lambda cli: node_failover(
            cli,
            node,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            target_node=target_node,
            ignore_consistency=ignore_consistency,
            force=force,
        ),
    )


# --- gnt-instance / gnt-node


def gnt_instance_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``migrate``, ``failover`` and ``move`` to ``gnt-instance``."""
    from corral.cli.gnt import _add, _common, _job

    p = _add(
        sub,
        "migrate",
        lambda c, a: instance_migrate(
            c,
            a.name,
            job=_job(a),
            non_live=a.non_live,
            mode=a.migration_mode,
            cleanup=a.cleanup,
            target_node=a.target_node,
            allow_failover=a.allow_failover,
            ignore_hvversions=a.ignore_hvversions,
        ),
        "migrate an instance",
    )
    _common(p, force=True)
    p.add_argument("--non-live", action="store_true")
    p.add_argument("--migration-mode", choices=["live", "non-live"])
    p.add_argument("--cleanup", action="store_true")
    p.add_argument("-n", "--target-node")
    p.add_argument("--allow-failover", action="store_true")
    p.add_argument("--ignore-hvversions", action="store_true")
    p.add_argument("--ignore-ipolicy", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-I", "--iallocator", help=argparse.SUPPRESS)
    p.add_argument("name")

    p = _add(
        sub,
        "failover",
        lambda c, a: instance_failover(
            c,
            a.name,
            job=_job(a),
            target_node=a.target_node,
            ignore_consistency=a.ignore_consistency,
            shutdown_timeout=a.shutdown_timeout,
            force=a.force,
        ),
        "fail an instance over to another node",
    )
    _common(p, force=True)
    p.add_argument("-n", "--target-node")
    p.add_argument("--ignore-consistency", action="store_true")
    p.add_argument("--shutdown-timeout", type=int)
    p.add_argument("--ignore-ipolicy", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-I", "--iallocator", help=argparse.SUPPRESS)
    p.add_argument("name")

    p = _add(
        sub,
        "move",
        lambda c, a: instance_move(
            c,
            a.name,
            job=_job(a),
            target_node=a.target_node,
            shutdown_timeout=a.shutdown_timeout,
            force=a.force,
        ),
        "copy an instance to another node",
    )
    _common(p, force=True)
    p.add_argument("-n", "--target-node", required=True)
    p.add_argument("--shutdown-timeout", type=int)
    p.add_argument("--ignore-consistency", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compress", help=argparse.SUPPRESS)
    p.add_argument("name")


def gnt_node_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``evacuate``, ``migrate`` and ``failover`` to ``gnt-node``."""
    from corral.cli.gnt import _add, _common, _job

    p = _add(
        sub,
        "evacuate",
        lambda c, a: node_evacuate(
            c, a.node, job=_job(a), target_node=a.new_secondary or a.target_node, force=a.force
        ),
        "move the primary instances off a node",
    )
    _common(p, force=True)
    p.add_argument("-n", "--new-secondary")
    p.add_argument("--target-node")
    p.add_argument("-p", "--primary-only", action="store_true")
    p.add_argument("-s", "--secondary-only", action="store_true")
    p.add_argument("-I", "--iallocator", help=argparse.SUPPRESS)
    p.add_argument("--early-release", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("node")

    p = _add(
        sub,
        "migrate",
        lambda c, a: node_migrate(
            c,
            a.node,
            job=_job(a),
            target_node=a.target_node,
            non_live=a.non_live or a.migration_mode == "non-live",
            force=a.force,
            ignore_hvversions=a.ignore_hvversions,
        ),
        "migrate the primary instances of a node",
    )
    _common(p, force=True)
    p.add_argument("-n", "--target-node")
    p.add_argument("--non-live", action="store_true")
    p.add_argument("--migration-mode", choices=["live", "non-live"])
    p.add_argument("--ignore-hvversions", action="store_true")
    p.add_argument("-I", "--iallocator", help=argparse.SUPPRESS)
    p.add_argument("node")

    p = _add(
        sub,
        "failover",
        lambda c, a: node_failover(
            c,
            a.node,
            job=_job(a),
            target_node=a.target_node,
            ignore_consistency=a.ignore_consistency,
            force=a.force,
        ),
        "fail over the primary instances of a node",
    )
    _common(p, force=True)
    p.add_argument("-n", "--target-node")
    p.add_argument("--ignore-consistency", action="store_true")
    p.add_argument("node")


__all__: Sequence[str] = (
    "gnt_instance_commands",
    "gnt_node_commands",
    "instance_failover",
    "instance_migrate",
    "instance_move",
    "node_evacuate",
    "node_failover",
    "node_migrate",
)

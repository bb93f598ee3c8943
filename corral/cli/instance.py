"""``corral instance ...``: create, list, inspect, start/stop, change and remove instances.

Option syntax is Ganeti's (``-t file --disk 0:size=1G -o busybox -B memory=256M,vcpus=1``);
long operations show live job progress unless ``--submit`` (which prints ``JobID: N``).
Every changing command takes ``--dry-run`` (the master only runs its checks) and ``--reason``
(recorded in the job's reason trail).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from corral.cli import actions
from corral.cli.actions import ListOptions
from corral.cli.common import Cli, run_command
from corral.cli.progress import JobOptions

app = typer.Typer(help="Instance commands.", no_args_is_help=True)

SUBMIT = typer.Option("--submit", help="Print the job id and return at once.")
DRY_RUN = typer.Option("--dry-run", help="Only run the master's checks; change nothing.")
REASON = typer.Option("--reason", help="Reason recorded in the job's reason trail.")


def _run(ctx: typer.Context, action: Callable[[Cli], int | None]) -> None:
    cli: Cli = ctx.obj
    raise typer.Exit(run_command(cli, lambda: action(cli)))


@app.command("add")
def add_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The new instance's name.")],
    disk_template: Annotated[str, typer.Option("-t", "--disk-template", help="file or diskless.")],
    disks: Annotated[
        list[str] | None, typer.Option("--disk", help="N:size=SIZE[,mode=rw|ro,name=,format=]")
    ] = None,
    single_size: Annotated[
        str | None, typer.Option("-s", "--os-size", help="One disk of SIZE.")
    ] = None,
    nets: Annotated[
        list[str] | None, typer.Option("--net", help="N:mac=,ip=,mode=,link=,network=")
    ] = None,
    no_nics: Annotated[bool, typer.Option("--no-nics", help="No network interface.")] = False,
    os_type: Annotated[str | None, typer.Option("-o", "--os-type", help="OS[+variant].")] = None,
    beparams: Annotated[
        list[str] | None, typer.Option("-B", "--backend-parameters", help="memory=256M,vcpus=1,...")
    ] = None,
    hvparams: Annotated[
        list[str] | None, typer.Option("-H", "--hypervisor-parameters", help="HV[:key=value,...]")
    ] = None,
    osparams: Annotated[
        list[str] | None, typer.Option("-O", "--os-parameters", help="key=value,...")
    ] = None,
    node: Annotated[str | None, typer.Option("-n", "--node", help="PNODE[:SNODE]")] = None,
    no_start: Annotated[
        bool, typer.Option("--no-start", help="Do not start the instance.")
    ] = False,
    no_install: Annotated[
        bool, typer.Option("--no-install", help="Skip the OS installation.")
    ] = False,
    file_storage_dir: Annotated[str | None, typer.Option("--file-storage-dir")] = None,
    tags: Annotated[list[str] | None, typer.Option("--tags", help="Tag (repeatable).")] = None,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Create an instance (disks, OS installation, start)."""
    _run(
        ctx,
        lambda cli: actions.instance_add(
            cli,
            name,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            disk_template=disk_template,
            disks=disks or [],
            single_size=single_size,
            nets=nets or [],
            no_nics=no_nics,
            os_type=os_type,
            beparams=beparams or [],
            hvparams=hvparams or [],
            osparams=osparams or [],
            node=node,
            no_start=no_start,
            no_install=no_install,
            tags=tags or [],
            file_storage_dir=file_storage_dir,
        ),
    )


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Only these instances.")] = None,
    fields: Annotated[
        str | None,
        typer.Option("-o", "--fields", help="Comma-separated fields; +FIELD adds to defaults."),
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
    """List instances (default: name, hypervisor, os, pnode, status, oper_ram).

    NAMES may be globs (``'web*'``) or one query filter such as ``'status == "running" and
    be/vcpus >= 2'`` (see docs/usage.md).
    """
    opts = ListOptions(fields, no_headers, separator, units, verbose, force_filter)
    _run(ctx, lambda cli: actions.instance_list(cli, names or [], opts))


@app.command("list-fields")
def list_fields_cmd(
    ctx: typer.Context, names: Annotated[list[str] | None, typer.Argument()] = None
) -> None:
    """List the fields 'instance list -o' accepts."""
    _run(ctx, lambda cli: actions.list_fields(cli, "instance", names or []))


@app.command("info")
def info_cmd(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Instances (default: all).")] = None,
    static: Annotated[bool, typer.Option("-s", "--static", help="Configuration only.")] = False,
) -> None:
    """Show detailed information about instances."""
    _run(ctx, lambda cli: actions.instance_info(cli, names or [], static=static))


@app.command("console")
def console_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    show_cmd: Annotated[
        bool, typer.Option("--show-cmd", help="Print the command instead.")
    ] = False,
) -> None:
    """Connect to the serial console of a running instance."""
    _run(ctx, lambda cli: actions.instance_console(cli, name, show_cmd=show_cmd))


def _start(
    ctx: typer.Context,
    names: list[str],
    force: bool,
    no_remember: bool,
    paused: bool,
    beparams: list[str],
    hvparams: list[str],
    job: JobOptions,
) -> None:
    _run(
        ctx,
        lambda cli: actions.instance_start(
            cli,
            names,
            job=job,
            force=force,
            no_remember=no_remember,
            paused=paused,
            beparams=beparams or [],
            hvparams=hvparams or [],
        ),
    )


@app.command("start")
def start_cmd(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Instances to start.")],
    force: Annotated[bool, typer.Option("--force")] = False,
    no_remember: Annotated[
        bool, typer.Option("--no-remember", help="Do not record that it should run.")
    ] = False,
    paused: Annotated[bool, typer.Option("--paused", help="Start with vCPUs paused.")] = False,
    beparams: Annotated[
        list[str] | None, typer.Option("-B", "--backend-parameters", help="Temporary key=value,...")
    ] = None,
    hvparams: Annotated[
        list[str] | None,
        typer.Option("-H", "--hypervisor-parameters", help="Temporary key=value,..."),
    ] = None,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Start instances (alias: startup)."""
    job = JobOptions(submit=submit, dry_run=dry_run, reason=reason)
    _start(ctx, names or [], force, no_remember, paused, beparams or [], hvparams or [], job)


app.command("startup", hidden=True)(start_cmd)


@app.command("stop")
def stop_cmd(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Instances to stop.")],
    timeout: Annotated[
        int | None, typer.Option("--timeout", help="Seconds of soft shutdown before killing.")
    ] = None,
    force: Annotated[bool, typer.Option("--force")] = False,
    no_remember: Annotated[bool, typer.Option("--no-remember")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Stop instances (alias: shutdown)."""
    _run(
        ctx,
        lambda cli: actions.instance_stop(
            cli,
            names or [],
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            timeout=timeout,
            force=force,
            no_remember=no_remember,
        ),
    )


app.command("shutdown", hidden=True)(stop_cmd)


@app.command("reboot")
def reboot_cmd(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Instances to reboot.")],
    reboot_type: Annotated[str, typer.Option("-t", "--type", help="soft, hard or full.")] = "hard",
    shutdown_timeout: Annotated[int | None, typer.Option("--shutdown-timeout")] = None,
    ignore_secondaries: Annotated[bool, typer.Option("--ignore-secondaries")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Reboot instances: soft (guest), hard (reset) or full (stop + start)."""
    _run(
        ctx,
        lambda cli: actions.instance_reboot(
            cli,
            names,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            reboot_type=reboot_type,
            shutdown_timeout=shutdown_timeout,
            ignore_secondaries=ignore_secondaries,
        ),
    )


INSTANCES = typer.Argument(help="Instances to act on.")


def _power(ctx: typer.Context, action: str, names: list[str], job: JobOptions) -> None:
    _run(ctx, lambda cli: actions.instance_power(cli, action, names, job=job))


@app.command("pause")
def pause_cmd(
    ctx: typer.Context,
    names: Annotated[list[str], INSTANCES],
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Pause running instances: their vCPUs stop, their memory stays (Corral)."""
    _power(ctx, "pause", names, JobOptions(submit=submit, dry_run=dry_run, reason=reason))


@app.command("resume")
def resume_cmd(
    ctx: typer.Context,
    names: Annotated[list[str], INSTANCES],
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Resume paused instances (Corral)."""
    _power(ctx, "resume", names, JobOptions(submit=submit, dry_run=dry_run, reason=reason))


@app.command("suspend")
def suspend_cmd(
    ctx: typer.Context,
    names: Annotated[list[str], INSTANCES],
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Save running instances to disk on their node and stop them (Corral)."""
    _power(ctx, "suspend", names, JobOptions(submit=submit, dry_run=dry_run, reason=reason))


@app.command("unsuspend")
def unsuspend_cmd(
    ctx: typer.Context,
    names: Annotated[list[str], INSTANCES],
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Restore suspended instances as they were saved (Corral)."""
    _power(ctx, "unsuspend", names, JobOptions(submit=submit, dry_run=dry_run, reason=reason))


@app.command("modify")
def modify_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    beparams: Annotated[list[str] | None, typer.Option("-B", "--backend-parameters")] = None,
    hvparams: Annotated[list[str] | None, typer.Option("-H", "--hypervisor-parameters")] = None,
    osparams: Annotated[list[str] | None, typer.Option("-O", "--os-parameters")] = None,
    runtime_memory: Annotated[
        str | None,
        typer.Option("-m", "--runtime-memory", help="Balloon a running instance to SIZE."),
    ] = None,
    os_type: Annotated[str | None, typer.Option("--os-type")] = None,
    force: Annotated[bool, typer.Option("--force")] = False,
    disks: Annotated[
        list[str] | None,
        typer.Option(
            "--disk", help="add:size=SIZE[,mode=,name=,format=] | N:remove | N:modify,mode=ro"
        ),
    ] = None,
    nets: Annotated[
        list[str] | None,
        typer.Option("--net", help="add[:link=,mode=,mac=,ip=] | N:remove | N:modify,link=BR"),
    ] = None,
    hotplug: Annotated[
        bool | None,
        typer.Option(
            "--hotplug/--no-hotplug",
            help="Disk/NIC changes on a running instance: hotplug them or fail (--hotplug), or "
            "only at the next start (--no-hotplug). Default: hotplug when possible.",
        ),
    ] = None,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Change an instance's parameters, disks and NICs."""
    _run(
        ctx,
        lambda cli: actions.instance_modify(
            cli,
            name,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            beparams=beparams or [],
            hvparams=hvparams or [],
            osparams=osparams or [],
            runtime_memory=runtime_memory,
            os_type=os_type,
            force=force,
            disks=disks or [],
            nets=nets or [],
            hotplug=hotplug,
        ),
    )


@app.command("grow-disk")
def grow_disk_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    disk: Annotated[str, typer.Argument(help="Disk index.")],
    amount: Annotated[str, typer.Argument(help="Size to add (or the final size with --absolute).")],
    absolute: Annotated[bool, typer.Option("--absolute")] = False,
    no_wait_for_sync: Annotated[bool, typer.Option("--no-wait-for-sync")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Grow a disk of an instance."""
    _run(
        ctx,
        lambda cli: actions.instance_grow_disk(
            cli,
            name,
            disk,
            amount,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            absolute=absolute,
            no_wait_for_sync=no_wait_for_sync,
        ),
    )


@app.command("rename")
def rename_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    new_name: Annotated[str, typer.Argument()],
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Rename an instance."""
    _run(
        ctx,
        lambda cli: actions.instance_rename(
            cli, name, new_name, job=JobOptions(submit=submit, dry_run=dry_run, reason=reason)
        ),
    )


@app.command("reinstall")
def reinstall_cmd(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument()],
    os_type: Annotated[str | None, typer.Option("-o", "--os-type")] = None,
    osparams: Annotated[list[str] | None, typer.Option("-O", "--os-parameters")] = None,
    force: Annotated[
        bool, typer.Option("-f", "--force", help="Do not ask for confirmation.")
    ] = False,
    start: Annotated[bool, typer.Option("--start", help="Start the instance afterwards.")] = False,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Reinstall the OS (the instance is stopped first; its data is lost)."""
    _run(
        ctx,
        lambda cli: actions.instance_reinstall(
            cli,
            names or [],
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            os_type=os_type,
            osparams=osparams or [],
            force=force,
            start=start,
        ),
    )


@app.command("remove")
def remove_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    force: Annotated[
        bool, typer.Option("-f", "--force", help="Do not ask for confirmation.")
    ] = False,
    ignore_failures: Annotated[bool, typer.Option("--ignore-failures")] = False,
    shutdown_timeout: Annotated[int | None, typer.Option("--shutdown-timeout")] = None,
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Remove an instance and its disks."""
    _run(
        ctx,
        lambda cli: actions.instance_remove(
            cli,
            name,
            job=JobOptions(submit=submit, dry_run=dry_run, reason=reason),
            force=force,
            ignore_failures=ignore_failures,
            shutdown_timeout=shutdown_timeout,
        ),
    )


@app.command("add-tags")
def add_tags_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    tags: Annotated[list[str], typer.Argument()],
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Add tags to an instance."""
    job = JobOptions(submit=submit, dry_run=dry_run, reason=reason)
    _run(ctx, lambda cli: actions.instance_tags(cli, "add", name, tags or [], job=job))


@app.command("list-tags")
def list_tags_cmd(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """List an instance's tags."""
    _run(ctx, lambda cli: actions.instance_tags(cli, "list", name, []))


@app.command("remove-tags")
def remove_tags_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    tags: Annotated[list[str], typer.Argument()],
    submit: Annotated[bool, SUBMIT] = False,
    dry_run: Annotated[bool, DRY_RUN] = False,
    reason: Annotated[str | None, REASON] = None,
) -> None:
    """Remove tags from an instance."""
    job = JobOptions(submit=submit, dry_run=dry_run, reason=reason)
    _run(ctx, lambda cli: actions.instance_tags(cli, "remove", name, tags or [], job=job))

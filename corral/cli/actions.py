"""The CLI's actions: what each command does, shared by ``corral`` and the ``gnt-*`` commands.

Every action takes the invocation context (:class:`~corral.cli.common.Cli`) and plain, already
split arguments; it parses option values (raising :class:`UsageError` before anything is
submitted), calls the API through ``CorralClient``, follows the job unless ``submit``, and
prints. Failures propagate as ``CorralError``/``UsageError``/``ExitCode`` to
:func:`~corral.cli.common.run_command`, which prints them and picks the exit code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shlex
import socket
from collections.abc import Callable, Sequence
from typing import Any

from corral.cli.common import (
    EXIT_CONFIRMATION,
    EXIT_FAILURE,
    EXIT_UNKNOWN_FIELD,
    Cli,
    ExitCode,
    stdin_is_tty,
)
from corral.cli.devices import parse_device_mods
from corral.cli.output import (
    plain_table,
    print_json,
    print_mapping,
    query_records,
    query_table,
    rich_table,
)
from corral.cli.parsing import (
    UsageError,
    build_create_request,
    parse_beparams,
    parse_fields,
    parse_hvparams,
    parse_kv,
    parse_size,
)
from corral.cli.progress import JobOptions, last_result, run_job
from corral.cli.qfilter import OP_AND, evaluate, filter_fields, make_filter
from corral.client import job_error

#: Default columns (Ganeti's ``_LIST_DEF_FIELDS``).
INSTANCE_LIST_DEFAULT = ["name", "hypervisor", "os", "pnode", "status", "oper_ram"]
NODE_LIST_DEFAULT = [
    "name",
    "dtotal",
    "dfree",
    "mtotal",
    "mnode",
    "mfree",
    "pinst_cnt",
    "sinst_cnt",
]
JOB_LIST_DEFAULT = ["id", "status", "summary"]
OS_LIST_DEFAULT = ["name"]

#: Replaces the CLI process with the console command (tests substitute it).
exec_console: Callable[[str, list[str]], Any] = os.execvp


@dataclasses.dataclass(frozen=True, slots=True)
class ListOptions:
    """Options of every ``list`` command (Ganeti's).

    ``force_filter`` (``-F``) makes the single name argument a query filter (see
    :mod:`corral.cli.qfilter`).
    """

    fields: str | None = None
    no_headers: bool = False
    separator: str | None = None
    units: str | None = None
    verbose: bool = False
    force_filter: bool = False


def confirm(cli: Cli, question: str, *, force: bool) -> None:
    """Ask before destroying data unless ``force``.

    Raises:
        ExitCode: 13 when there is no terminal to ask on (use --force), or the answer is no.
    """
    if force:
        return
    if not stdin_is_tty():
        cli.error(f"{question}\nrefusing without confirmation: pass --force (or -f)")
        raise ExitCode(EXIT_CONFIRMATION)
    cli.err.print(f"{question} y/[n]: ", end="", markup=False)
    if input().strip().lower() not in ("y", "yes"):
        cli.error("aborted")
        raise ExitCode(EXIT_CONFIRMATION)


#: Listings longer than this are printed as plain aligned text instead of a rich table.
RICH_TABLE_MAX_ROWS = 500


def show_query(
    cli: Cli,
    resource: str,
    default: Sequence[str],
    names: Sequence[str],
    opts: ListOptions,
    *,
    namefield: str = "name",
    extra_filter: list[Any] | None = None,
) -> None:
    """Run a query and print it (Ganeti table, rich table or JSON).

    ``names`` may also be a query filter or globs (see :func:`~corral.cli.qfilter.make_filter`);
    filters are applied here, on rows fetched with the fields they need. ``extra_filter`` is
    and-ed to it (``gnt-job list --running``).

    Raises:
        UsageError: a filter that does not parse, or names a field that does not exist.
        ExitCode: 14 when an output field name is unknown.
        CorralError: an unknown object name (NOT_FOUND) or an API failure.
    """
    fields = parse_fields(opts.fields, default)
    server_names, qfilter = make_filter(names, force_filter=opts.force_filter, namefield=namefield)
    if extra_filter is not None:
        qfilter = extra_filter if qfilter is None else [OP_AND, qfilter, extra_filter]
    extra = [f for f in filter_fields(qfilter) if f not in fields]
    result = cli.client().query(resource, fields + extra, server_names or None)
    kinds = {f["name"]: f["kind"] for f in result["fields"]}
    bad_filter = [f for f in filter_fields(qfilter) if kinds.get(f) == "unknown"]
    if bad_filter:
        raise UsageError(
            f"query filter: unknown field(s) {', '.join(bad_filter)} (see '{resource} list-fields')"
        )
    unknown = [f["name"] for f in result["fields"] if f["kind"] == "unknown"]
    if unknown:
        cli.error(f"unknown output field(s): {', '.join(unknown)} (see '{resource} list-fields')")
        raise ExitCode(EXIT_UNKNOWN_FIELD)
    if qfilter is not None:
        result = _filtered(result, qfilter, len(fields))
    if cli.json:
        print_json(query_records(result))
        return
    units = opts.units or ("m" if opts.separator is not None else "h")
    headers, rows = query_table(result, units=units, verbose=opts.verbose)
    if cli.ganeti:
        numeric = [f["kind"] in ("number", "unit") for f in result["fields"]]
        text = plain_table(
            headers, rows, no_headers=opts.no_headers, separator=opts.separator, numeric=numeric
        )
        cli.out.file.write(text)
    elif opts.separator is not None or opts.no_headers or len(rows) > RICH_TABLE_MAX_ROWS:
        # NOTE: rich lays out every cell of a table before printing (seconds for 10,000
        # rows); big listings get the plain aligned table instead.
        cli.out.file.write(
            plain_table(headers, rows, no_headers=opts.no_headers, separator=opts.separator)
        )
    else:
        cli.out.print(rich_table(headers, rows))


def _filtered(result: dict[str, Any], qfilter: list[Any], keep: int) -> dict[str, Any]:
    """The rows of a query answer that match ``qfilter``, cut to the first ``keep`` columns.

    The other columns were fetched for the filter only.
    """
    records = query_records(result)
    rows = [row for row, rec in zip(result["data"], records, strict=True) if evaluate(qfilter, rec)]
    return {"fields": result["fields"][:keep], "data": [row[:keep] for row in rows]}


def list_fields(cli: Cli, resource: str, names: Sequence[str]) -> None:
    """Print the fields a list command knows."""
    defs = cli.client().query_fields(resource)
    if names:
        defs = [d for d in defs if d["name"] in set(names)]
    if cli.json:
        print_json(defs)
        return
    rows = [[d["name"], d["title"], d["doc"]] for d in defs]
    cli.out.file.write(plain_table(["Name", "Title", "Description"], rows))


# --- instances ---------------------------------------------------------------------------------


#: The job options of a command that has none on its command line.
NO_JOB_OPTIONS = JobOptions()


def instance_add(cli: Cli, name: str, *, job: JobOptions = NO_JOB_OPTIONS, **opts: Any) -> None:
    """Create an instance (options as ``gnt-instance add``); see ``build_create_request``."""
    body = build_create_request(name=name, **opts)
    job_id = cli.client().create_instance(body, **job.api())
    done = run_job(
        cli,
        job_id,
        job,
        what=f"creating {name}",
        dry_run_text=f"instance {name} would be created",
    )
    if done is not None and not cli.ganeti and not job.dry_run:
        nodes = last_result(done)
        where = f" on {', '.join(nodes)}" if isinstance(nodes, list) and nodes else ""
        cli.print(f"instance {name} created{where}")


def instance_list(cli: Cli, names: Sequence[str], opts: ListOptions) -> None:
    """List instances."""
    show_query(cli, "instance", INSTANCE_LIST_DEFAULT, names, opts)


def instance_info(cli: Cli, names: Sequence[str], *, static: bool = False) -> None:
    """Detailed information (the master's query-data result), one block per instance."""
    client = cli.client()
    targets = list(names) or client.instance_names()
    data: dict[str, Any] = {}
    for name in targets:
        job = _quiet_job(cli, client.instance_info_job(name, static=static))
        result = last_result(job)
        info = result.get(name) if isinstance(result, dict) else None
        data[name] = info if isinstance(info, dict) else client.instance(name)
    if cli.json:
        print_json(data if len(data) != 1 or not names else next(iter(data.values())))
        return
    for name, info in data.items():
        cli.print(f"Instance name: {name}")
        shown = {k: v for k, v in info.items() if k != "name"}
        if isinstance(shown.get("nics"), list):
            shown["nics"] = [_nic_view(n) for n in shown["nics"]]
        print_mapping(cli.out, shown, indent=1)


#: Ganeti's query-data NIC tuple, in order.
_NIC_FIELDS = ("name", "uuid", "mac", "ip", "mode", "link", "vlan", "network", "network_name")


def _nic_view(nic: Any) -> Any:
    """A query-data NIC tuple as a readable mapping (set fields only)."""
    if not isinstance(nic, list | tuple):
        return nic
    return {k: v for k, v in zip(_NIC_FIELDS, nic, strict=False) if v not in (None, "")}


def _quiet_job(cli: Cli, job_id: int) -> dict[str, Any]:
    """Wait for a job without showing its log (reads such as query-data)."""
    job = cli.client().follow_job(job_id)
    err = job_error(job)
    if err is not None:
        raise err
    return job


def instance_start(
    cli: Cli,
    names: Sequence[str],
    *,
    job: JobOptions = NO_JOB_OPTIONS,
    force: bool = False,
    no_remember: bool = False,
    paused: bool = False,
    beparams: Sequence[str] = (),
    hvparams: Sequence[str] = (),
) -> None:
    """Start instances."""
    body: dict[str, Any] = {}
    if paused:
        body["startup_paused"] = True
    if beparams:
        body["beparams"] = parse_beparams(beparams)
    if hvparams:
        body["hvparams"] = parse_hvparams(hvparams)[1]
    for name in _need_names(names):
        job_id = cli.client().startup_instance(
            name, force=force, no_remember=no_remember, **job.api(), **body
        )
        run_job(
            cli,
            job_id,
            job,
            what=f"starting {name}",
            dry_run_text=f"instance {name} would be started",
        )


def instance_stop(
    cli: Cli,
    names: Sequence[str],
    *,
    job: JobOptions = NO_JOB_OPTIONS,
    timeout: int | None = None,
    force: bool = False,
    no_remember: bool = False,
) -> None:
    """Stop instances (soft for ``timeout`` seconds, then hard)."""
    body: dict[str, Any] = {}
    if timeout is not None:
        body["timeout"] = timeout
    if force:
        body["force"] = True
    for name in _need_names(names):
        job_id = cli.client().shutdown_instance(name, no_remember=no_remember, **job.api(), **body)
        run_job(
            cli,
            job_id,
            job,
            what=f"stopping {name}",
            dry_run_text=f"instance {name} would be stopped",
        )


def instance_reboot(
    cli: Cli,
    names: Sequence[str],
    *,
    job: JobOptions = NO_JOB_OPTIONS,
    reboot_type: str = "hard",
    shutdown_timeout: int | None = None,
    ignore_secondaries: bool = False,
) -> None:
    """Reboot instances (soft, hard or full)."""
    if reboot_type not in ("soft", "hard", "full"):
        raise UsageError(f"--type: expected soft, hard or full, got {reboot_type!r}")
    body: dict[str, Any] = {}
    if shutdown_timeout is not None:
        body["shutdown_timeout"] = shutdown_timeout
    for name in _need_names(names):
        job_id = cli.client().reboot_instance(
            name,
            reboot_type=reboot_type,
            ignore_secondaries=ignore_secondaries,
            **job.api(),
            **body,
        )
        run_job(
            cli,
            job_id,
            job,
            what=f"rebooting {name}",
            dry_run_text=f"instance {name} would be rebooted ({reboot_type})",
        )


#: ``corral instance <action>`` (Corral extensions) -> what the progress line says.
POWER_ACTIONS = {
    "pause": "pausing",
    "resume": "resuming",
    "suspend": "suspending",
    "unsuspend": "unsuspending",
}


PAST = {"pause": "paused", "resume": "resumed", "suspend": "suspended", "unsuspend": "unsuspended"}


def instance_power(
    cli: Cli, action: str, names: Sequence[str], *, job: JobOptions = NO_JOB_OPTIONS
) -> None:
    """Pause, resume, suspend or unsuspend instances (one job each)."""
    for name in _need_names(names):
        job_id = cli.client().power_instance(name, action, **job.api())
        run_job(
            cli,
            job_id,
            job,
            what=f"{POWER_ACTIONS[action]} {name}",
            dry_run_text=f"instance {name} would be {PAST[action]}",
        )


def instance_modify(
    cli: Cli,
    name: str,
    *,
    job: JobOptions = NO_JOB_OPTIONS,
    beparams: Sequence[str] = (),
    hvparams: Sequence[str] = (),
    osparams: Sequence[str] = (),
    runtime_memory: str | None = None,
    os_type: str | None = None,
    force: bool = False,
    disks: Sequence[str] = (),
    nets: Sequence[str] = (),
    hotplug: bool | None = None,
    hotplug_if_possible: bool = False,
) -> None:
    """Change an instance's parameters; ``runtime_memory`` balloons a running guest.

    ``disks``/``nets`` are ``--disk``/``--net`` values (``add:size=1G``, ``1:remove``,
    ``0:modify,link=br1``; cli/devices.py); ``hotplug`` True/False/None (when possible).
    """
    body: dict[str, Any] = {}
    if disks:
        body["disks"] = parse_device_mods(disks, "disk")
    if nets:
        body["nics"] = parse_device_mods(nets, "nic")
    if (disks or nets) and hotplug is not None:
        body["hotplug"] = hotplug
    if (disks or nets) and hotplug_if_possible:
        body["hotplug_if_possible"] = True
    if beparams:
        body["beparams"] = parse_beparams(beparams)
    if hvparams:
        hv, params = parse_hvparams(hvparams)
        body["hvparams"] = params
        if hv is not None:
            cli.error(f"note: -H {hv}: the hypervisor of an existing instance is not changed")
    osp: dict[str, Any] = {}
    for value in osparams:
        osp.update(parse_kv(value, "-O"))
    if osp:
        body["osparams"] = osp
    if runtime_memory is not None:
        body["runtime_mem"] = parse_size(runtime_memory, "-m/--runtime-memory")
    if os_type:
        body["os_name"] = os_type
    if not body:
        raise UsageError(
            "nothing to change: give -B, -H, -O, -m/--runtime-memory, --os-type, --disk or --net"
        )
    if force:
        body["force"] = True
    job_id = cli.client().modify_instance(name, **job.api(), **body)
    done = run_job(
        cli,
        job_id,
        job,
        what=f"modifying {name}",
        dry_run_text=f"instance {name} would be modified",
    )
    result = last_result(done)
    if done is not None and not job.dry_run and isinstance(result, list) and result:
        cli.print(f"Modified instance {name}")
        for item in result:
            if isinstance(item, list | tuple) and len(item) == 2:
                cli.print(f" - {item[0]} -> {item[1]}")


def instance_grow_disk(
    cli: Cli,
    name: str,
    disk: str,
    amount: str,
    *,
    job: JobOptions = NO_JOB_OPTIONS,
    absolute: bool = False,
    no_wait_for_sync: bool = False,
) -> None:
    """Grow one disk by ``amount`` (or to ``amount`` with ``absolute``)."""
    try:
        index = int(disk)
    except ValueError:
        raise UsageError(f"disk: expected a disk index (0, 1, ...), got {disk!r}") from None
    mib = parse_size(amount, "amount")
    job_id = cli.client().grow_disk(
        name, index, mib, absolute=absolute, wait_for_sync=not no_wait_for_sync, **job.api()
    )
    run_job(
        cli,
        job_id,
        job,
        what=f"growing disk {index} of {name}",
        dry_run_text=f"disk {index} of instance {name} would be grown",
    )


def instance_rename(
    cli: Cli, name: str, new_name: str, *, job: JobOptions = NO_JOB_OPTIONS
) -> None:
    """Rename an instance."""
    job_id = cli.client().rename_instance(name, new_name, **job.api())
    run_job(
        cli,
        job_id,
        job,
        what=f"renaming {name} to {new_name}",
        dry_run_text=f"instance {name} would be renamed to {new_name}",
    )


def instance_reinstall(
    cli: Cli,
    names: Sequence[str],
    *,
    job: JobOptions = NO_JOB_OPTIONS,
    os_type: str | None,
    osparams: Sequence[str] = (),
    force: bool = False,
    start: bool = False,
) -> None:
    """Reinstall the OS of instances (their disks are overwritten)."""
    osp: dict[str, Any] = {}
    for value in osparams:
        osp.update(parse_kv(value, "-O"))
    for name in _need_names(names):
        confirm(cli, f"This will reinstall the instance {name} and remove all data.", force=force)
        job_id = cli.client().reinstall_instance(
            name, os=os_type, osparams=osp or None, start=start, **job.api()
        )
        run_job(
            cli,
            job_id,
            job,
            what=f"reinstalling {name}",
            dry_run_text=f"instance {name} would be reinstalled",
        )


def instance_remove(
    cli: Cli,
    name: str,
    *,
    job: JobOptions = NO_JOB_OPTIONS,
    force: bool = False,
    ignore_failures: bool = False,
    shutdown_timeout: int | None = None,
) -> None:
    """Remove an instance and its disks."""
    confirm(
        cli,
        f"This will remove the volumes of the instance {name}, thus removing all the "
        "data of the instance.",
        force=force,
    )
    body: dict[str, Any] = {}
    if ignore_failures:
        body["ignore_failures"] = True
    if shutdown_timeout is not None:
        body["shutdown_timeout"] = shutdown_timeout
    job_id = cli.client().remove_instance(name, **job.api(), **body)
    run_job(
        cli,
        job_id,
        job,
        what=f"removing {name}",
        dry_run_text=f"instance {name} would be removed",
    )


def instance_tags(
    cli: Cli, action: str, name: str, tags: Sequence[str], *, job: JobOptions = NO_JOB_OPTIONS
) -> None:
    """``list``, ``add`` or ``remove`` instance tags."""
    client = cli.client()
    if action == "list":
        for tag in sorted(client.instance_tags(name)):
            cli.print(tag)
        return
    if not tags:
        raise UsageError(f"{action}-tags: give at least one tag")
    if action == "add":
        job_id = client.add_instance_tags(name, tags, **job.api())
        text = f"tags would be added to instance {name}"
    else:
        job_id = client.remove_instance_tags(name, tags, **job.api())
        text = f"tags would be removed from instance {name}"
    run_job(cli, job_id, job, dry_run_text=text)


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine (loopback, our hostname, or one of our addresses)."""
    if not host or host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        try:
            addr = ipaddress.ip_address(socket.gethostbyname(host))
        except (OSError, ValueError):
            return False
    if addr.is_loopback:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    # NOTE: binding succeeds only for an address configured on this host.
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(addr), 0))
        except OSError:
            return False
    return True


def instance_console(cli: Cli, name: str, *, show_cmd: bool = False) -> int:
    """Connect to an instance's console (runs the console command; does not return then)."""
    console = cli.client().console(name)
    kind = console.get("kind")
    if kind == "msg":
        cli.error(str(console.get("message", "")))
        return EXIT_FAILURE
    if kind in ("vnc", "spice"):
        port = console.get("port")
        display = f" (display {int(port) - 5900})" if kind == "vnc" and port else ""
        cli.print(
            f"Instance {name} has {kind.upper()} listening on {console.get('host')}:{port}{display}"
        )
        return 0
    command = [str(a) for a in console.get("command") or []]
    if not command:
        raise UsageError(f"the master gave no console command for {name}: {console!r}")
    host = str(console.get("host") or "")
    if not is_local_host(host):
        user = str(console.get("user") or "root")
        command = ["ssh", "-t", "-q", "-oBatchMode=yes", f"{user}@{host}", shlex.join(command)]
    if show_cmd:
        cli.print(shlex.join(command))
        return 0
    if command[0] == "socat" and not stdin_is_tty():
        # NOTE: socat's raw/echo options need a terminal on stdin; when the console is fed
        # by a pipe (scripts), connect plain stdio instead.
        command = [("STDIO" if a.startswith("STDIO,") else a) for a in command]
    if cli.err.is_terminal:
        cli.error(
            f"Connecting to the console of {name}; press Ctrl-] or the escape of "
            f"{command[0]} to leave"
        )
    exec_console(command[0], command)
    return 0


def _need_names(names: Sequence[str]) -> list[str]:
    if not names:
        raise UsageError("no instance name given")
    return list(names)

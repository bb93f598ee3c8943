r"""Ganeti-compatible entry points.

``gnt-instance``, ``gnt-cluster``, ``gnt-job``, ``gnt-node`` and ``gnt-os`` accept Ganeti's
option syntax for the subcommands Corral implements (see COMPAT.md §2 and the ``gnt-*`` man
pages), e.g.::

    gnt-instance add -t file --disk 0:size=1G -o busybox -B memory=256M,vcpus=1 \
        -n node1 --no-start --submit vm1
    gnt-instance list -o name,status --no-headers --separator=:
    gnt-instance reboot --type=hard vm1
    gnt-instance modify -B memory=512M -m 300 vm1
    gnt-instance grow-disk vm1 0 1G

and print what Ganeti prints: ``JobID: N`` with ``--submit``; otherwise the job's log lines
(``<ctime> <message>``) while waiting; ``Failure: ...`` on stderr with exit code 1 when a job
fails. Like ``corral``, they talk to the local master's socket (``$CORRAL_ROOT``), or to
``$CORRAL_API_URL`` as ``$CORRAL_USER`` with ``$CORRAL_PASSWORD``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from corral.cli import actions, cluster_actions, gnt_nodes, verify
from corral.cli.actions import ListOptions
from corral.cli.common import Cli, paths_from, run_command
from corral.cli.parsing import BARE_SIZES_ARE_MIB
from corral.cli.progress import JobOptions
from corral.client import CorralClient

Handler = Callable[[Cli, argparse.Namespace], int | None]

#: How the commands get their API client (None: the default; tests substitute a factory).
client_factory: Callable[[Cli], CorralClient] | None = None


def _common(p: argparse.ArgumentParser, *, force: bool = False) -> None:
    """The options of every job-submitting subcommand (read back by :func:`_job`)."""
    p.add_argument("--submit", action="store_true", help="submit the job and return")
    p.add_argument("--print-jobid", action="store_true", help="print the job id")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only run the master's checks; change nothing",
    )
    p.add_argument("-d", "--debug", action="count", default=0, help=argparse.SUPPRESS)
    p.add_argument("--reason", help="reason recorded in the job's reason trail")
    if force:
        p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")


def _job(a: argparse.Namespace) -> JobOptions:
    return JobOptions(
        submit=a.submit, dry_run=a.dry_run, reason=a.reason, print_jobid=a.print_jobid
    )


def _list_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-headers", action="store_true")
    p.add_argument("--separator")
    p.add_argument("--units", choices=["h", "m", "g", "t"])
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-o", "--output", dest="fields", help="FIELD,... or +FIELD,...")
    p.add_argument(
        "-F",
        "--filter",
        dest="force_filter",
        action="store_true",
        help="the argument is a query filter, e.g. 'status == \"running\"'",
    )


def _lo(a: argparse.Namespace) -> ListOptions:
    return ListOptions(a.fields, a.no_headers, a.separator, a.units, a.verbose, a.force_filter)


Builder: TypeAlias = "Callable[[argparse._SubParsersAction[Any]], None]"


def build_parser(prog: str, build: Builder) -> argparse.ArgumentParser:
    """The option parser of one ``gnt-*`` command (``build`` adds its subcommands)."""
    parser = argparse.ArgumentParser(prog=prog, description=f"{prog}: Ganeti-compatible Corral")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    build(sub)
    return parser


def _run(prog: str, build: Builder, argv: Sequence[str] | None) -> int:
    parser = build_parser(prog, build)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cli = Cli(
        paths=paths_from(None),
        api_url=os.environ.get("CORRAL_API_URL"),
        user=os.environ.get("CORRAL_USER"),
        insecure=os.environ.get("CORRAL_INSECURE", "") in ("1", "yes", "true"),
        ganeti=True,
        client_factory=client_factory,
    )
    handler: Handler = args.handler
    # Ganeti reads a size without a unit as MiB; keep that for its syntax (only while this
    # command runs: an embedding program or a test may run corral commands afterwards).
    token = BARE_SIZES_ARE_MIB.set(True)
    try:
        return run_command(cli, lambda: handler(cli, args))
    finally:
        BARE_SIZES_ARE_MIB.reset(token)


def _add(
    sub: argparse._SubParsersAction[Any],
    name: str,
    handler: Handler,
    help_text: str,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, aliases=list(aliases))
    p.set_defaults(handler=handler)
    return p


# --- gnt-instance ------------------------------------------------------------------------------


def _instance_commands(sub: argparse._SubParsersAction[Any]) -> None:
    p = _add(
        sub,
        "add",
        lambda c, a: actions.instance_add(
            c,
            a.name,
            job=_job(a),
            disk_template=a.disk_template,
            disks=a.disk,
            single_size=a.os_size,
            nets=a.net,
            no_nics=a.no_nics,
            os_type=a.os_type,
            beparams=a.beparams,
            hvparams=a.hvparams,
            osparams=a.osparams,
            node=a.node,
            no_start=a.no_start,
            no_install=a.no_install,
            tags=a.tags,
            file_storage_dir=a.file_storage_dir,
        ),
        "create an instance",
    )
    p.add_argument("-t", "--disk-template", required=True)
    p.add_argument("--disk", action="append", default=[], metavar="N:size=SIZE,...")
    p.add_argument("-s", "--os-size")
    p.add_argument("--net", action="append", default=[], metavar="N:options")
    p.add_argument("--no-nics", action="store_true")
    p.add_argument("-o", "--os-type")
    p.add_argument("-B", "--backend-parameters", dest="beparams", action="append", default=[])
    p.add_argument("-H", "--hypervisor-parameters", dest="hvparams", action="append", default=[])
    p.add_argument("-O", "--os-parameters", dest="osparams", action="append", default=[])
    p.add_argument("-n", "--node")
    p.add_argument("--no-start", action="store_true")
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--no-ip-check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-name-check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-wait-for-sync", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--file-storage-dir")
    p.add_argument("--tags", action="append", default=[])
    p.add_argument("name")
    _common(p)

    p = _add(sub, "list", lambda c, a: actions.instance_list(c, a.names, _lo(a)), "list instances")
    _list_opts(p)
    p.add_argument("names", nargs="*")

    p = _add(
        sub,
        "list-fields",
        lambda c, a: actions.list_fields(c, "instance", a.names),
        "list the available fields",
    )
    p.add_argument("names", nargs="*")

    p = _add(
        sub,
        "info",
        lambda c, a: actions.instance_info(c, [] if a.all else a.names, static=a.static),
        "show instance details",
    )
    p.add_argument("-s", "--static", action="store_true")
    p.add_argument("--all", action="store_true")
    p.add_argument("--roman", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("names", nargs="*")

    p = _add(
        sub,
        "console",
        lambda c, a: actions.instance_console(c, a.name, show_cmd=a.show_cmd),
        "connect to the console",
    )
    p.add_argument("--show-cmd", action="store_true")
    p.add_argument("name")

    p = _add(
        sub,
        "startup",
        lambda c, a: actions.instance_start(
            c,
            a.names,
            job=_job(a),
            force=a.force,
            no_remember=a.no_remember,
            paused=a.paused,
            beparams=a.beparams,
            hvparams=a.hvparams,
        ),
        "start instances",
        ["start"],
    )
    p.add_argument("--no-remember", action="store_true")
    p.add_argument("--paused", action="store_true")
    p.add_argument("--ignore-offline", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--force-multiple", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-B", "--backend-parameters", dest="beparams", action="append", default=[])
    p.add_argument("-H", "--hypervisor-parameters", dest="hvparams", action="append", default=[])
    p.add_argument("names", nargs="+")
    _common(p, force=True)

    p = _add(
        sub,
        "shutdown",
        lambda c, a: actions.instance_stop(
            c, a.names, job=_job(a), timeout=a.timeout, force=a.force, no_remember=a.no_remember
        ),
        "stop instances",
        ["stop"],
    )
    p.add_argument("--timeout", type=int)
    p.add_argument("--no-remember", action="store_true")
    p.add_argument("--ignore-offline", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--force-multiple", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("names", nargs="+")
    _common(p, force=True)

    p = _add(
        sub,
        "reboot",
        lambda c, a: actions.instance_reboot(
            c,
            a.names,
            job=_job(a),
            reboot_type=a.type,
            shutdown_timeout=a.shutdown_timeout,
            ignore_secondaries=a.ignore_secondaries,
        ),
        "reboot instances",
    )
    p.add_argument("-t", "--type", default="hard", choices=["soft", "hard", "full"])
    p.add_argument("--shutdown-timeout", type=int)
    p.add_argument("--ignore-secondaries", action="store_true")
    p.add_argument("--force-multiple", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("names", nargs="+")
    _common(p)

    p = _add(
        sub,
        "modify",
        lambda c, a: actions.instance_modify(
            c,
            a.name,
            job=_job(a),
            beparams=a.beparams,
            hvparams=a.hvparams,
            osparams=a.osparams,
            runtime_memory=a.runtime_memory,
            os_type=a.os_type,
            force=a.force,
            disks=a.disks,
            nets=a.nets,
            # Ganeti: without --hotplug nothing is hot-plugged (see instance_devices.py)
            hotplug=a.hotplug,
            hotplug_if_possible=a.hotplug_if_possible,
        ),
        "change instance parameters",
    )
    p.add_argument("-B", "--backend-parameters", dest="beparams", action="append", default=[])
    p.add_argument("-H", "--hypervisor-parameters", dest="hvparams", action="append", default=[])
    p.add_argument("-O", "--os-parameters", dest="osparams", action="append", default=[])
    p.add_argument("-m", "--runtime-memory")
    p.add_argument("--disk", dest="disks", action="append", default=[])
    p.add_argument("--net", dest="nets", action="append", default=[])
    p.add_argument("--hotplug", action="store_true", help="hotplug disk/NIC changes or fail")
    p.add_argument(
        "--hotplug-if-possible", action="store_true", help="hotplug disk/NIC changes if possible"
    )
    p.add_argument("--os-type", "-o")
    p.add_argument("name")
    _common(p, force=True)

    p = _add(
        sub,
        "grow-disk",
        lambda c, a: actions.instance_grow_disk(
            c,
            a.name,
            a.disk,
            a.amount,
            job=_job(a),
            absolute=a.absolute,
            no_wait_for_sync=a.no_wait_for_sync,
        ),
        "grow a disk",
    )
    p.add_argument("--absolute", action="store_true")
    p.add_argument("--no-wait-for-sync", action="store_true")
    p.add_argument("name")
    p.add_argument("disk")
    p.add_argument("amount")
    _common(p)

    p = _add(
        sub,
        "rename",
        lambda c, a: actions.instance_rename(c, a.name, a.new_name, job=_job(a)),
        "rename an instance",
    )
    p.add_argument("--no-ip-check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-name-check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("name")
    p.add_argument("new_name")
    _common(p)

    p = _add(
        sub,
        "reinstall",
        lambda c, a: actions.instance_reinstall(
            c, a.names, job=_job(a), os_type=a.os_type, osparams=a.osparams, force=a.force
        ),
        "reinstall the OS",
    )
    p.add_argument("-o", "--os-type")
    p.add_argument("-O", "--os-parameters", dest="osparams", action="append", default=[])
    p.add_argument("--force-multiple", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("names", nargs="+")
    _common(p, force=True)

    p = _add(
        sub,
        "remove",
        lambda c, a: actions.instance_remove(
            c,
            a.name,
            job=_job(a),
            force=a.force,
            ignore_failures=a.ignore_failures,
            shutdown_timeout=a.shutdown_timeout,
        ),
        "remove an instance",
    )
    p.add_argument("--ignore-failures", action="store_true")
    p.add_argument("--shutdown-timeout", type=int)
    p.add_argument("name")
    _common(p, force=True)

    for verb in ("add", "list", "remove"):
        p = _add(sub, f"{verb}-tags", _tags_handler(verb), f"{verb} instance tags")
        p.add_argument("name")
        p.add_argument("tags", nargs="*")
        if verb != "list":
            p.add_argument("--from", dest="from_file")
            _common(p)


def _tags_handler(verb: str) -> Handler:
    def handler(cli: Cli, a: argparse.Namespace) -> None:
        tags = list(a.tags)
        if getattr(a, "from_file", None):
            stream = sys.stdin if a.from_file == "-" else open(a.from_file, encoding="utf-8")  # noqa: SIM115
            with stream:
                tags += [line.strip() for line in stream if line.strip()]
        job = _job(a) if hasattr(a, "submit") else actions.NO_JOB_OPTIONS
        actions.instance_tags(cli, verb, a.name, tags, job=job)

    return handler


def _instance_commands_all(sub: argparse._SubParsersAction[Any]) -> None:
    from corral.cli.mobility import gnt_instance_commands

    _instance_commands(sub)
    gnt_instance_commands(sub)


def gnt_instance(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gnt-instance``."""
    return _run("gnt-instance", _instance_commands_all, argv)


# --- gnt-cluster, gnt-job, gnt-node, gnt-os ------------------------------------------------------


def _cluster_commands(sub: argparse._SubParsersAction[Any]) -> None:
    from corral.cli.cluster import cluster_destroy, cluster_init

    p = _add(
        sub,
        "init",
        lambda c, a: cluster_init(
            c,
            a.name,
            enabled_hypervisors=a.enabled_hypervisors,
            file_storage_dir=a.file_storage_dir,
            node_name=a.node_name,
            node_address=a.node_address,
            rapi_port=a.rapi_port,
            rapi_bind=a.rapi_bind,
            noded_port=a.noded_port,
            hvparams=a.hvparams,
            beparams=a.beparams,
            nicparams=a.nicparams,
            enabled_disk_templates=a.enabled_disk_templates,
            mac_prefix=a.mac_prefix,
            store=a.store,
        ),
        "initialise a cluster",
    )
    p.add_argument("--enabled-hypervisors", default="kvm")
    p.add_argument("--file-storage-dir")
    p.add_argument("--node-name")
    p.add_argument("--node-address")
    p.add_argument("--rapi-port", type=int, default=5080)
    p.add_argument("--rapi-bind")
    p.add_argument("--noded-port", type=int, default=1811)
    p.add_argument("-H", "--hypervisor-parameters", dest="hvparams", action="append", default=[])
    p.add_argument("-B", "--backend-parameters", dest="beparams", action="append", default=[])
    p.add_argument("-N", "--nic-parameters", dest="nicparams", action="append", default=[])
    p.add_argument("--enabled-disk-templates")
    p.add_argument("-m", "--mac-prefix")
    p.add_argument("--store", help="etcd://host:port[,host:port...] (default: SQLite)")
    p.add_argument("--no-etc-hosts", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-ssh-init", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("name")
    _add(sub, "info", lambda c, a: cluster_actions.cluster_info(c), "show cluster information")
    _add(sub, "version", lambda c, a: cluster_actions.cluster_version(c), "show versions")
    _add(
        sub, "getmaster", lambda c, a: cluster_actions.cluster_getmaster(c), "print the master node"
    )
    p = _add(sub, "master-failover", _master_failover, "make this node the master")
    p.add_argument("--no-voting", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--yes-do-it", action="store_true", help=argparse.SUPPRESS)
    p = _add(
        sub,
        "destroy",
        lambda c, a: cluster_destroy(c, yes_do_it=a.yes_do_it),
        "destroy the cluster",
    )
    p.add_argument("--yes-do-it", action="store_true")
    verify.add_gnt_commands(sub)


def _master_failover(cli: Cli, _args: argparse.Namespace) -> None:
    from corral.cli.leader import cluster_master_failover

    cluster_master_failover(cli)


def gnt_cluster(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gnt-cluster``."""
    return _run("gnt-cluster", _cluster_commands, argv)


def _job_commands(sub: argparse._SubParsersAction[Any]) -> None:
    p = _add(
        sub,
        "list",
        lambda c, a: cluster_actions.job_list(
            c,
            a.ids,
            _lo(a),
            statuses=cluster_actions.JOB_STATUS_FILTERS.get(a.status_filter or "", ()),
        ),
        "list jobs",
    )
    _list_opts(p)
    # As Ganeti's: each selects a set of statuses; the last one given wins.
    for flag, what in (
        ("pending", "jobs waiting to run or being canceled"),
        ("running", "running jobs"),
        ("error", "failed jobs"),
        ("finished", "finished jobs (success, error, canceled)"),
    ):
        p.add_argument(
            f"--{flag}",
            dest="status_filter",
            action="store_const",
            const=flag,
            help=f"only {what}",
        )
    p.add_argument(
        "--archived",
        action="store_true",
        help="include archived jobs (Corral keeps every job, so they are always included)",
    )
    p.add_argument("ids", nargs="*")
    p = _add(
        sub,
        "list-fields",
        lambda c, a: actions.list_fields(c, "job", a.names),
        "list the available fields",
    )
    p.add_argument("names", nargs="*")
    p = _add(sub, "info", lambda c, a: cluster_actions.job_info(c, a.ids), "show job details")
    p.add_argument("ids", nargs="*")
    p = _add(sub, "watch", lambda c, a: cluster_actions.job_watch(c, a.id), "follow a job's output")
    p.add_argument("id")
    p = _add(sub, "wait", lambda c, a: _job_wait(c, a.id), "wait for a job to finish")
    p.add_argument("id")
    p = _add(sub, "cancel", lambda c, a: cluster_actions.job_cancel(c, a.ids), "cancel jobs")
    p.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("ids", nargs="+")


def _job_wait(cli: Cli, job_id: str) -> None:
    from corral.cli.parsing import UsageError
    from corral.client import job_error

    try:
        jid = int(job_id)
    except ValueError:
        raise UsageError(f"job id: expected a number, got {job_id!r}") from None
    err = job_error(cli.client().follow_job(jid))
    if err is not None:
        raise err


def gnt_job(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gnt-job``."""
    return _run("gnt-job", _job_commands, argv)


def _node_commands(sub: argparse._SubParsersAction[Any]) -> None:
    p = _add(sub, "list", lambda c, a: cluster_actions.node_list(c, a.names, _lo(a)), "list nodes")
    _list_opts(p)
    p.add_argument("names", nargs="*")
    p = _add(
        sub,
        "list-fields",
        lambda c, a: actions.list_fields(c, "node", a.names),
        "list the available fields",
    )
    p.add_argument("names", nargs="*")
    p = _add(sub, "info", lambda c, a: cluster_actions.node_info(c, a.names), "show node details")
    p.add_argument("names", nargs="*")
    gnt_nodes.node_membership_commands(sub, _add, _common, _job)


def _group_commands(sub: argparse._SubParsersAction[Any]) -> None:
    gnt_nodes.group_commands(sub, _add, _common, _job)


def gnt_group(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gnt-group``."""
    return _run("gnt-group", _group_commands, argv)


def _node_commands_all(sub: argparse._SubParsersAction[Any]) -> None:
    from corral.cli.mobility import gnt_node_commands

    _node_commands(sub)
    gnt_node_commands(sub)


def gnt_node(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gnt-node``."""
    return _run("gnt-node", _node_commands_all, argv)


def _os_commands(sub: argparse._SubParsersAction[Any]) -> None:
    p = _add(
        sub, "list", lambda c, a: cluster_actions.os_list(c, no_headers=a.no_headers), "list OSes"
    )
    p.add_argument("--no-headers", action="store_true")
    _add(sub, "diagnose", lambda c, a: cluster_actions.os_diagnose(c), "diagnose OS definitions")


def gnt_os(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gnt-os``."""
    return _run("gnt-os", _os_commands, argv)


#: Every ``gnt-*`` command and the function that adds its subcommands.
COMMANDS: dict[str, Builder] = {
    "gnt-instance": _instance_commands_all,
    "gnt-cluster": _cluster_commands,
    "gnt-job": _job_commands,
    "gnt-node": _node_commands_all,
    "gnt-group": _group_commands,
    "gnt-os": _os_commands,
}


if __name__ == "__main__":
    # python -m corral.cli.gnt instance list ...
    _nouns = {
        "instance": gnt_instance,
        "cluster": gnt_cluster,
        "job": gnt_job,
        "node": gnt_node,
        "group": gnt_group,
        "os": gnt_os,
    }
    sys.exit(_nouns[sys.argv[1]](sys.argv[2:]))

"""What the job, node, OS and cluster commands of both CLIs do (``corral`` and ``gnt-*``).

The instance commands are in :mod:`corral.cli.actions`; the shared query/list machinery
(``show_query``, ``ListOptions``) lives there too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import corral
from corral.cli.actions import (
    JOB_LIST_DEFAULT,
    NODE_LIST_DEFAULT,
    ListOptions,
    show_query,
)
from corral.cli.common import EXIT_FAILURE, Cli, ExitCode
from corral.cli.output import format_timestamp, print_json, print_mapping, query_records
from corral.cli.parsing import UsageError
from corral.cli.progress import wait_job
from corral.cli.qfilter import OP_EQUAL, OP_OR, make_filter
from corral.objects.job import JobStatus

#: Every job status (Ganeti's).
JOB_STATUSES = frozenset(s.value for s in JobStatus)
#: Job statuses selected by ``gnt-job list --pending|--running|--error|--finished``
#: (Ganeti's ``JOBS_PENDING``, running, error, ``JOBS_FINALIZED``).
JOB_STATUS_FILTERS = {
    "pending": ("queued", "waiting", "canceling"),
    "running": ("running",),
    "error": ("error",),
    "finished": ("canceled", "success", "error"),
}


def job_list(
    cli: Cli, ids: Sequence[str], opts: ListOptions, *, statuses: Sequence[str] = ()
) -> None:
    """List jobs; ``statuses``, if given, selects the jobs in one of them.

    Raises:
        UsageError: a job id that is not a number (or a filter that does not parse).
    """
    server_ids, qfilter = make_filter(ids, force_filter=opts.force_filter, namefield="id")
    if qfilter is None:
        ids = [str(_job_id(i)) for i in server_ids]
    unknown = sorted(set(statuses) - JOB_STATUSES)
    if unknown:
        raise UsageError(
            f"--status: unknown job status(es) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(JOB_STATUSES))})"
        )
    extra: list[Any] | None = None
    if statuses:
        extra = [OP_OR, *[[OP_EQUAL, "status", s] for s in statuses]]
    show_query(cli, "job", JOB_LIST_DEFAULT, ids, opts, namefield="id", extra_filter=extra)


def _job_id(raw: str | int) -> int:
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"job id: expected a number, got {raw!r}") from None


def job_info(cli: Cli, ids: Sequence[str]) -> None:
    """Show jobs in detail (ops, statuses, results, log)."""
    client = cli.client()
    targets = [_job_id(i) for i in ids] or client.job_ids()
    jobs = [client.job(i) for i in targets]
    if cli.json:
        print_json(jobs if len(jobs) != 1 else jobs[0])
        return
    for job in jobs:
        cli.print(f"Job ID: {job['id']}")
        cli.print(f"  Status: {job['status']}")
        for label, key in (
            ("Received", "received_ts"),
            ("Processing start", "start_ts"),
            ("Processing end", "end_ts"),
        ):
            value = job.get(key)
            cli.print(f"  {label}: {format_timestamp(value) if value else 'N/A'}")
        cli.print("  Opcodes:")
        for i, op in enumerate(job.get("ops") or []):
            cli.print(f"    OP_ID: {op.get('OP_ID')}")
            cli.print(f"    Status: {(job.get('opstatus') or ['?'] * (i + 1))[i]}")
            params = {k: v for k, v in op.items() if k not in ("OP_ID", "reason")}
            print_mapping(cli.out, {"Input fields": params}, indent=2)
            result = (job.get("opresult") or [None] * (i + 1))[i]
            cli.print(f"      Result: {result!r}" if result is not None else "      No output data")
            log = (job.get("oplog") or [[]] * (i + 1))[i]
            if log:
                cli.print("      Execution log:")
                for entry in log:
                    cli.print(f"        {format_timestamp(entry[1])} {entry[2]} {entry[3]}")


def job_watch(cli: Cli, job_id: str) -> None:
    """Follow a job's log until it ends; fail if the job failed."""
    jid = _job_id(job_id)
    if cli.ganeti:
        cli.print(f"Output from job {jid} follows")
    job = wait_job(cli, jid)
    if not cli.ganeti and not cli.json:
        cli.print(f"job {jid}: {job['status']}")


def job_cancel(cli: Cli, ids: Sequence[str]) -> None:
    """Cancel jobs that have not started.

    Raises:
        ExitCode: 1 when one of them could not be canceled.
    """
    if not ids:
        raise UsageError("no job id given")
    failed = False
    for raw in ids:
        ok, message = cli.client().cancel_job(_job_id(raw))
        (cli.print if ok else cli.error)(message)
        failed |= not ok
    if failed:
        raise ExitCode(EXIT_FAILURE)


def node_list(cli: Cli, names: Sequence[str], opts: ListOptions) -> None:
    """List nodes."""
    show_query(cli, "node", NODE_LIST_DEFAULT, names, opts)


def node_info(cli: Cli, names: Sequence[str]) -> None:
    """Show nodes in detail."""
    client = cli.client()
    nodes = [client.node(n) for n in (list(names) or client.node_names())]
    if cli.json:
        print_json(nodes if len(nodes) != 1 or not names else nodes[0])
        return
    for node in nodes:
        cli.print(f"Node name: {node['name']}")
        print_mapping(cli.out, {k: v for k, v in node.items() if k != "name"}, indent=1)


def os_list(cli: Cli, *, no_headers: bool = False) -> None:
    """List the valid OS names (with variants)."""
    names = cli.client().os_names()
    if cli.json:
        print_json(names)
        return
    if not no_headers:
        cli.print("Name")
    for name in names:
        cli.print(name)


def os_diagnose(cli: Cli) -> None:
    """Show every OS definition found and why an invalid one is invalid."""
    fields = ["name", "valid", "variants", "api_versions", "path", "diagnose"]
    result = cli.client().query("os", fields)
    records = query_records(result)
    if cli.json:
        print_json(records)
        return
    for rec in records:
        status = "valid" if rec["valid"] else f"invalid - {rec['diagnose']}"
        cli.print(f"OS: {rec['name']} [global status: {status}]")
        cli.print(f"  path: {rec['path']}")
        cli.print(f"  API versions: {', '.join(str(v) for v in rec['api_versions'] or [])}")
        if rec["variants"]:
            cli.print(f"  variants: {', '.join(rec['variants'])}")
        cli.print()


def cluster_info(cli: Cli) -> None:
    """Show cluster information."""
    info = cli.client().info()
    if cli.json:
        print_json(info)
        return
    cli.print(f"Cluster name: {info.get('name')}")
    cli.print(f"Master node: {info.get('master')}")
    print_mapping(cli.out, {k: v for k, v in info.items() if k not in ("name", "master")})


def cluster_getmaster(cli: Cli) -> None:
    """Print the master node's name."""
    cli.print(str(cli.client().info().get("master")))


def cluster_version(cli: Cli) -> None:
    """Print software and protocol versions (of the CLI and, if reachable, the master)."""
    cli.print(f"Software version: {corral.__version__}")
    cli.print(f"Internode protocol: {corral.PROTOCOL_VERSION}")
    cli.print("Configuration format: 1")
    cli.print("OS api version: 20")
    cli.print("Export interface: 0")
    cli.print("RAPI version: 2")

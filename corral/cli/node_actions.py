"""What the node-membership and group commands do, for ``corral`` and ``gnt-node``/``gnt-group``.

Membership changes have no RAPI resource in Ganeti (``gnt-node add`` talks to the master
directly); here they are submitted as raw opcodes on the master's local socket
(``POST /2/jobs``), so these commands run on a master candidate, as root.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from corral.cli.common import Cli
from corral.cli.output import print_json
from corral.cli.parsing import UsageError
from corral.cli.progress import JobOptions, last_result, run_job
from corral.objects.opcodes import OpCode
from corral.objects.opcodes_node import (
    OpGroupAdd,
    OpGroupAssignNodes,
    OpGroupRemove,
    OpGroupRename,
    OpGroupSetParams,
    OpNodeAdd,
    OpNodeRemove,
    OpNodeSetParams,
)

_BOOL_WORDS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


def parse_bool(value: str | None, option: str) -> bool | None:
    """Ganeti's ``yes|no`` option values (None stays None).

    Raises:
        UsageError: another word.
    """
    if value is None:
        return None
    try:
        return _BOOL_WORDS[value.strip().lower()]
    except KeyError:
        raise UsageError(f"{option}: expected yes or no, got {value!r}") from None


def submit_ops(
    cli: Cli, ops: Sequence[OpCode], job: JobOptions, *, what: str = ""
) -> dict[str, Any] | None:
    """Submit ``ops`` as one job on the local socket and follow it (see ``run_job``).

    Raises:
        CorralError: the master refused the job, or the job failed.
    """
    payload = []
    for op in ops:
        data = op.to_dict()
        data["dry_run"] = job.dry_run
        if job.reason:
            # NOTE: the source RAPI gives a user's reason (Ganeti's OPCODE_REASON_SRC_USER).
            data["reason"] = [["gnt:user", job.reason, time.time_ns()]]
        payload.append(data)
    job_id = int(cli.client().request("POST", "/2/jobs", body={"ops": payload}))
    return run_job(cli, job_id, job, what=what)


def node_add(
    cli: Cli,
    name: str,
    *,
    job: JobOptions,
    address: str | None,
    token: str | None,
    secondary_ip: str | None = None,
    group: str | None = None,
    master_candidate: bool | None = None,
    master_capable: bool | None = None,
    vm_capable: bool | None = None,
    port: int | None = None,
    readd: bool = False,
) -> None:
    """Add (or re-add) a node; the host must run ``corral-noded --join`` (see nodes.md)."""
    op = OpNodeAdd(
        node_name=name,
        primary_ip=address,
        secondary_ip=secondary_ip,
        group=group,
        master_candidate=master_candidate,
        master_capable=master_capable,
        vm_capable=vm_capable,
        join_token=token,
        port=port,
        readd=readd,
    )
    done = submit_ops(cli, [op], job, what=f"node {'readd' if readd else 'add'} {name}")
    if done is not None and not cli.ganeti and not job.dry_run:
        cli.print(f"node {name} {'re-added' if readd else 'added'}")


def node_remove(cli: Cli, names: Sequence[str], *, job: JobOptions) -> None:
    """Remove nodes (each revoked: its certificate is refused afterwards)."""
    if not names:
        raise UsageError("no node name given")
    for name in names:
        done = submit_ops(cli, [OpNodeRemove(node_name=name)], job, what=f"node remove {name}")
        if done is not None and not cli.ganeti and not job.dry_run:
            cli.print(f"node {name} removed")


def node_modify(
    cli: Cli,
    name: str,
    *,
    job: JobOptions,
    master_candidate: bool | None = None,
    offline: bool | None = None,
    drained: bool | None = None,
    master_capable: bool | None = None,
    vm_capable: bool | None = None,
    secondary_ip: str | None = None,
    force: bool = False,
    auto_promote: bool = False,
) -> None:
    """Change a node's roles and flags; prints what changed (Ganeti's ``Modified node``)."""
    op = OpNodeSetParams(
        node_name=name,
        master_candidate=master_candidate,
        offline=offline,
        drained=drained,
        master_capable=master_capable,
        vm_capable=vm_capable,
        secondary_ip=secondary_ip,
        force=force,
        auto_promote=auto_promote,
    )
    done = submit_ops(cli, [op], job, what=f"node modify {name}")
    changes = last_result(done) or []
    if cli.json:
        print_json(changes)
        return
    if done is not None and changes:
        cli.print(f"Modified node {name}")
        for param, value in changes:
            cli.print(f" - {param} -> {value}")


def node_powercycle(cli: Cli, name: str, *, job: JobOptions, yes: bool, force: bool) -> None:
    """Hard-reset a node at once (``POST /2/nodes/<n>/powercycle``); asks first unless ``yes``.

    ``force`` is needed for the master node.

    Raises:
        ExitCode: no confirmation. CorralError: the master refused the job, or it failed.
    """
    from corral.cli.actions import confirm

    confirm(cli, f"Powercycle node {name}? Its instances stop without a clean shutdown.", force=yes)
    params: list[tuple[str, Any]] = [("force", int(force))]
    if job.dry_run:
        params.append(("dry-run", 1))
    if job.reason:
        params.append(("reason", job.reason))
    job_id = int(cli.client().request("POST", f"/2/nodes/{name}/powercycle", params=params))
    done = run_job(cli, job_id, job, what=f"node powercycle {name}")
    message = last_result(done)
    if done is not None and message and not cli.json and not job.dry_run:
        cli.print(str(message))


def node_join_prepare(cli: Cli, *, new_token: bool = False) -> None:
    """Put this host in join mode (key, bootstrap certificate, token) and print the token.

    Raises:
        CorralError: this host is a node of a cluster already (kind WRONG_STATE).
    """
    from corral.node.backend.membership import prepare_join

    token = prepare_join(cli.paths, [], new_token=new_token)
    if cli.json:
        print_json({"join_token": token, "file": cli.paths.join_token})
    else:
        cli.print(f"join token: {token}")
        cli.print(f"(kept in {cli.paths.join_token}; start 'corral-noded --join' to serve it)")


# --- groups ------------------------------------------------------------------------------------


def _kv(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        for part in item.split(","):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise UsageError(f"{option}: expected key=value, got {part!r}")
            out[key.strip()] = value.strip()
    return out


def group_add(
    cli: Cli,
    name: str,
    *,
    job: JobOptions,
    alloc_policy: str | None = None,
    ndparams: Sequence[str] | None = None,
) -> None:
    """Create a node group."""
    op = OpGroupAdd.model_validate(
        {"group_name": name, "alloc_policy": alloc_policy, "ndparams": _kv(ndparams, "-N")}
    )
    if submit_ops(cli, [op], job, what=f"group add {name}") and not cli.ganeti:
        cli.print(f"group {name} added")


def group_remove(cli: Cli, names: Sequence[str], *, job: JobOptions) -> None:
    """Remove empty node groups."""
    for name in names:
        done = submit_ops(cli, [OpGroupRemove(group_name=name)], job, what=f"group remove {name}")
        if done and not cli.ganeti:
            cli.print(f"group {name} removed")


def group_rename(cli: Cli, old: str, new: str, *, job: JobOptions) -> None:
    """Rename a node group."""
    op = OpGroupRename(group_name=old, new_name=new)
    if submit_ops(cli, [op], job, what=f"group rename {old}") and not cli.ganeti:
        cli.print(f"group {old} renamed to {new}")


def group_assign_nodes(
    cli: Cli, group: str, nodes: Sequence[str], *, job: JobOptions, force: bool = False
) -> None:
    """Move nodes into a group."""
    if not nodes:
        raise UsageError("no node name given")
    op = OpGroupAssignNodes(group_name=group, nodes=list(nodes), force=force)
    submit_ops(cli, [op], job, what=f"group assign-nodes {group}")


def group_modify(
    cli: Cli,
    name: str,
    *,
    job: JobOptions,
    alloc_policy: str | None = None,
    ndparams: Sequence[str] | None = None,
) -> None:
    """Change a group's allocation policy / node parameters."""
    op = OpGroupSetParams.model_validate(
        {"group_name": name, "alloc_policy": alloc_policy, "ndparams": _kv(ndparams, "-N")}
    )
    done = submit_ops(cli, [op], job, what=f"group modify {name}")
    if done is not None and not cli.json:
        for param, value in last_result(done) or []:
            cli.print(f" - {param} -> {value}")


GROUP_LIST_DEFAULT = ["name", "node_cnt", "pinst_cnt", "alloc_policy", "ndparams"]


def group_list(cli: Cli, names: Sequence[str], *, no_headers: bool = False) -> None:
    """List node groups (``/2/groups?bulk=1``)."""
    groups = cli.client().request("GET", "/2/groups", params=[("bulk", 1)])
    if names:
        groups = [g for g in groups if g["name"] in names]
    if cli.json:
        print_json(groups)
        return
    rows = [
        [str(g.get(f, "")) for f in ("name", "node_cnt", "pinst_cnt", "alloc_policy")]
        for g in groups
    ]
    header = ["Group", "Nodes", "Instances", "AllocPolicy"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in ([] if no_headers else [header]) + rows:
        cli.print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def group_info(cli: Cli, names: Sequence[str]) -> None:
    """Show node groups in detail."""
    client = cli.client()
    targets = list(names) or [
        g["name"] for g in client.request("GET", "/2/groups", params=[("bulk", 1)])
    ]
    infos = [client.request("GET", f"/2/groups/{n}") for n in targets]
    if cli.json:
        print_json(infos if len(infos) != 1 or not names else infos[0])
        return
    for info in infos:
        cli.print(f"Node group: {info['name']}")
        cli.print(f"  UUID: {info.get('uuid')}")
        cli.print(f"  Allocation policy: {info.get('alloc_policy')}")
        cli.print(f"  Nodes: {', '.join(info.get('node_list') or []) or '-'}")
        cli.print(f"  Node parameters: {info.get('ndparams') or {}}")

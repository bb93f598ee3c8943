"""The membership subcommands of ``gnt-node`` (add, readd, remove, modify, powercycle).

Also ``gnt-group``.

Kept apart from ``gnt.py``, which calls :func:`node_membership_commands` and
:func:`group_commands` with its own helpers (``add``: register a subcommand, ``common``: the
job options, ``job``: read them back).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from corral.cli import node_actions
from corral.cli.progress import JobOptions

AddFn = Callable[..., argparse.ArgumentParser]
CommonFn = Callable[..., None]
JobFn = Callable[[argparse.Namespace], JobOptions]

_pb = node_actions.parse_bool


def node_membership_commands(
    sub: argparse._SubParsersAction[Any], add: AddFn, common: CommonFn, job: JobFn
) -> None:
    """``gnt-node add|readd|remove|modify`` with Ganeti's options (plus ``--join-token``)."""

    def do_add(c: Any, a: argparse.Namespace, *, readd: bool = False) -> None:
        node_actions.node_add(
            c,
            a.node,
            job=job(a),
            address=a.primary_ip,
            token=a.join_token,
            secondary_ip=getattr(a, "secondary_ip", None),
            group=getattr(a, "nodegroup", None),
            master_capable=_pb(getattr(a, "master_capable", None), "--master-capable"),
            vm_capable=_pb(getattr(a, "vm_capable", None), "--vm-capable"),
            master_candidate=_pb(getattr(a, "master_candidate", None), "--master-candidate"),
            port=getattr(a, "port", None),
            readd=readd or bool(getattr(a, "readd", False)),
        )

    p = add(sub, "add", lambda c, a: do_add(c, a), "add a node (run corral-noded --join there)")
    common(p)
    p.add_argument("-s", "--secondary-ip")
    p.add_argument("-g", "--node-group", dest="nodegroup")
    p.add_argument("--master-capable")
    p.add_argument("--vm-capable")
    p.add_argument("-C", "--master-candidate")
    p.add_argument("--readd", action="store_true", help="re-add a known node")
    p.add_argument("--primary-ip", "--address", dest="primary_ip")
    p.add_argument("--join-token", help="the token 'corral-noded --join' printed on the node")
    p.add_argument("--port", type=int, help="the node daemon's port")
    p.add_argument("--no-ssh-key-check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("node")

    p = add(sub, "readd", lambda c, a: do_add(c, a, readd=True), "re-add a known node")
    common(p)
    p.add_argument("--primary-ip", "--address", dest="primary_ip")
    p.add_argument("--join-token")
    p.add_argument("node")

    p = add(
        sub,
        "remove",
        lambda c, a: node_actions.node_remove(c, a.nodes, job=job(a)),
        "remove nodes (their certificates are revoked)",
    )
    common(p)
    p.add_argument("nodes", nargs="+")

    p = add(
        sub,
        "modify",
        lambda c, a: node_actions.node_modify(
            c,
            a.node,
            job=job(a),
            master_candidate=_pb(a.master_candidate, "--master-candidate"),
            offline=_pb(a.offline, "--offline"),
            drained=_pb(a.drained, "--drained"),
            master_capable=_pb(a.master_capable, "--master-capable"),
            vm_capable=_pb(a.vm_capable, "--vm-capable"),
            secondary_ip=a.secondary_ip,
            auto_promote=a.auto_promote,
            force=a.force,
        ),
        "change a node's roles",
    )
    common(p, force=True)
    p.add_argument("-C", "--master-candidate")
    p.add_argument("-O", "--offline")
    p.add_argument("-D", "--drained")
    p.add_argument("--master-capable")
    p.add_argument("--vm-capable")
    p.add_argument("-s", "--secondary-ip")
    p.add_argument("--auto-promote", action="store_true")
    p.add_argument("node")

    p = add(
        sub,
        "powercycle",
        lambda c, a: node_actions.node_powercycle(c, a.node, job=job(a), yes=a.yes, force=a.force),
        "hard-reset a node at once",
    )
    common(p, force=True)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--power-delay", type=float, help=argparse.SUPPRESS)
    p.add_argument("node")


def group_commands(
    sub: argparse._SubParsersAction[Any], add: AddFn, common: CommonFn, job: JobFn
) -> None:
    """``gnt-group add|remove|rename|assign-nodes|modify|list|info``."""
    p = add(
        sub,
        "add",
        lambda c, a: node_actions.group_add(
            c, a.group, job=job(a), alloc_policy=a.alloc_policy, ndparams=a.ndparams
        ),
        "create a node group",
    )
    common(p)
    p.add_argument("--alloc-policy")
    p.add_argument("-N", "--node-parameters", dest="ndparams", action="append")
    p.add_argument("group")

    p = add(
        sub,
        "remove",
        lambda c, a: node_actions.group_remove(c, a.groups, job=job(a)),
        "remove empty node groups",
    )
    common(p)
    p.add_argument("groups", nargs="+")

    p = add(
        sub,
        "rename",
        lambda c, a: node_actions.group_rename(c, a.group, a.new_name, job=job(a)),
        "rename a node group",
    )
    common(p)
    p.add_argument("group")
    p.add_argument("new_name")

    p = add(
        sub,
        "assign-nodes",
        lambda c, a: node_actions.group_assign_nodes(
            c, a.group, a.nodes, job=job(a), force=a.force
        ),
        "move nodes into a group",
    )
    common(p, force=True)
    p.add_argument("group")
    p.add_argument("nodes", nargs="+")

    p = add(
        sub,
        "modify",
        lambda c, a: node_actions.group_modify(
            c, a.group, job=job(a), alloc_policy=a.alloc_policy, ndparams=a.ndparams
        ),
        "change a group's parameters",
    )
    common(p)
    p.add_argument("--alloc-policy")
    p.add_argument("-N", "--node-parameters", dest="ndparams", action="append")
    p.add_argument("group")

    p = add(
        sub,
        "list",
        lambda c, a: node_actions.group_list(c, a.groups, no_headers=a.no_headers),
        "list node groups",
    )
    p.add_argument("--no-headers", action="store_true")
    p.add_argument("groups", nargs="*")

    p = add(sub, "info", lambda c, a: node_actions.group_info(c, a.groups), "show node groups")
    p.add_argument("groups", nargs="*")

"""Node and OS query fields (Ganeti ``lib/query.py`` names)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from corral.api.fields.base import (
    NODATA,
    OFFLINE,
    ROLE_LETTERS,
    UNAVAIL,
    FieldDef,
    NodeContext,
)
from corral.api.fields.base import make_field as _f
from corral.objects.cluster import Cluster
from corral.objects.node import Node
from corral.rpc.calls import NodeInfoResponse, OsInfo


def node_role(cluster: Cluster, node: Node) -> str:
    """The node's role letter (M, C, R, D, O)."""
    return ROLE_LETTERS[node.role(cluster.master_node)]


def _node_live(getter: Callable[[NodeInfoResponse], Any]) -> Callable[[NodeContext, Node], Any]:
    def get(ctx: NodeContext, node: Node) -> Any:
        if node.offline:
            return OFFLINE
        if not node.vm_capable:
            return UNAVAIL
        if ctx.live is None:
            return NODATA
        info = ctx.live.get(node.name)
        if info is None:
            return NODATA
        return getter(info)

    return get


def _mem_node(info: NodeInfoResponse) -> int:
    hv_used = sum(hv.memory_hv for hv in info.hypervisors.values())
    return max(0, info.memory_total - info.memory_free - hv_used)


def _first_hv(info: NodeInfoResponse, attr: str, default: int) -> int:
    for hv in info.hypervisors.values():
        return int(getattr(hv, attr))
    return default


_NODE_FIELDS: dict[str, FieldDef] = {
    f.name: f
    for f in (
        _f("name", "Node", "text", "Node name", lambda _c, n: n.name),
        _f("uuid", "UUID", "text", "Node UUID", lambda _c, n: n.uuid),
        _f("ctime", "CTime", "timestamp", "Creation timestamp", lambda _c, n: n.ctime),
        _f("mtime", "MTime", "timestamp", "Modification timestamp", lambda _c, n: n.mtime),
        _f(
            "serial_no",
            "SerialNo",
            "number",
            "Node object serial number",
            lambda _c, n: n.serial_no,
        ),
        _f("tags", "Tags", "other", "Tags", lambda _c, n: list(n.tags)),
        _f("offline", "Offline", "bool", "Whether node is marked offline", lambda _c, n: n.offline),
        _f("drained", "Drained", "bool", "Whether node is drained", lambda _c, n: n.drained),
        _f(
            "master_candidate",
            "MasterC",
            "bool",
            "Whether node is a master candidate",
            lambda _c, n: n.master_candidate,
        ),
        _f(
            "master_capable",
            "MasterCapable",
            "bool",
            "Whether node can become a master candidate",
            lambda _c, n: n.master_capable,
        ),
        _f(
            "vm_capable",
            "VMCapable",
            "bool",
            "Whether node can host instances",
            lambda _c, n: n.vm_capable,
        ),
        _f(
            "master",
            "IsMaster",
            "bool",
            "Whether node is master",
            lambda c, n: n.name == c.cluster.master_node,
        ),
        _f(
            "role",
            "Role",
            "text",
            'Node role; "M" for master, "C" for master candidate, '
            '"R" for regular, "D" for drained, "O" for offline',
            lambda c, n: node_role(c.cluster, n),
        ),
        _f("group", "Group", "text", "Node group", lambda _c, n: n.group),
        _f("group.uuid", "GroupUUID", "text", "UUID of node group", lambda _c, n: n.group),
        _f("pip", "PrimaryIP", "text", "Primary IP address", lambda _c, n: n.primary_ip),
        _f(
            "sip",
            "SecondaryIP",
            "text",
            "Secondary IP address",
            lambda _c, n: n.secondary_ip or n.primary_ip,
        ),
        _f("ndparams", "NodeParameters", "other", "Merged node parameters", lambda _c, _n: {}),
        _f(
            "custom_ndparams",
            "CustomNodeParameters",
            "other",
            "Custom node parameters",
            lambda _c, _n: {},
        ),
        _f(
            "pinst_cnt",
            "Pinst",
            "number",
            "Number of instances with this node as primary",
            lambda c, n: len(c.primaries.get(n.name, [])),
        ),
        _f(
            "sinst_cnt",
            "Sinst",
            "number",
            "Number of instances with this node as secondary",
            lambda c, n: len(c.secondaries.get(n.name, [])),
        ),
        _f(
            "pinst_list",
            "PriInstances",
            "other",
            "List of instances with this node as primary",
            lambda c, n: sorted(c.primaries.get(n.name, [])),
        ),
        _f(
            "sinst_list",
            "SecInstances",
            "other",
            "List of instances with this node as secondary",
            lambda c, n: sorted(c.secondaries.get(n.name, [])),
        ),
        _f(
            "mtotal",
            "MTotal",
            "unit",
            "Total amount of memory of physical machine",
            _node_live(lambda i: i.memory_total),
            live=True,
        ),
        _f(
            "mfree",
            "MFree",
            "unit",
            "Memory available for instance allocations",
            _node_live(lambda i: i.memory_free),
            live=True,
        ),
        _f(
            "mnode",
            "MNode",
            "unit",
            "Amount of memory used by node",
            _node_live(_mem_node),
            live=True,
        ),
        _f(
            "dtotal",
            "DTotal",
            "unit",
            "Total storage space in storage unit used for instance disk allocation",
            _node_live(lambda i: sum(s.total for s in i.storage)),
            live=True,
        ),
        _f(
            "dfree",
            "DFree",
            "unit",
            "Available storage space in storage unit",
            _node_live(lambda i: sum(s.free for s in i.storage)),
            live=True,
        ),
        _f(
            "sptotal",
            "SpTotal",
            "number",
            "Total spindles (exclusive storage only)",
            _node_live(lambda _i: 0),
            live=True,
        ),
        _f(
            "spfree",
            "SpFree",
            "number",
            "Available spindles (exclusive storage only)",
            _node_live(lambda _i: 0),
            live=True,
        ),
        _f(
            "ctotal",
            "CTotal",
            "number",
            "Number of logical processors",
            _node_live(lambda i: i.cpu_total),
            live=True,
        ),
        _f(
            "cnos",
            "CNOs",
            "number",
            "Number of logical processors used by the node OS",
            _node_live(lambda _i: 1),
            live=True,
        ),
        _f(
            "cnodes",
            "CNodes",
            "number",
            "Number of NUMA domains on node",
            _node_live(lambda i: _first_hv(i, "cpu_nodes", 1)),
            live=True,
        ),
        _f(
            "csockets",
            "CSockets",
            "number",
            "Number of physical CPU sockets",
            _node_live(lambda i: _first_hv(i, "cpu_sockets", 1)),
            live=True,
        ),
        _f(
            "bootid",
            "BootID",
            "text",
            "Random UUID renewed for each system reboot",
            _node_live(lambda i: i.boot_id),
            live=True,
        ),
    )
}


def node_field(name: str) -> FieldDef | None:
    """The definition of a node field, or None."""
    return _NODE_FIELDS.get(name)


def node_field_names() -> list[str]:
    """Every node field name."""
    return sorted(_NODE_FIELDS)


# --- OS fields ---------------------------------------------------------------------------------

_OS_FIELDS: dict[str, FieldDef] = {
    f.name: f
    for f in (
        _f("name", "Name", "text", "Operating system name", lambda _c, o: o.name),
        _f(
            "valid",
            "Valid",
            "bool",
            "Whether operating system definition is valid",
            lambda _c, o: o.valid,
        ),
        _f("hidden", "Hidden", "bool", "Whether operating system is hidden", lambda _c, _o: False),
        _f(
            "blacklisted",
            "Blacklisted",
            "bool",
            "Whether operating system is blacklisted",
            lambda _c, _o: False,
        ),
        _f(
            "variants",
            "Variants",
            "other",
            "Operating system variants",
            lambda _c, o: list(o.variants),
        ),
        _f(
            "api_versions",
            "ApiVersions",
            "other",
            "Operating system API versions",
            lambda _c, o: list(o.api_versions),
        ),
        _f(
            "parameters",
            "Parameters",
            "other",
            "Operating system parameters",
            lambda _c, o: [list(p) for p in o.parameters],
        ),
        _f("path", "Path", "text", "Where the definition was found", lambda _c, o: o.path),
        _f(
            "diagnose", "Diagnose", "text", "Why the definition is not valid", lambda _c, o: o.error
        ),
        _f(
            "builtin",
            "Builtin",
            "bool",
            "Whether the OS ships with Corral",
            lambda _c, o: o.builtin,
        ),
    )
}


def os_field(name: str) -> FieldDef | None:
    """The definition of an OS field, or None."""
    return _OS_FIELDS.get(name)


def os_names(oses: Iterable[OsInfo]) -> list[str]:
    """Ganeti's ``/2/os`` list: ``name`` or ``name+variant`` for every valid OS."""
    names: list[str] = []
    for osinfo in oses:
        if not osinfo.valid:
            continue
        if osinfo.variants:
            names.extend(f"{osinfo.name}+{v}" for v in osinfo.variants)
        else:
            names.append(osinfo.name)
    return sorted(set(names))


def os_field_names() -> list[str]:
    """Every OS field name."""
    return sorted(_OS_FIELDS)

"""Field machinery shared by the instance, node and OS field tables.

Each field has a name, a title (the column header ``gnt-* list`` prints), a kind (Ganeti's
``QFT_*``: text, bool, number, unit, timestamp, other), whether it needs live data from the
nodes, and a pure getter. Getters read a context built once per request; a value that cannot
be known is :data:`UNAVAIL` (no live data because the node is down) or :data:`OFFLINE` (the
node is marked offline). RAPI resources turn both into ``null``; ``/2/query`` reports them
with Ganeti's result status codes (:data:`RS_NORMAL` ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Final

from corral.hypervisor.base import InstanceInfo
from corral.objects.cluster import Cluster
from corral.objects.instance import Instance
from corral.objects.node import Node, NodeRole
from corral.rpc.calls import NodeInfoResponse

# Ganeti's query result status codes (constants.RS_*).
RS_NORMAL: Final = 0
RS_UNKNOWN: Final = 1
RS_NODATA: Final = 2
RS_UNAVAIL: Final = 3
RS_OFFLINE: Final = 4


class Special:
    """A marker value: the field has no value for this object."""

    def __init__(self, name: str, status: int) -> None:
        self.name = name
        self.status = status

    def __repr__(self) -> str:
        return self.name


#: The value cannot be known (no live data from the node).
UNAVAIL: Final = Special("UNAVAIL", RS_UNAVAIL)
#: No live data was asked for / returned.
NODATA: Final = Special("NODATA", RS_NODATA)
#: The node is marked offline.
OFFLINE: Final = Special("OFFLINE", RS_OFFLINE)

# Instance statuses (constants.INSTST_*).
ST_RUNNING = "running"
ST_ADMIN_DOWN = "ADMIN_down"
ST_ADMIN_OFFLINE = "ADMIN_offline"
ST_ERROR_UP = "ERROR_up"
ST_ERROR_DOWN = "ERROR_down"
ST_USER_DOWN = "USER_down"
ST_NODE_DOWN = "ERROR_nodedown"
ST_NODE_OFFLINE = "ERROR_nodeoffline"

#: Node role letters of the ``role`` query field (constants.NR_*).
ROLE_LETTERS = {
    NodeRole.MASTER: "M",
    NodeRole.CANDIDATE: "C",
    NodeRole.REGULAR: "R",
    NodeRole.DRAINED: "D",
    NodeRole.OFFLINE: "O",
}

#: Ganeti's RAPI field lists (Ganeti 3.0 ``rlib2``), used for ``bulk=1`` and single objects.
COMMON_FIELDS = ["ctime", "mtime", "uuid", "serial_no", "tags"]
I_FIELDS = [
    "name",
    "admin_state",
    "os",
    "pnode",
    "snodes",
    "disk_template",
    "nic.ips",
    "nic.macs",
    "nic.modes",
    "nic.uuids",
    "nic.names",
    "nic.links",
    "nic.networks",
    "nic.networks.names",
    "nic.bridges",
    "network_port",
    "disk.sizes",
    "disk.spindles",
    "disk_usage",
    "disk.uuids",
    "disk.names",
    "beparams",
    "hvparams",
    "oper_state",
    "oper_ram",
    "oper_vcpus",
    "status",
    "custom_hvparams",
    "custom_beparams",
    "custom_nicparams",
    *COMMON_FIELDS,
]
N_FIELDS = [
    "name",
    "offline",
    "master_candidate",
    "drained",
    "dtotal",
    "dfree",
    "sptotal",
    "spfree",
    "mtotal",
    "mnode",
    "mfree",
    "pinst_cnt",
    "sinst_cnt",
    "ctotal",
    "cnos",
    "cnodes",
    "csockets",
    "pip",
    "sip",
    "role",
    "pinst_list",
    "sinst_list",
    "master_capable",
    "vm_capable",
    "ndparams",
    "group.uuid",
    *COMMON_FIELDS,
]
J_FIELDS_BULK = ["id", "ops", "status", "summary", "opstatus", "received_ts", "start_ts", "end_ts"]
J_FIELDS = [*J_FIELDS_BULK, "oplog", "opresult"]

#: Default columns of ``gnt-instance list`` / ``gnt-node list`` / ``gnt-job list``.
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

#: Job fields (values come from the master's ``job_fields``), with titles and kinds.
JOB_FIELD_DEFS: dict[str, tuple[str, str]] = {
    "id": ("ID", "number"),
    "status": ("Status", "text"),
    "priority": ("Priority", "number"),
    "ops": ("OpCodes", "other"),
    "opresult": ("OpCode_result", "other"),
    "opstatus": ("OpCode_status", "other"),
    "oplog": ("OpCode_log", "other"),
    "opstart": ("OpCode_start", "other"),
    "opexec": ("OpCode_exec", "other"),
    "opend": ("OpCode_end", "other"),
    "summary": ("Summary", "other"),
    "received_ts": ("Received", "timestamp"),
    "start_ts": ("Start", "timestamp"),
    "end_ts": ("End", "timestamp"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class FieldDef:
    """One query field."""

    name: str
    title: str
    kind: str  # text | bool | number | unit | timestamp | other
    doc: str
    getter: Callable[[Any, Any], Any]
    live: bool = False

    def to_dict(self) -> dict[str, str]:
        """Ganeti's ``QueryFieldDefinition`` form."""
        return {"name": self.name, "title": self.title, "kind": self.kind, "doc": self.doc}


def unknown_field(name: str) -> dict[str, str]:
    """The definition Ganeti reports for a field it does not know."""
    return {"name": name, "title": name, "kind": "unknown", "doc": "Unknown field"}


# --- contexts ----------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class InstanceContext:
    """What instance field getters may read.

    ``live`` is None when no live field was asked for; ``bad_nodes`` are nodes that did not
    answer (their instances' live fields are UNAVAIL and status ``ERROR_nodedown``).
    """

    cluster: Cluster
    nodes: dict[str, Node]
    live: dict[str, InstanceInfo] | None = None
    bad_nodes: frozenset[str] = frozenset()


@dataclasses.dataclass(slots=True)
class NodeContext:
    """What node field getters may read."""

    cluster: Cluster
    instances: list[Instance]
    live: dict[str, NodeInfoResponse | None] | None = None
    primaries: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    secondaries: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for inst in self.instances:
            self.primaries.setdefault(inst.primary_node, []).append(inst.name)
            for snode in inst.secondary_nodes:
                self.secondaries.setdefault(snode, []).append(inst.name)


def make_field(
    name: str,
    title: str,
    kind: str,
    doc: str,
    getter: Callable[[Any, Any], Any],
    *,
    live: bool = False,
) -> FieldDef:
    """Shorthand constructor used by the field tables."""
    return FieldDef(name, title, kind, doc, getter, live)


# --- evaluation --------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A field value for RAPI answers: markers become ``None``."""
    return None if isinstance(value, Special) else value


def evaluate(defs: Sequence[FieldDef], ctx: Any, obj: Any) -> list[Any]:
    """Raw values (possibly markers) of ``defs`` for ``obj``."""
    return [d.getter(ctx, obj) for d in defs]


def as_query_row(values: Sequence[Any]) -> list[list[Any]]:
    """Ganeti ``/2/query`` row: ``[[status, value], ...]``."""
    row: list[list[Any]] = []
    for value in values:
        if isinstance(value, Special):
            row.append([value.status, None])
        else:
            row.append([RS_NORMAL, value])
    return row

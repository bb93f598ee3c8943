"""Instance query fields (Ganeti ``lib/query.py`` instance field names).

Besides the fixed names, these patterns resolve: ``be/<key>``, ``hv/<key>``,
``disk.size/N``, ``disk.name/N``, ``disk.uuid/N``, ``nic.<attr>/N``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from corral.api.fields.base import (
    NODATA,
    OFFLINE,
    ST_ADMIN_DOWN,
    ST_ADMIN_OFFLINE,
    ST_ERROR_DOWN,
    ST_ERROR_UP,
    ST_NODE_DOWN,
    ST_NODE_OFFLINE,
    ST_RUNNING,
    ST_USER_DOWN,
    UNAVAIL,
    FieldDef,
    InstanceContext,
    Special,
)
from corral.api.fields.base import make_field as _f
from corral.hypervisor.base import InstanceInfo, InstanceState
from corral.objects.instance import NIC, AdminState, AdminStateSource, Instance
from corral.objects.params.fill import filled_beparams, filled_hvparams, filled_nicparams


def _live_state(ctx: InstanceContext, inst: Instance) -> InstanceInfo | Special | None:
    """The instance's live info, None if it is not running, or a marker."""
    node = ctx.nodes.get(inst.primary_node)
    if node is not None and node.offline:
        return OFFLINE
    if inst.primary_node in ctx.bad_nodes:
        return UNAVAIL
    if ctx.live is None:
        return NODATA
    return ctx.live.get(inst.name)


def _is_shutdown(info: InstanceInfo) -> bool:
    return info.state in (InstanceState.SHUTDOWN, InstanceState.CRASHED)


def instance_status(ctx: InstanceContext, inst: Instance) -> str:
    """Ganeti's ``status`` field (see ``gnt-instance list``)."""
    node = ctx.nodes.get(inst.primary_node)
    if node is not None and node.offline:
        return ST_NODE_OFFLINE
    if inst.primary_node in ctx.bad_nodes:
        return ST_NODE_DOWN
    live = ctx.live.get(inst.name) if ctx.live is not None else None
    if live is not None:
        if _is_shutdown(live):
            if inst.admin_state is AdminState.UP:
                return ST_USER_DOWN
            return ST_ADMIN_DOWN
        return ST_RUNNING if inst.admin_state is AdminState.UP else ST_ERROR_UP
    if inst.admin_state is AdminState.UP:
        return ST_ERROR_DOWN
    if inst.admin_state is AdminState.DOWN:
        if inst.admin_state_source is AdminStateSource.USER:
            return ST_USER_DOWN
        return ST_ADMIN_DOWN
    return ST_ADMIN_OFFLINE


def _oper_state(ctx: InstanceContext, inst: Instance) -> Any:
    live = _live_state(ctx, inst)
    if isinstance(live, Special):
        return live
    return live is not None and not _is_shutdown(live)


def _oper_attr(attr: str) -> Callable[[InstanceContext, Instance], Any]:
    def get(ctx: InstanceContext, inst: Instance) -> Any:
        live = _live_state(ctx, inst)
        if isinstance(live, Special):
            return live
        if live is None:
            return UNAVAIL  # not running: Ganeti shows "-" (RAPI: null)
        return getattr(live, attr)

    return get


def _oper_attr_value(attr: str) -> Callable[[InstanceContext, Instance], Any]:
    """Like :func:`_oper_attr`, for enum attributes (their value)."""
    get = _oper_attr(attr)

    def value(ctx: InstanceContext, inst: Instance) -> Any:
        raw = get(ctx, inst)
        return raw.value if isinstance(raw, InstanceState) else raw

    return value


def _nic_mode(ctx: InstanceContext, nic: NIC) -> Any:
    return filled_nicparams(ctx.cluster, nic).get("mode")


def _nic_link(ctx: InstanceContext, nic: NIC) -> Any:
    return filled_nicparams(ctx.cluster, nic).get("link")


def _nic_vlan(ctx: InstanceContext, nic: NIC) -> Any:
    return filled_nicparams(ctx.cluster, nic).get("vlan")


def _nic_bridge(ctx: InstanceContext, nic: NIC) -> Any:
    params = filled_nicparams(ctx.cluster, nic)
    return params.get("link") if params.get("mode") == "bridged" else None


_NIC_ATTRS: dict[str, tuple[str, str, Callable[[InstanceContext, NIC], Any]]] = {
    # attr: (plural title, singular title, getter)
    "mac": ("NIC_MACs", "NicMAC", lambda _c, n: n.mac),
    "ip": ("NIC_IPs", "NicIP", lambda _c, n: n.ip),
    "name": ("NIC_Names", "NicName", lambda _c, n: n.name or None),
    "uuid": ("NIC_UUIDs", "NicUUID", lambda _c, n: n.uuid),
    "mode": ("NIC_modes", "NicMode", _nic_mode),
    "link": ("NIC_links", "NicLink", _nic_link),
    "bridge": ("NIC_bridges", "NicBridge", _nic_bridge),
    "vlan": ("NIC_VLANs", "NicVLAN", _nic_vlan),
    "network": ("NIC_networks", "NicNetwork", lambda _c, n: n.network),
    "network.name": ("NIC_networks_names", "NicNetworkName", lambda _c, n: n.network),
}
_NIC_PLURAL = {
    "mac": "macs",
    "ip": "ips",
    "name": "names",
    "uuid": "uuids",
    "mode": "modes",
    "link": "links",
    "bridge": "bridges",
    "vlan": "vlans",
    "network": "networks",
    "network.name": "networks.names",
}


def _nic_list(attr: str) -> Callable[[InstanceContext, Instance], Any]:
    getter = _NIC_ATTRS[attr][2]
    return lambda ctx, inst: [getter(ctx, nic) for nic in inst.nics]


def _nic_index(attr: str, index: int) -> Callable[[InstanceContext, Instance], Any]:
    getter = _NIC_ATTRS[attr][2]

    def get(ctx: InstanceContext, inst: Instance) -> Any:
        if index >= len(inst.nics):
            return UNAVAIL
        return getter(ctx, inst.nics[index])

    return get


def _disk_index(attr: str, index: int) -> Callable[[InstanceContext, Instance], Any]:
    def get(_ctx: InstanceContext, inst: Instance) -> Any:
        if index >= len(inst.disks):
            return UNAVAIL
        value = getattr(inst.disks[index], attr)
        return value if value != "" else None

    return get


def _custom_nicparams(_ctx: InstanceContext, inst: Instance) -> list[dict[str, Any]]:
    return [dict(nic.nicparams) for nic in inst.nics]


def _be(ctx: InstanceContext, inst: Instance) -> dict[str, Any]:
    return filled_beparams(ctx.cluster, inst)


def _hv(ctx: InstanceContext, inst: Instance) -> dict[str, Any]:
    return filled_hvparams(ctx.cluster, inst)


def _os_params(ctx: InstanceContext, inst: Instance) -> dict[str, Any]:
    merged = dict(ctx.cluster.osparams.get(inst.os_name, {}))
    merged.update(inst.osparams)
    return merged


_INSTANCE_FIELDS: dict[str, FieldDef] = {
    f.name: f
    for f in (
        _f("name", "Instance", "text", "Instance name", lambda _c, i: i.name),
        _f("uuid", "UUID", "text", "Instance UUID", lambda _c, i: i.uuid),
        _f("ctime", "CTime", "timestamp", "Creation timestamp", lambda _c, i: i.ctime),
        _f("mtime", "MTime", "timestamp", "Modification timestamp", lambda _c, i: i.mtime),
        _f(
            "serial_no",
            "SerialNo",
            "number",
            "Instance object serial number, incremented on each modification",
            lambda _c, i: i.serial_no,
        ),
        _f("tags", "Tags", "other", "Tags", lambda _c, i: list(i.tags)),
        _f("os", "OS", "text", "Operating system", lambda _c, i: i.os),
        _f("hypervisor", "Hypervisor", "text", "Hypervisor name", lambda _c, i: i.hypervisor),
        _f("pnode", "Primary_node", "text", "Primary node", lambda _c, i: i.primary_node),
        _f(
            "pnode.group",
            "PrimaryNodeGroup",
            "text",
            "Primary node's group",
            lambda c, i: c.nodes[i.primary_node].group if i.primary_node in c.nodes else None,
        ),
        _f(
            "snodes",
            "Secondary_Nodes",
            "other",
            "Secondary nodes",
            lambda _c, i: list(i.secondary_nodes),
        ),
        _f(
            "disk_template",
            "Disk_template",
            "text",
            "Instance disk template",
            lambda _c, i: i.disk_template,
        ),
        _f(
            "admin_state",
            "InstanceState",
            "text",
            "Desired state of the instance",
            lambda _c, i: i.admin_state.value,
        ),
        _f(
            "admin_state_source",
            "InstanceStateSource",
            "text",
            "Who last changed the desired state of the instance",
            lambda _c, i: i.admin_state_source.value,
        ),
        _f(
            "admin_up",
            "Autostart",
            "bool",
            "Desired state of the instance",
            lambda _c, i: i.admin_state is AdminState.UP,
        ),
        _f(
            "disks_active",
            "DisksActive",
            "bool",
            "Whether the disks are active",
            lambda _c, i: i.disks_active,
        ),
        _f(
            "forthcoming",
            "Forthcoming",
            "bool",
            "Whether the instance is forthcoming",
            lambda _c, _i: False,
        ),
        _f(
            "network_port",
            "Network_port",
            "other",
            "Instance network port if available (e.g. for VNC console)",
            lambda _c, i: i.network_port,
        ),
        _f("beparams", "BackendParameters", "other", "Backend parameters (merged)", _be),
        _f("hvparams", "HypervisorParameters", "other", "Hypervisor parameters (merged)", _hv),
        _f(
            "osparams",
            "OpSysParameters",
            "other",
            "Operating system parameters (merged)",
            _os_params,
        ),
        _f(
            "custom_beparams",
            "CustomBackendParameters",
            "other",
            "Custom backend parameters",
            lambda _c, i: dict(i.beparams),
        ),
        _f(
            "custom_hvparams",
            "CustomHypervisorParameters",
            "other",
            "Custom hypervisor parameters",
            lambda _c, i: dict(i.hvparams),
        ),
        _f(
            "custom_osparams",
            "CustomOpSysParameters",
            "other",
            "Custom operating system parameters",
            lambda _c, i: dict(i.osparams),
        ),
        _f(
            "custom_nicparams",
            "CustomNicParameters",
            "other",
            "Custom network interface parameters",
            _custom_nicparams,
        ),
        _f(
            "vcpus",
            "VCPUs",
            "number",
            'The "vcpus" backend parameter',
            lambda c, i: _be(c, i).get("vcpus"),
        ),
        _f("disk.count", "Disks", "number", "Number of disks", lambda _c, i: len(i.disks)),
        _f(
            "disk.sizes",
            "Disk_sizes",
            "other",
            "List of disk sizes",
            lambda _c, i: [d.size for d in i.disks],
        ),
        _f(
            "disk.spindles",
            "Disk_spindles",
            "other",
            "List of disk spindles",
            lambda _c, i: [None for _ in i.disks],
        ),
        _f(
            "disk.names",
            "Disk_names",
            "other",
            "List of disk names",
            lambda _c, i: [d.name or None for d in i.disks],
        ),
        _f(
            "disk.uuids",
            "Disk_UUIDs",
            "other",
            "List of disk UUIDs",
            lambda _c, i: [d.uuid for d in i.disks],
        ),
        _f(
            "disk_usage",
            "DiskUsage",
            "unit",
            "Total disk space used by instance on each of its nodes",
            lambda _c, i: sum(d.size for d in i.disks),
        ),
        _f("sda_size", "Disk/0", "unit", "Disk size of 1st disk", _disk_index("size", 0)),
        _f("sdb_size", "Disk/1", "unit", "Disk size of 2nd disk", _disk_index("size", 1)),
        _f(
            "nic.count", "NICs", "number", "Number of network interfaces", lambda _c, i: len(i.nics)
        ),
        _f("ip", "IP_address", "text", "IP address of 1st network interface", _nic_index("ip", 0)),
        _f(
            "mac",
            "MAC_address",
            "text",
            "MAC address of 1st network interface",
            _nic_index("mac", 0),
        ),
        _f("bridge", "Bridge", "text", "Bridge of 1st network interface", _nic_index("bridge", 0)),
        _f("nic_mode", "NIC_Mode", "text", "Mode of 1st network interface", _nic_index("mode", 0)),
        _f("nic_link", "NIC_Link", "text", "Link of 1st network interface", _nic_index("link", 0)),
        _f(
            "nic_network",
            "NIC_Network",
            "text",
            "Network of 1st network interface",
            _nic_index("network", 0),
        ),
        _f(
            "status",
            "Status",
            "text",
            'Instance status; "running" if instance is set to be '
            'running and actually is, "ADMIN_down" if instance is stopped and is not running, '
            '"ERROR_up", "ERROR_down", "ERROR_nodedown", "ERROR_nodeoffline", '
            '"ADMIN_offline", "USER_down"',
            instance_status,
            live=True,
        ),
        _f("oper_state", "Running", "bool", "Actual state of instance", _oper_state, live=True),
        _f(
            "hv_state",
            "HvState",
            "text",
            "Corral: the hypervisor's run state (running, paused, shutdown, crashed); "
            "null when the instance does not run",
            _oper_attr_value("state"),
            live=True,
        ),
        _f(
            "suspended",
            "Suspended",
            "bool",
            "Corral: saved to disk by instance suspend (restore with unsuspend)",
            lambda _c, i: i.suspended,
        ),
        _f(
            "oper_ram",
            "Memory",
            "unit",
            "Actual memory usage as seen by hypervisor",
            _oper_attr("memory"),
            live=True,
        ),
        _f(
            "oper_vcpus",
            "VCPUs",
            "number",
            "Actual number of VCPUs as seen by hypervisor",
            _oper_attr("vcpus"),
            live=True,
        ),
    )
}

for _attr, (_plural_title, _single, _g) in _NIC_ATTRS.items():
    _name = f"nic.{_NIC_PLURAL[_attr]}"
    _INSTANCE_FIELDS[_name] = _f(
        _name,
        _plural_title,
        "other",
        f"List containing each network interface's {_attr}",
        _nic_list(_attr),
    )

_INDEXED_RE = re.compile(r"^(disk|nic)\.([a-z.]+)/(\d+)$")
_DISK_INDEXED = {
    "size": ("Disk", "unit"),
    "name": ("DiskName", "text"),
    "uuid": ("DiskUUID", "text"),
}


def instance_field(name: str) -> FieldDef | None:
    """The definition of an instance field, or None if there is no such field."""
    known = _INSTANCE_FIELDS.get(name)
    if known is not None:
        return known
    if name.startswith("be/"):
        key = name[3:]
        target = "maxmem" if key == "memory" else key
        if target not in {
            "maxmem",
            "minmem",
            "vcpus",
            "auto_balance",
            "always_failover",
            "spindle_use",
        }:
            return None
        return _f(
            name,
            name,
            "other",
            f'The "{target}" backend parameter',
            lambda c, i: _be(c, i).get(target),
        )
    if name.startswith("hv/"):
        key = name[3:]
        return _f(
            name,
            name,
            "other",
            f'The "{key}" hypervisor parameter',
            lambda c, i: _hv(c, i).get(key, UNAVAIL),
        )
    m = _INDEXED_RE.match(name)
    if m:
        what, attr, idx = m.group(1), m.group(2), int(m.group(3))
        if what == "disk" and attr in _DISK_INDEXED:
            title, kind = _DISK_INDEXED[attr]
            return _f(
                name, f"{title}/{idx}", kind, f"Disk {attr} of disk {idx}", _disk_index(attr, idx)
            )
        if what == "nic" and attr in _NIC_ATTRS:
            return _f(
                name,
                f"{_NIC_ATTRS[attr][1]}/{idx}",
                "text",
                f"NIC {attr} of interface {idx}",
                _nic_index(attr, idx),
            )
    return None


def instance_field_names() -> list[str]:
    """Every fixed instance field name (for ``list-fields``)."""
    return sorted(_INSTANCE_FIELDS)

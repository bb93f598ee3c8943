"""Backend, NIC and disk parameter schemas (Ganeti's beparams, nicparams, diskparams)."""

from __future__ import annotations

from typing import Any

from corral.objects.params.spec import (
    ParamSpec,
    Schema,
    as_bool,
    as_choice,
    as_int,
    as_size_mib,
    as_str,
    in_range,
    size_range,
)


def _link_name(value: Any) -> str | None:
    if value and (len(value) > 15 or any(c in value for c in "/ \t\n\0")):
        return "must be a network interface name (at most 15 characters, no '/' or spaces)"
    return None


BEPARAMS = Schema.of(
    "beparams",
    [
        ParamSpec(
            name="maxmem",
            coerce=as_size_mib,
            default=128,
            type_name="size",
            doc="Memory the instance starts with and may balloon up to (MiB, or with a unit).",
            check=size_range(16, 4 * 1024 * 1024),
        ),
        ParamSpec(
            name="minmem",
            coerce=as_size_mib,
            default=128,
            type_name="size",
            doc="Memory the instance may be ballooned down to.",
            check=size_range(16, 4 * 1024 * 1024),
        ),
        ParamSpec(
            name="vcpus",
            coerce=as_int,
            default=1,
            type_name="int",
            doc="Number of virtual CPUs.",
            check=in_range(1, 512),
        ),
        ParamSpec(
            name="auto_balance",
            coerce=as_bool,
            default=True,
            type_name="bool",
            doc="Whether the instance is taken into account by the cluster balancer.",
        ),
        ParamSpec(
            name="always_failover",
            coerce=as_bool,
            default=False,
            type_name="bool",
            doc="Fail over instead of live-migrating.",
        ),
        ParamSpec(
            name="spindle_use",
            coerce=as_int,
            default=1,
            type_name="int",
            doc="Spindles the instance is expected to use (for the allocator).",
            check=in_range(0, 1024),
        ),
    ],
)

#: ``memory`` is Ganeti's older name that sets both ``minmem`` and ``maxmem``.
BEPARAMS_ALIASES = {"memory": ("maxmem", "minmem")}


def expand_be_aliases(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Replace ``memory=X`` by ``maxmem=X, minmem=X`` (explicit keys win)."""
    out = dict(raw or {})
    for alias, targets in BEPARAMS_ALIASES.items():
        if alias in out:
            value = out.pop(alias)
            for target in targets:
                out.setdefault(target, value)
    return out


NICPARAMS = Schema.of(
    "nicparams",
    [
        ParamSpec(
            name="mode",
            coerce=as_choice("bridged", "routed", "openvswitch"),
            default="bridged",
            type_name="choice",
            doc="How the NIC is connected: bridged, routed or openvswitch.",
        ),
        ParamSpec(
            name="link",
            coerce=as_str,
            default="",
            type_name="string",
            check=_link_name,
            doc="The bridge (bridged), routing table (routed) or switch the NIC connects to; "
            "empty means no host network (user-mode networking is never used).",
        ),
        ParamSpec(
            name="vlan",
            coerce=as_str,
            default="",
            type_name="string",
            doc="VLAN tag(s) for openvswitch mode.",
        ),
    ],
)

DISKPARAMS_FILE = Schema.of(
    "diskparams/file",
    [
        ParamSpec(
            name="format",
            coerce=as_choice("raw", "qcow2"),
            default="raw",
            type_name="choice",
            doc="Image format of new file disks: raw or qcow2.",
        ),
    ],
)

#: Disk templates and their diskparams schemas.
DISKPARAMS: dict[str, Schema] = {
    "file": DISKPARAMS_FILE,
    "sharedfile": Schema.of("diskparams/sharedfile", list(DISKPARAMS_FILE.specs.values())),
    "diskless": Schema.of("diskparams/diskless", []),
}

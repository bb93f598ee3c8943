"""Ganeti's CPU mask syntax (the ``cpu_mask`` hypervisor parameter), pure.

A mask is either one CPU list for the whole guest, or one per vCPU separated by ``:``:

* ``all`` — no pinning: every CPU of the node;
* ``0-2,4`` — CPUs 0, 1, 2 and 4 (single numbers and inclusive ``a-b`` ranges, comma-separated);
* ``0-2,4:all:1,3`` — vCPU 0 on CPUs 0-2 and 4, vCPU 1 anywhere, vCPU 2 on CPUs 1 and 3.

Syntax is checked on the master with the hvparams (:func:`parse_cpu_mask`); the number of
per-vCPU masks needs the instance's ``vcpus`` (beparams), so :func:`cpu_mask_problem` checks
it where both are known (instance create/modify on the master, and the node before pinning);
whether the CPUs exist is the node's business (:func:`node_cpu_problem`).
"""

from __future__ import annotations

import re

from corral.objects.params.spec import ParamSpec, as_str

#: The mask meaning "no pinning" (every CPU of the node).
CPU_MASK_ALL = "all"
#: Highest CPU number accepted by the syntax check (the node checks its real CPU count).
MAX_CPU = 4095

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _parse_one(text: str) -> frozenset[int] | None:
    """One mask: None for ``all``, else the CPU set.

    Raises:
        ValueError: with the reason, naming the bad element.
    """
    text = text.strip()
    if text == CPU_MASK_ALL:
        return None
    if not text:
        raise ValueError("empty CPU list (use 'all' for no pinning)")
    cpus: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        m = _RANGE.match(item)
        if m is None:
            raise ValueError(f"{item!r} is not a CPU number or range (e.g. 0-2,4)")
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) is not None else low
        if low > high:
            raise ValueError(f"range {item!r} runs backwards")
        if high > MAX_CPU:
            raise ValueError(f"CPU {high} is out of range (0-{MAX_CPU})")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def parse_cpu_mask(text: str) -> list[frozenset[int] | None]:
    """Parse a mask in Ganeti's syntax: one entry per ``:``-separated part, None = all CPUs.

    Raises:
        ValueError: the reason, naming the part at fault (``mask 2: ...`` for per-vCPU masks).
    """
    parts = text.split(":")
    out: list[frozenset[int] | None] = []
    for number, part in enumerate(parts):
        try:
            out.append(_parse_one(part))
        except ValueError as exc:
            where = f"mask {number} (vCPU {number}): " if len(parts) > 1 else ""
            raise ValueError(f"{where}{exc}") from None
    return out


def check_cpu_mask_syntax(value: object) -> str | None:
    """ParamSpec check for ``cpu_mask``: None when the syntax is fine, else the reason."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    try:
        parse_cpu_mask(value)
    except ValueError as exc:
        return f"{exc} (syntax: 'all', '0-2,4', or one mask per vCPU such as '0-2,4:all:1,3')"
    return None


def cpu_mask_problem(text: str, vcpus: int) -> str | None:
    """Why a mask does not fit an instance with ``vcpus`` vCPUs (None: it fits).

    One mask applies to the whole guest; several must be exactly one per vCPU.
    """
    try:
        masks = parse_cpu_mask(text)
    except ValueError as exc:
        return str(exc)
    if len(masks) > 1 and len(masks) != vcpus:
        return (
            f"{len(masks)} per-vCPU masks given but the instance has {vcpus} vCPU(s); "
            "give one mask for all vCPUs or exactly one per vCPU"
        )
    return None


def node_cpu_problem(text: str, cpu_count: int) -> str | None:
    """Why a mask cannot be honoured on a node with ``cpu_count`` CPUs (None: it can)."""
    try:
        masks = parse_cpu_mask(text)
    except ValueError as exc:
        return str(exc)
    wanted = set().union(*(m for m in masks if m is not None)) if masks else set()
    missing = sorted(c for c in wanted if c >= cpu_count)
    if missing:
        return (
            f"CPU(s) {', '.join(map(str, missing))} do not exist on this node "
            f"(it has {cpu_count}: 0-{cpu_count - 1})"
        )
    return None


def cpu_mask_param(doc: str) -> ParamSpec:
    """The ``cpu_mask`` parameter (Ganeti's pinning syntax), shared by the hypervisors."""
    return ParamSpec(
        name="cpu_mask",
        coerce=as_str,
        default=CPU_MASK_ALL,
        check=check_cpu_mask_syntax,
        type_name="string",
        doc=doc,
    )

"""Evaluate query fields over the master's state: the engine behind RAPI lists and /2/query.

Live data is fetched from the nodes only when a requested field needs it (as Ganeti does), so
``gnt-instance list -o name,os`` never waits for a node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from corral.api.fields import (
    JOB_FIELD_DEFS,
    FieldDef,
    InstanceContext,
    NodeContext,
    evaluate,
    instance_field,
    node_field,
    os_field,
    unknown_field,
)
from corral.api.protocol import MasterServiceApi
from corral.hypervisor.base import InstanceInfo
from corral.objects.instance import Instance
from corral.objects.job import Job
from corral.objects.node import Node
from corral.rpc.calls import NodeInfoResponse

#: A query result: one definition per requested field (None = unknown field) and the rows of
#: raw values (markers included; unknown fields hold None).
QueryResult = tuple[list[FieldDef | None], list[list[Any]]]


def resolve(
    names: Sequence[str], lookup: Callable[[str], FieldDef | None]
) -> list[FieldDef | None]:
    """Field definitions for ``names`` (None for unknown names)."""
    return [lookup(n) for n in names]


def field_dicts(names: Sequence[str], defs: Sequence[FieldDef | None]) -> list[dict[str, str]]:
    """Ganeti's field definitions for a query answer."""
    return [d.to_dict() if d else unknown_field(n) for n, d in zip(names, defs, strict=True)]


def _known(defs: Sequence[FieldDef | None]) -> list[FieldDef]:
    return [d for d in defs if d is not None]


def _rows(defs: Sequence[FieldDef | None], ctx: Any, objs: Sequence[Any]) -> list[list[Any]]:
    known = _known(defs)
    rows: list[list[Any]] = []
    for obj in objs:
        values = iter(evaluate(known, ctx, obj))
        rows.append([next(values) if d is not None else None for d in defs])
    return rows


async def _live_instances(
    service: MasterServiceApi,
) -> tuple[dict[str, InstanceInfo], frozenset[str]]:
    live, nodes = await asyncio.gather(service.live_instances(), service.live_nodes())
    bad = frozenset(name for name, info in nodes.items() if info is None)
    return live, bad


def select_instances(service: MasterServiceApi, names: Sequence[str] | None) -> list[Instance]:
    """The instances called ``names`` (all, sorted, when None).

    Raises:
        CorralError: NOT_FOUND for an unknown name.
    """
    if names:
        return [service.instance(n) for n in names]
    return sorted(service.instances(), key=lambda i: i.name)


async def instance_query(
    service: MasterServiceApi, fields: Sequence[str], names: Sequence[str] | None = None
) -> QueryResult:
    """Values of instance ``fields`` for the selected instances.

    Raises:
        CorralError: NOT_FOUND for an unknown instance name.
    """
    defs = resolve(fields, instance_field)
    instances = select_instances(service, names)
    ctx = InstanceContext(cluster=service.cluster(), nodes={n.name: n for n in service.nodes()})
    if any(d.live for d in _known(defs)):
        ctx.live, ctx.bad_nodes = await _live_instances(service)
    return defs, _rows(defs, ctx, instances)


def select_nodes(service: MasterServiceApi, names: Sequence[str] | None) -> list[Node]:
    """The nodes called ``names`` (all, sorted, when None).

    Raises:
        CorralError: NOT_FOUND for an unknown name.
    """
    if names:
        return [service.node(n) for n in names]
    return sorted(service.nodes(), key=lambda n: n.name)


async def node_query(
    service: MasterServiceApi, fields: Sequence[str], names: Sequence[str] | None = None
) -> QueryResult:
    """Values of node ``fields`` for the selected nodes.

    Raises:
        CorralError: NOT_FOUND for an unknown node name.
    """
    defs = resolve(fields, node_field)
    nodes = select_nodes(service, names)
    ctx = NodeContext(cluster=service.cluster(), instances=service.instances())
    if any(d.live for d in _known(defs)):
        live: dict[str, NodeInfoResponse | None] = await service.live_nodes()
        ctx.live = live
    return defs, _rows(defs, ctx, nodes)


async def os_query(
    service: MasterServiceApi, fields: Sequence[str], names: Sequence[str] | None = None
) -> QueryResult:
    """Values of OS ``fields`` for every OS definition found (or those called ``names``)."""
    defs = resolve(fields, os_field)
    oses = sorted(await service.os_diagnose(), key=lambda o: o.name)
    if names:
        oses = [o for o in oses if o.name in set(names)]
    return defs, _rows(defs, None, oses)


def job_field(name: str) -> FieldDef | None:
    """The definition of a job field, or None."""
    spec = JOB_FIELD_DEFS.get(name)
    if spec is None:
        return None
    # Values come from the master's job_fields(); the getter is never called.
    return FieldDef(name, spec[0], spec[1], f"Job {name}", lambda _c, _o: None)


def select_jobs(service: MasterServiceApi, ids: Sequence[int] | None) -> list[Job]:
    """The jobs with ``ids`` (all, by id, when None).

    Raises:
        CorralError: NOT_FOUND for an unknown id.
    """
    if ids:
        return [service.get_job(i) for i in ids]
    return sorted(service.list_jobs(), key=lambda j: j.id)


def job_query(
    service: MasterServiceApi, fields: Sequence[str], ids: Sequence[int] | None = None
) -> QueryResult:
    """Values of job ``fields`` for the selected jobs.

    Raises:
        CorralError: NOT_FOUND for an unknown job id.
    """
    defs = resolve(fields, job_field)
    known_names = [d.name for d in _known(defs)]
    rows: list[list[Any]] = []
    for job in select_jobs(service, ids):
        values = iter(service.job_fields(job, known_names) if known_names else [])
        rows.append([next(values) if d is not None else None for d in defs])
    return defs, rows

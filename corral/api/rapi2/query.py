"""RAPI v2 generic queries: ``/2/query/[resource]`` and ``/2/query/[resource]/fields``.

Resources: ``instance``, ``node``, ``job``, ``os``. The answer is Ganeti's
``QueryResponse``: ``{"fields": [{name, title, kind, doc}], "data": [[[status, value], ...]]}``
with status 0 (normal), 1 (unknown field), 2 (no data), 3 (unavailable), 4 (offline).
As in Ganeti these need the ``write`` right (results may be sensitive).

Filters (``qfilter`` in the PUT body) support what the CLI needs: ``None``, a name equality
``["=", "name", X]`` (``id`` for jobs) and an ``["|", ...]`` of those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.api.errors import HttpError
from corral.api.fields import (
    JOB_FIELD_DEFS,
    RS_UNKNOWN,
    FieldDef,
    as_query_row,
    instance_field,
    instance_field_names,
    node_field,
    node_field_names,
    os_field,
    os_field_names,
)
from corral.api.rapi2.common import WRITE, dict_body, ok, service_of, text_param
from corral.api.rapi2.queries import (
    field_dicts,
    instance_query,
    job_field,
    job_query,
    node_query,
    os_query,
)

router = APIRouter()

RESOURCES = ("instance", "node", "job", "os")


def _lookup(resource: str) -> tuple[Callable[[str], FieldDef | None], list[str]]:
    if resource == "instance":
        return instance_field, instance_field_names()
    if resource == "node":
        return node_field, node_field_names()
    if resource == "os":
        return os_field, os_field_names()
    if resource == "job":
        return job_field, sorted(JOB_FIELD_DEFS)
    raise HttpError(404, f"unknown query resource {resource!r}; use one of {list(RESOURCES)}")


def _split_fields(raw: str | None) -> list[str]:
    if raw is None:
        raise HttpError(400, "missing 'fields' query argument")
    return [f.strip() for f in raw.split(",") if f.strip()]


def filter_names(qfilter: Any, key: str) -> list[str] | None:
    """Names selected by a (simple) Ganeti query filter; None selects everything.

    Raises:
        HttpError: 400 for filters other than name equality and or-lists of them.
    """
    if qfilter is None:
        return None
    if isinstance(qfilter, list) and len(qfilter) == 3 and qfilter[0] == "=":
        if qfilter[1] != key:
            raise HttpError(400, f"unsupported filter field {qfilter[1]!r}: only {key!r}")
        return [str(qfilter[2])]
    if isinstance(qfilter, list) and qfilter and qfilter[0] == "|":
        names: list[str] = []
        for sub in qfilter[1:]:
            names.extend(filter_names(sub, key) or [])
        return names
    raise HttpError(400, f'unsupported query filter {qfilter!r}: use ["=", "{key}", value]')


async def run_query(
    request: Request, resource: str, fields: list[str], names: list[str] | None
) -> dict[str, Any]:
    """Run a query and build Ganeti's answer."""
    service = service_of(request)
    _lookup(resource)
    if resource == "instance":
        defs, rows = await instance_query(service, fields, names)
    elif resource == "node":
        defs, rows = await node_query(service, fields, names)
    elif resource == "os":
        defs, rows = await os_query(service, fields, names)
    else:
        try:
            ids = [int(n) for n in names] if names else None
        except ValueError:
            raise HttpError(400, "job ids must be numbers") from None
        defs, rows = job_query(service, fields, ids)
    data = []
    for row in rows:
        cells = as_query_row(row)
        for i, d in enumerate(defs):
            if d is None:
                cells[i] = [RS_UNKNOWN, None]
        data.append(cells)
    return {"fields": field_dicts(fields, defs), "data": data}


@router.get("/2/query/{resource}", dependencies=[WRITE])
async def query_get(request: Request, resource: str) -> JSONResponse:
    """Query ``?fields=a,b`` of every object of ``resource``."""
    return ok(
        await run_query(request, resource, _split_fields(text_param(request, "fields")), None)
    )


@router.put("/2/query/{resource}", dependencies=[WRITE])
async def query_put(request: Request, resource: str) -> JSONResponse:
    """Query with a body ``{"fields": [...], "qfilter": ...}``."""
    body = await dict_body(request)
    fields = body.get("fields")
    if fields is None:
        fields = _split_fields(text_param(request, "fields"))
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise HttpError(400, "'fields' must be a list of strings")
    key = "id" if resource == "job" else "name"
    names = filter_names(body.get("qfilter", body.get("filter")), key)
    return ok(await run_query(request, resource, fields, names))


@router.get("/2/query/{resource}/fields", dependencies=[WRITE])
async def query_fields(request: Request, resource: str) -> JSONResponse:
    """Field definitions of ``resource`` (all, or ``?fields=a,b``)."""
    lookup, all_names = _lookup(resource)
    raw = text_param(request, "fields")
    names = _split_fields(raw) if raw is not None else all_names
    defs = [lookup(n) for n in names]
    return ok({"fields": field_dicts(names, defs)})

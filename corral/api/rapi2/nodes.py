"""RAPI v2 node resources: ``/2/nodes``, ``/2/nodes/[n]``, ``/2/nodes/[n]/role``, tags."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.api.fields import N_FIELDS, plain
from corral.api.rapi2.common import READ, flag, ok, service_of, uri_list
from corral.api.rapi2.queries import node_query

router = APIRouter()


def _dicts(fields: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    return [{f: plain(v) for f, v in zip(fields, row, strict=True)} for row in rows]


@router.get("/2/nodes", dependencies=[READ])
async def list_nodes(request: Request) -> JSONResponse:
    """All nodes: ``[{"id", "uri"}]``, or with ``bulk=1`` a dict per node."""
    service = service_of(request)
    if flag(request, "bulk"):
        _defs, rows = await node_query(service, N_FIELDS)
        return ok(_dicts(N_FIELDS, rows))
    return ok(uri_list([n.name for n in service.nodes()], "/2/nodes/%s"))


@router.get("/2/nodes/{name}", dependencies=[READ])
async def get_node(request: Request, name: str) -> JSONResponse:
    """One node's fields (404 if unknown)."""
    _defs, rows = await node_query(service_of(request), N_FIELDS, [name])
    return ok(_dicts(N_FIELDS, rows)[0])


@router.get("/2/nodes/{name}/role", dependencies=[READ])
async def get_role(request: Request, name: str) -> JSONResponse:
    """The node's role as a bare string (``master``, ``master-candidate``, ...)."""
    service = service_of(request)
    node = service.node(name)
    return ok(node.role(service.cluster().master_node).value)


@router.get("/2/nodes/{name}/tags", dependencies=[READ])
async def get_tags(request: Request, name: str) -> JSONResponse:
    """The node's tags."""
    return ok(list(service_of(request).node(name).tags))

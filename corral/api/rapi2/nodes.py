"""RAPI v2 node resources: ``/2/nodes``, ``/2/nodes/[n]``, ``/2/nodes/[n]/role``, tags.

``/2/nodes/[n]/role`` is GET and PUT, ``/2/nodes/[n]/modify`` and ``/2/nodes/[n]/powercycle``
POST; the group resources
(``rapi2/groups.py``) are included in this router.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.api.errors import HttpError
from corral.api.fields import N_FIELDS, plain
from corral.api.rapi2 import groups
from corral.api.rapi2.common import (
    READ,
    WRITE,
    build_op,
    common_static,
    dict_body,
    flag,
    json_body,
    ok,
    service_of,
    submit,
    uri_list,
)
from corral.api.rapi2.queries import node_query

router = APIRouter()
router.include_router(groups.router)

#: ``PUT /2/nodes/[n]/role`` body -> OP_NODE_SET_PARAMS flags (Ganeti's rlib2 mapping).
ROLE_FLAGS: dict[str, dict[str, bool]] = {
    "master-candidate": {"master_candidate": True, "offline": False, "drained": False},
    "regular": {"master_candidate": False, "offline": False, "drained": False},
    "drained": {"drained": True},
    "offline": {"offline": True},
}


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


@router.put("/2/nodes/{name}/role", dependencies=[WRITE])
async def set_role(request: Request, name: str) -> JSONResponse:
    """Change the node's role (body: the role as a JSON string); the job id.

    Raises:
        HttpError: 400 for ``master`` (use master-failover) or an unknown role.
    """
    role = await json_body(request)
    if role == "master":
        raise HttpError(400, "the master role cannot be set; use cluster master-failover")
    if not isinstance(role, str) or role not in ROLE_FLAGS:
        raise HttpError(400, f"unknown node role {role!r} (known: {', '.join(ROLE_FLAGS)})")
    static: dict[str, Any] = {
        "node_name": name,
        "force": flag(request, "force"),
        "auto_promote": flag(request, "auto-promote"),
        **ROLE_FLAGS[role],
        **common_static(request, f"nodes/{name}/role"),
    }
    return ok(await submit(request, [build_op("OP_NODE_SET_PARAMS", None, static)]))


@router.post("/2/nodes/{name}/modify", dependencies=[WRITE])
async def modify_node(request: Request, name: str) -> JSONResponse:
    """Change node parameters (body: OP_NODE_SET_PARAMS fields); the job id."""
    body = await dict_body(request)
    static = {"node_name": name, **common_static(request, f"nodes/{name}/modify")}
    return ok(await submit(request, [build_op("OP_NODE_SET_PARAMS", body, static)]))


@router.post("/2/nodes/{name}/powercycle", dependencies=[WRITE])
async def powercycle_node(request: Request, name: str) -> JSONResponse:
    """Hard-reset the node (``?force=1`` for the master); the job id of OP_NODE_POWERCYCLE."""
    static = {
        "node_name": name,
        "force": flag(request, "force"),
        **common_static(request, f"nodes/{name}/powercycle"),
    }
    return ok(await submit(request, [build_op("OP_NODE_POWERCYCLE", None, static)]))

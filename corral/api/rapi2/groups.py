"""RAPI v2 node group resources (Ganeti's ``/2/groups``).

::

    GET    /2/groups[?bulk=1]          names and URIs, or a dict per group
    POST   /2/groups                   OP_GROUP_ADD (body: group_name | name, alloc_policy, ...)
    GET    /2/groups/[g]               one group
    DELETE /2/groups/[g]               OP_GROUP_REMOVE
    PUT    /2/groups/[g]/modify        OP_GROUP_SET_PARAMS
    PUT    /2/groups/[g]/rename        OP_GROUP_RENAME (body: new_name)
    PUT    /2/groups/[g]/assign-nodes  OP_GROUP_ASSIGN_NODES (body: nodes, force)

Mutations answer with the job id. The router is included by ``rapi2/nodes.py``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.api.errors import HttpError
from corral.api.rapi2.common import (
    READ,
    WRITE,
    build_op,
    common_static,
    dict_body,
    flag,
    ok,
    service_of,
    submit,
    uri_list,
)
from corral.master.config import ClusterConfig
from corral.master.ops.groups import get_group, groups
from corral.objects.group import Group

router = APIRouter()


def _config(request: Request) -> ClusterConfig:
    config = getattr(service_of(request), "config", None)
    if not isinstance(config, ClusterConfig):
        raise HttpError(501, "this master service does not expose node groups")
    return config


def group_dict(group: Group, config: ClusterConfig) -> dict[str, Any]:
    """Ganeti's group fields for one group."""
    nodes = [n.name for n in config.nodes() if n.group == group.name]
    pinst = [i.name for i in config.instances() if i.primary_node in nodes]
    return {
        "name": group.name,
        "uuid": group.uuid,
        "alloc_policy": group.alloc_policy,
        "node_cnt": len(nodes),
        "node_list": nodes,
        "pinst_cnt": len(pinst),
        "pinst_list": pinst,
        "ndparams": group.ndparams,
        "diskparams": group.diskparams,
        "ipolicy": group.ipolicy,
        "serial_no": group.serial_no,
        "ctime": group.ctime,
        "mtime": group.mtime,
        "tags": list(group.tags),
    }


@router.get("/2/groups", dependencies=[READ])
async def list_groups(request: Request) -> JSONResponse:
    """All groups: ``[{"name", "uri"}]``, or with ``bulk=1`` a dict per group."""
    config = _config(request)
    found = groups(config)
    if flag(request, "bulk"):
        return ok([group_dict(g, config) for g in found])
    return ok(
        [
            {"name": d["id"], "uri": d["uri"]}
            for d in uri_list([g.name for g in found], "/2/groups/%s")
        ]
    )


@router.post("/2/groups", dependencies=[WRITE])
async def add_group(request: Request) -> JSONResponse:
    """Create a group (``name`` is accepted for ``group_name``, as Ganeti)."""
    body = await dict_body(request)
    op = build_op(
        "OP_GROUP_ADD", body, common_static(request, "groups"), rename={"name": "group_name"}
    )
    return ok(await submit(request, [op]))


@router.get("/2/groups/{name}", dependencies=[READ])
async def get_group_resource(request: Request, name: str) -> JSONResponse:
    """One group (404 if unknown)."""
    config = _config(request)
    return ok(group_dict(get_group(config, name), config))


@router.delete("/2/groups/{name}", dependencies=[WRITE])
async def remove_group(request: Request, name: str) -> JSONResponse:
    """Remove an empty group."""
    static = {"group_name": name, **common_static(request, f"groups/{name}")}
    return ok(await submit(request, [build_op("OP_GROUP_REMOVE", None, static)]))


@router.put("/2/groups/{name}/modify", dependencies=[WRITE])
async def modify_group(request: Request, name: str) -> JSONResponse:
    """Change a group's allocation policy and parameters."""
    body = await dict_body(request)
    static = {"group_name": name, **common_static(request, f"groups/{name}/modify")}
    return ok(await submit(request, [build_op("OP_GROUP_SET_PARAMS", body, static)]))


@router.put("/2/groups/{name}/rename", dependencies=[WRITE])
async def rename_group(request: Request, name: str) -> JSONResponse:
    """Rename a group (body: ``new_name``)."""
    body = await dict_body(request)
    static = {"group_name": name, **common_static(request, f"groups/{name}/rename")}
    return ok(await submit(request, [build_op("OP_GROUP_RENAME", body, static)]))


@router.put("/2/groups/{name}/assign-nodes", dependencies=[WRITE])
async def assign_nodes(request: Request, name: str) -> JSONResponse:
    """Move nodes into the group (body: ``nodes``, optional ``force``)."""
    body = await dict_body(request)
    static = {"group_name": name, **common_static(request, f"groups/{name}/assign-nodes")}
    if "force" not in body:
        static["force"] = flag(request, "force")
    return ok(await submit(request, [build_op("OP_GROUP_ASSIGN_NODES", body, static)]))

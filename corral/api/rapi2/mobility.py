"""RAPI v2 mobility resources: instance migrate/failover/move, node evacuate/migrate.

Ganeti's routes and bodies (``rlib2``): ``PUT /2/instances/<name>/migrate`` (``mode``,
``cleanup``, ``target_node``, ``allow_failover``, ...), ``PUT /2/instances/<name>/failover``
(``ignore_consistency``, ``target_node``, ``shutdown_timeout``), ``PUT
/2/instances/<name>/move`` (``target_node`` required), ``POST /2/nodes/<name>/evacuate``
(``remote_node``, ``mode``, ...; Ganeti 2.5's ``?remote_node=`` query parameter too) and
``POST /2/nodes/<name>/migrate`` (``mode``, ``target_node``; the old ``?live=``/``?mode=``
query parameters too). Each answers the job id.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.api.rapi2.common import (
    WRITE,
    build_op,
    common_static,
    dict_body,
    flag,
    ok,
    submit,
    submit_body_op,
    text_param,
)

router = APIRouter()


@router.put("/2/instances/{name}/migrate", dependencies=[WRITE])
async def migrate_instance(request: Request, name: str) -> JSONResponse:
    """Migrate an instance (``cleanup`` repairs a failed migration)."""
    return await submit_body_op(
        request, "OP_INSTANCE_MIGRATE", "instances_name_migrate", {"instance_name": name}
    )


@router.put("/2/instances/{name}/failover", dependencies=[WRITE])
async def failover_instance(request: Request, name: str) -> JSONResponse:
    """Fail an instance over to another node."""
    return await submit_body_op(
        request, "OP_INSTANCE_FAILOVER", "instances_name_failover", {"instance_name": name}
    )


@router.put("/2/instances/{name}/move", dependencies=[WRITE])
async def move_instance(request: Request, name: str) -> JSONResponse:
    """Copy an instance to another node (body: ``target_node``)."""
    return await submit_body_op(
        request, "OP_INSTANCE_MOVE", "instances_name_move", {"instance_name": name}
    )


@router.post("/2/nodes/{name}/evacuate", dependencies=[WRITE])
async def evacuate_node(request: Request, name: str) -> JSONResponse:
    """Move the primary instances off a node."""
    static: dict[str, Any] = common_static(request, "nodes_name_evacuate") | {"node_name": name}
    remote = text_param(request, "remote_node")
    if remote:
        static["remote_node"] = remote
    op = build_op("OP_NODE_EVACUATE", await dict_body(request), static)
    return ok(await submit(request, [op]))


@router.post("/2/nodes/{name}/migrate", dependencies=[WRITE])
async def migrate_node(request: Request, name: str) -> JSONResponse:
    """Migrate every primary instance of a node."""
    static: dict[str, Any] = common_static(request, "nodes_name_migrate") | {"node_name": name}
    mode = text_param(request, "mode")
    if mode:
        static["mode"] = mode
    if request.query_params.get("live") is not None:
        static["live"] = flag(request, "live")
    op = build_op("OP_NODE_MIGRATE", await dict_body(request), static)
    return ok(await submit(request, [op]))

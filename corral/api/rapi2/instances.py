"""RAPI v2 instance resources (``/2/instances...``), as Ganeti's ``rlib2`` answers them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.api.errors import HttpError
from corral.api.fields import I_FIELDS, plain
from corral.api.rapi2.common import (
    READ,
    WRITE,
    build_op,
    common_static,
    dict_body,
    flag,
    ok,
    run_job,
    service_of,
    submit,
    submit_body_op,
    text_param,
    uri_list,
)
from corral.api.rapi2.queries import instance_query
from corral.objects.opcodes import OpCode

router = APIRouter()

#: Request data version field of ``POST /2/instances``.
REQ_DATA_VERSION = "__version__"


def _dicts(fields: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    return [{f: plain(v) for f, v in zip(fields, row, strict=True)} for row in rows]


@router.get("/2/instances", dependencies=[READ])
async def list_instances(request: Request) -> JSONResponse:
    """All instances: ``[{"id", "uri"}]``, or with ``bulk=1`` a dict per instance."""
    service = service_of(request)
    if flag(request, "bulk"):
        _defs, rows = await instance_query(service, I_FIELDS)
        return ok(_dicts(I_FIELDS, rows))
    return ok(uri_list([i.name for i in service.instances()], "/2/instances/%s"))


@router.post("/2/instances", dependencies=[WRITE])
async def create_instance(request: Request) -> JSONResponse:
    """Create an instance (body version 1 only; version 0 is refused as by Ganeti)."""
    body = await dict_body(request)
    version = body.pop(REQ_DATA_VERSION, 0)
    if version == 0:
        raise HttpError(400, "instance creation request version 0 is no longer supported")
    if version != 1:
        raise HttpError(400, f"unsupported request data version {version!r}")
    op = build_op(
        "OP_INSTANCE_CREATE",
        body,
        common_static(request, "instances"),
        rename={"os": "os_type", "name": "instance_name"},
    )
    return ok(await submit(request, [op]))


@router.get("/2/instances/{name}", dependencies=[READ])
async def get_instance(request: Request, name: str) -> JSONResponse:
    """One instance's fields (404 if unknown)."""
    _defs, rows = await instance_query(service_of(request), I_FIELDS, [name])
    return ok(_dicts(I_FIELDS, rows)[0])


@router.delete("/2/instances/{name}", dependencies=[WRITE])
async def delete_instance(request: Request, name: str) -> JSONResponse:
    """Remove an instance; returns the job id."""
    static = common_static(request, "instances_name") | {"instance_name": name}
    op = build_op("OP_INSTANCE_REMOVE", await dict_body(request), static)
    return ok(await submit(request, [op]))


@router.get("/2/instances/{name}/info", dependencies=[READ])
async def instance_info(request: Request, name: str) -> JSONResponse:
    """Submit a detailed-info job (``?static=0|1``); returns the job id."""
    static = common_static(request, "instances_name_info", dry_run=False) | {
        "instances": [name],
        "static": flag(request, "static"),
    }
    return ok(await submit(request, [build_op("OP_INSTANCE_QUERY_DATA", {}, static)]))


@router.post("/2/instances/{name}/reboot", dependencies=[WRITE])
async def reboot_instance(request: Request, name: str) -> JSONResponse:
    """Reboot (``?type=soft|hard|full``, default hard; ``ignore_secondaries``)."""
    static = common_static(request, "instances_name_reboot") | {
        "instance_name": name,
        "reboot_type": text_param(request, "type", "hard"),
        "ignore_secondaries": flag(request, "ignore_secondaries"),
    }
    op = build_op("OP_INSTANCE_REBOOT", await dict_body(request), static)
    return ok(await submit(request, [op]))


@router.put("/2/instances/{name}/startup", dependencies=[WRITE])
async def startup_instance(request: Request, name: str) -> JSONResponse:
    """Start an instance (``force``, ``no_remember``)."""
    static = common_static(request, "instances_name_startup") | {
        "instance_name": name,
        "force": flag(request, "force"),
        "no_remember": flag(request, "no_remember"),
    }
    op = build_op("OP_INSTANCE_STARTUP", await dict_body(request), static)
    return ok(await submit(request, [op]))


@router.put("/2/instances/{name}/shutdown", dependencies=[WRITE])
async def shutdown_instance(request: Request, name: str) -> JSONResponse:
    """Stop an instance (``no_remember``; body may carry ``timeout``)."""
    static = common_static(request, "instances_name_shutdown") | {
        "instance_name": name,
        "no_remember": flag(request, "no_remember"),
    }
    op = build_op("OP_INSTANCE_SHUTDOWN", await dict_body(request), static)
    return ok(await submit(request, [op]))


# --- Corral extensions: pause, resume, suspend, unsuspend ------------------------------------

_POWER_OPS = {
    "pause": "OP_INSTANCE_PAUSE",
    "resume": "OP_INSTANCE_RESUME",
    "suspend": "OP_INSTANCE_SUSPEND",
    "unsuspend": "OP_INSTANCE_UNSUSPEND",
}


async def _power(request: Request, name: str, action: str) -> JSONResponse:
    static = common_static(request, f"instances_name_{action}") | {"instance_name": name}
    op = build_op(_POWER_OPS[action], await dict_body(request), static)
    return ok(await submit(request, [op]))


@router.put("/2/instances/{name}/pause", dependencies=[WRITE])
async def pause_instance(request: Request, name: str) -> JSONResponse:
    """Corral extension: pause a running instance (its vCPUs stop; job id)."""
    return await _power(request, name, "pause")


@router.put("/2/instances/{name}/resume", dependencies=[WRITE])
async def resume_instance(request: Request, name: str) -> JSONResponse:
    """Corral extension: resume a paused instance (job id)."""
    return await _power(request, name, "resume")


@router.put("/2/instances/{name}/suspend", dependencies=[WRITE])
async def suspend_instance(request: Request, name: str) -> JSONResponse:
    """Corral extension: save a running instance to disk and stop it (job id)."""
    return await _power(request, name, "suspend")


@router.put("/2/instances/{name}/unsuspend", dependencies=[WRITE])
async def unsuspend_instance(request: Request, name: str) -> JSONResponse:
    """Corral extension: restore a suspended instance (job id)."""
    return await _power(request, name, "unsuspend")


@router.put("/2/instances/{name}/modify", dependencies=[WRITE])
async def modify_instance(request: Request, name: str) -> JSONResponse:
    """Change parameters and devices.

    Body: ``beparams``, ``hvparams``, ``osparams``, ``runtime_mem``, ``os_name``, and Ganeti's
    ``disks``/``nics`` modifications (``[[action, index_or_name, params], ...]``) with
    ``hotplug``/``hotplug_if_possible`` (master/ops/instance_devices.py).
    """
    return await submit_body_op(
        request, "OP_INSTANCE_SET_PARAMS", "instances_name_modify", {"instance_name": name}
    )


@router.put("/2/instances/{name}/rename", dependencies=[WRITE])
async def rename_instance(request: Request, name: str) -> JSONResponse:
    """Rename (body: ``new_name``, ``ip_check``, ``name_check``)."""
    return await submit_body_op(
        request, "OP_INSTANCE_RENAME", "instances_name_rename", {"instance_name": name}
    )


@router.post("/2/instances/{name}/reinstall", dependencies=[WRITE])
async def reinstall_instance(request: Request, name: str) -> JSONResponse:
    """Reinstall: shutdown, reinstall, then start unless ``start`` is false.

    Body (version 1): ``{"os", "start", "osparams"}``; legacy query form: ``?os=&nostartup=1``.
    """
    body = await dict_body(request)
    legacy = {k for k in request.query_params if k in ("os", "nostartup")}
    if body and legacy:
        raise HttpError(400, "can't combine query and body parameters")
    if not body and legacy:
        body = {"os": text_param(request, "os"), "start": not flag(request, "nostartup")}
    unknown = sorted(set(body) - {"os", "start", "osparams"})
    if unknown:
        raise HttpError(400, f"unknown reinstall parameter(s) {unknown}: use os, start, osparams")
    start = body.get("start", True)
    if not isinstance(start, bool):
        raise HttpError(400, "'start' parameter: type is not 'bool'")
    static = common_static(request, "instances_name_reinstall")
    reinstall: dict[str, Any] = {}
    if body.get("os") is not None:
        reinstall["os_type"] = body["os"]
    if body.get("osparams") is not None:
        reinstall["osparams"] = body["osparams"]
    ops: list[OpCode] = [
        build_op("OP_INSTANCE_SHUTDOWN", {}, static | {"instance_name": name}),
        build_op("OP_INSTANCE_REINSTALL", reinstall, static | {"instance_name": name}),
    ]
    if start:
        ops.append(build_op("OP_INSTANCE_STARTUP", {}, static | {"instance_name": name}))
    return ok(await submit(request, ops))


@router.get("/2/instances/{name}/console", dependencies=[WRITE])
async def instance_console(request: Request, name: str) -> JSONResponse:
    """How to reach the instance's console (the console dict, not a job id)."""
    static = common_static(request, "instances_name_console", dry_run=False)
    op = build_op("OP_INSTANCE_CONSOLE", {}, static | {"instance_name": name})
    console = await run_job(request, [op], timeout=60.0)
    if not isinstance(console, dict):
        raise HttpError(503, "instance console unavailable")
    return ok(console)


@router.post("/2/instances/{name}/disk/{index}/grow", dependencies=[WRITE])
async def grow_disk(request: Request, name: str, index: str) -> JSONResponse:
    """Grow one disk (body: ``amount`` in MiB, ``absolute``, ``wait_for_sync``)."""
    try:
        disk = int(index)
    except ValueError:
        raise HttpError(400, f"invalid disk index {index!r}: expected a number") from None
    static = common_static(request, "instances_name_disk_grow") | {
        "instance_name": name,
        "disk": disk,
    }
    op = build_op("OP_INSTANCE_GROW_DISK", await dict_body(request), static)
    return ok(await submit(request, [op]))


@router.get("/2/instances/{name}/tags", dependencies=[READ])
async def get_tags(request: Request, name: str) -> JSONResponse:
    """The instance's tags."""
    return ok(list(service_of(request).instance(name).tags))


@router.put("/2/instances/{name}/tags", dependencies=[WRITE])
async def add_tags(request: Request, name: str) -> JSONResponse:
    """Add the tags given as ``?tag=a&tag=b``; returns the job id."""
    return ok(await submit(request, [_tags_op(request, name, "OP_TAGS_SET")]))


@router.delete("/2/instances/{name}/tags", dependencies=[WRITE])
async def delete_tags(request: Request, name: str) -> JSONResponse:
    """Remove the tags given as ``?tag=a&tag=b``; returns the job id."""
    return ok(await submit(request, [_tags_op(request, name, "OP_TAGS_DEL")]))


def _tags_op(request: Request, name: str, op_id: str) -> OpCode:
    static = common_static(request, "instances_name_tags") | {
        "kind": "instance",
        "name": name,
        "tags": request.query_params.getlist("tag"),
    }
    return build_op(op_id, {}, static)

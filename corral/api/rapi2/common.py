"""Helpers shared by the RAPI v2 resources: auth dependencies, query parameters, bodies, jobs.

Rules kept from Ganeti's ``baserlib``/``rlib2``:

* boolean query parameters (``bulk``, ``dry-run``, ``force``, ...) are ``0`` or ``1``;
  anything else is ``400``;
* a request body must be JSON with ``Content-Type: application/json`` (else ``415``) and
  must parse (else ``400``); an empty body means "no body";
* opcodes are filled from the body plus *static* values from the URL and query; a body key
  that would overwrite a static value is ``400``;
* ``?reason=`` is added to the opcode's reason trail together with the resource's own entry;
* mutations answer with the job id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from corral.api.auth import Access, Authenticator
from corral.api.errors import HttpError
from corral.api.protocol import MasterServiceApi
from corral.common.errors import (
    JobError,
    ParamError,
    error_from_result,
)
from corral.objects.job import JobStatus, OpStatus
from corral.objects.opcodes import OpCode, opcode_from_dict

#: Ganeti's reason-trail sources (constants.OPCODE_REASON_SRC_*).
REASON_SRC_USER = "gnt:user"
REASON_SRC_RLIB2 = "gnt:library:rlib2"

#: How long ``/2/jobs/[id]/wait`` waits for a change (Ganeti's ``_WFJC_TIMEOUT``).
WAIT_TIMEOUT = 10.0


def service_of(request: Request) -> MasterServiceApi:
    """The master service the app was created with."""
    service: MasterServiceApi = request.app.state.service
    return service


def _access_dependency(level: Access) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        auth: Authenticator = request.app.state.authenticator
        auth.check(request.scope, request.headers.get("authorization"), level)

    return check


#: Route dependencies: ``dependencies=[READ]`` for plain GETs, ``[WRITE]`` for the rest.
READ = Depends(_access_dependency(Access.NONE))
WRITE = Depends(_access_dependency(Access.WRITE))


# --- query parameters --------------------------------------------------------------------------


def flag(request: Request, name: str, default: bool = False) -> bool:
    """A boolean query parameter (``0`` or ``1``).

    Raises:
        HttpError: 400 when the value is anything else.
    """
    values = request.query_params.getlist(name)
    if not values:
        return default
    raw = values[0].strip()
    if raw == "":
        return default
    if raw not in ("0", "1"):
        raise HttpError(400, f"invalid value for the '{name}' parameter: {raw!r} (expected 0 or 1)")
    return raw == "1"


def text_param(request: Request, name: str, default: str | None = None) -> str | None:
    """A string query parameter (the first if repeated)."""
    values = request.query_params.getlist(name)
    return values[0] if values else default


def reason_trail(request: Request, resource: str) -> list[list[Any]]:
    """The opcode reason trail for this request (user's ``?reason=`` first, then ours)."""
    now = time.time_ns()
    trail: list[list[Any]] = []
    user_reason = text_param(request, "reason")
    if user_reason:
        trail.append([REASON_SRC_USER, user_reason, now])
    trail.append([f"{REASON_SRC_RLIB2}:{resource}", "", now])
    return trail


# --- bodies ------------------------------------------------------------------------------------


async def json_body(request: Request) -> Any:
    """The request's JSON body, or :data:`None` when there is none.

    Raises:
        HttpError: 415 when a body comes without ``Content-Type: application/json``, 400 when
            it is not valid JSON.
    """
    raw = await request.body()
    if not raw.strip():
        return None
    ctype = request.headers.get("content-type", "application/octet-stream")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise HttpError(415, f"request bodies must be application/json, not {ctype!r}")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"unable to parse JSON data: {exc}") from exc


async def dict_body(request: Request) -> dict[str, Any]:
    """The JSON body as a dict (``{}`` when empty).

    Raises:
        HttpError: as :func:`json_body`, or 400 when the body is not a JSON object.
    """
    body = await json_body(request)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise HttpError(
            400, f"body contents: type is '{type(body).__name__}', but 'dict' is expected"
        )
    return body


# --- opcodes and jobs --------------------------------------------------------------------------


def build_op(
    op_id: str,
    body: Mapping[str, Any] | None,
    static: Mapping[str, Any],
    *,
    rename: Mapping[str, str] | None = None,
) -> OpCode:
    """Fill an opcode from a body and static values (Ganeti ``FillOpcode``).

    Raises:
        HttpError: 400 when a renamed key is given under both names, or when the body tries
            to overwrite a static value.
        ParamError: unknown fields or wrong types (answered with 400, naming the field).
    """
    params = dict(body or {})
    for old, new in (rename or {}).items():
        if old in params and new in params:
            raise HttpError(
                400, f"parameter '{old}' was renamed to '{new}', but both are specified"
            )
        if old in params:
            params[new] = params.pop(old)
    overwritten = sorted(set(params) & set(static))
    if overwritten:
        raise HttpError(400, f"can't overwrite static parameters {overwritten}")
    params.update(static)
    params["OP_ID"] = op_id
    return opcode_from_dict(params)


def common_static(request: Request, resource: str, *, dry_run: bool = True) -> dict[str, Any]:
    """Static opcode values every mutation gets: reason trail and (optionally) dry-run."""
    static: dict[str, Any] = {"reason": reason_trail(request, resource)}
    if dry_run:
        static["dry_run"] = flag(request, "dry-run")
    return static


async def submit(request: Request, ops: list[OpCode]) -> int:
    """Submit a job and return its id.

    Raises:
        CorralError: whatever the master refuses the job with (mapped to HTTP by the app).
    """
    return await service_of(request).submit_job(ops)


def ok(value: Any) -> JSONResponse:
    """A 200 answer with ``value`` as JSON (no response-model validation: lists can be big)."""
    return JSONResponse(value)


def uri_list(ids: list[Any], fmt: str) -> list[dict[str, Any]]:
    """Ganeti's non-bulk list: ``[{"id": ..., "uri": ...}]`` sorted by id."""
    return [{"id": i, "uri": fmt % (i,)} for i in sorted(ids)]


def parse_job_id(raw: str) -> int:
    """A job id from the URL.

    Raises:
        HttpError: 400 when it is not a non-negative integer.
    """
    try:
        job_id = int(raw)
    except ValueError:
        raise HttpError(400, f"invalid job id {raw!r}: expected a number") from None
    if job_id < 0:
        raise HttpError(400, f"invalid job id {raw!r}: expected a number")
    return job_id


def param_problem(field: str, reason: str) -> ParamError:
    """A one-field :class:`ParamError` (answered with 400)."""
    return ParamError({field: reason}, context="request")


async def run_job(request: Request, ops: list[OpCode], *, timeout: float = 120.0) -> Any:
    """Submit a job, wait until it ends and return the last opcode's result.

    Used where Ganeti's RAPI answers with data rather than a job id (the console).

    Raises:
        HttpError: 504 when the job does not finish within ``timeout`` seconds.
        CorralError: the master's refusal of the job, or the error the job failed with.
    """
    service = service_of(request)
    job_id = await service.submit_job(ops)
    deadline = time.monotonic() + timeout
    prev: list[Any] | None = None
    while True:
        job = service.get_job(job_id)
        if job.finalized:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HttpError(504, f"job {job_id} did not finish within {timeout:g}s")
        change = await service.wait_for_job_change(
            job_id, ["status"], prev, None, min(WAIT_TIMEOUT, remaining)
        )
        if change is not None:
            prev = change["job_info"]
    if job.status is JobStatus.SUCCESS:
        return job.ops[-1].result if job.ops else None
    for op in job.ops:
        if op.status is OpStatus.ERROR:
            raise error_from_result(op.result)
    raise JobError(f"job {job_id} ended with status {job.status.value}", job_id=job_id)


async def submit_body_op(
    request: Request, op_id: str, resource: str, static: Mapping[str, Any]
) -> JSONResponse:
    """Build ``op_id`` from the request's JSON body plus ``static`` values, submit it as a job.

    ``resource`` names the route in the reason trail (Ganeti's ``instances_name_migrate``...).
    Returns the job id response.

    Raises:
        ParamError: a bad body or field (naming it); nothing is submitted.
    """
    full = common_static(request, resource) | dict(static)
    op = build_op(op_id, await dict_body(request), full)
    return ok(await submit(request, [op]))

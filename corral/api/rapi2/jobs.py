"""RAPI v2 job resources: ``/2/jobs``, ``/2/jobs/[id]`` and the long poll ``/2/jobs/[id]/wait``.

``POST /2/jobs`` (a Corral extension, answered only on the master's local socket) submits a job
of raw opcodes, like Ganeti's luxi ``SubmitJob`` (``gnt-debug delay``/``submit-job``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.api.auth import Authenticator
from corral.api.errors import HttpError
from corral.api.fields import J_FIELDS, J_FIELDS_BULK
from corral.api.rapi2.common import (
    READ,
    WAIT_TIMEOUT,
    WRITE,
    flag,
    json_body,
    ok,
    parse_job_id,
    service_of,
    submit,
    uri_list,
)
from corral.objects.opcodes import opcode_from_dict

router = APIRouter()


@router.get("/2/jobs", dependencies=[READ])
async def list_jobs(request: Request) -> JSONResponse:
    """All jobs: ``[{"id", "uri"}]``, or with ``bulk=1`` the bulk job fields."""
    service = service_of(request)
    jobs = sorted(service.list_jobs(), key=lambda j: j.id)
    if flag(request, "bulk"):
        return ok(
            [
                dict(zip(J_FIELDS_BULK, service.job_fields(j, J_FIELDS_BULK), strict=True))
                for j in jobs
            ]
        )
    return ok(uri_list([j.id for j in jobs], "/2/jobs/%s"))


@router.post("/2/jobs", dependencies=[WRITE])
async def submit_job(request: Request) -> JSONResponse:
    """Submit a job of raw opcodes (body ``{"ops": [{"OP_ID": ..., ...}, ...]}``); the job id.

    Only on the trusted local socket, as Ganeti's luxi ``SubmitJob``: the RAPI over TCP has
    no raw-opcode resource, so there the answer is 403.

    Raises:
        HttpError: 403 over TCP; 400 when the body is not an object with a non-empty
            ``ops`` list of objects.
        ParamError: an unknown opcode or bad opcode fields (400, naming the field).
        CorralError: whatever the master refuses the job with.
    """
    auth: Authenticator = request.app.state.authenticator
    if not auth.trusted(request.scope):
        raise HttpError(403, "raw opcodes can only be submitted on the master's local socket")
    body = await json_body(request)
    ops = body.get("ops") if isinstance(body, dict) else None
    if not isinstance(ops, list) or not ops or not all(isinstance(op, dict) for op in ops):
        raise HttpError(400, "body contents: an object with a non-empty 'ops' list is required")
    return ok(await submit(request, [opcode_from_dict(op) for op in ops]))


@router.get("/2/jobs/{job_id}", dependencies=[READ])
async def get_job(request: Request, job_id: str) -> JSONResponse:
    """One job with its ops, statuses, results and log (404 if unknown)."""
    service = service_of(request)
    job = service.get_job(parse_job_id(job_id))
    return ok(dict(zip(J_FIELDS, service.job_fields(job, J_FIELDS), strict=True)))


@router.delete("/2/jobs/{job_id}", dependencies=[WRITE])
async def cancel_job(request: Request, job_id: str) -> JSONResponse:
    """Cancel a job that has not started running: ``[success, message]``."""
    success, message = await service_of(request).cancel_job(parse_job_id(job_id))
    return ok([success, message])


@router.get("/2/jobs/{job_id}/wait", dependencies=[WRITE])
async def wait_for_change(request: Request, job_id: str) -> JSONResponse:
    """Long-poll a job (body: ``fields``, ``previous_job_info``, ``previous_log_serial``).

    Answers ``null`` when nothing changed within the server's timeout (10 s, as Ganeti),
    else ``{"job_info": [...], "log_entries": [[serial, [sec, usec], type, msg], ...]}``.
    """
    jid = parse_job_id(job_id)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise HttpError(400, "body contents: a JSON object with 'fields' is required")
    if "fields" not in body:
        raise HttpError(400, "required parameter 'fields' is missing")
    fields = body["fields"]
    prev_info = body.get("previous_job_info")
    prev_serial = body.get("previous_log_serial")
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise HttpError(400, "the 'fields' parameter should be a list of strings")
    if prev_info is not None and not isinstance(prev_info, list):
        raise HttpError(400, "the 'previous_job_info' parameter should be a list")
    if prev_serial is not None and (
        isinstance(prev_serial, bool) or not isinstance(prev_serial, int)
    ):
        raise HttpError(400, "the 'previous_log_serial' parameter should be a number")
    service = service_of(request)
    service.get_job(jid)  # 404 for an unknown job before waiting
    result = await service.wait_for_job_change(jid, fields, prev_info, prev_serial, WAIT_TIMEOUT)
    if result is None:
        return ok(None)
    return ok({"job_info": result["job_info"], "log_entries": result["log_entries"]})

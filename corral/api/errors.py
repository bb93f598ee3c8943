"""Errors at the HTTP boundary: ``ErrorKind`` -> status code, and Ganeti's error body.

Every non-200 answer of the API has Ganeti RAPI's body ``{"code", "message", "explain"}``:
``code`` is the HTTP status, ``message`` its reason phrase and ``explain`` the detail (what
Ganeti's client prints as ``"%(code)s %(message)s: %(explain)s"``). Corral adds three keys
that Ganeti clients ignore and Corral's own client uses to rebuild the error with its kind:
``kind`` (an :class:`~corral.common.errors.ErrorKind` value), ``type`` (the error class name)
and ``fields`` (the error's structured fields).

Mapping (one table, here only):

==================  ======  ==========================================================
kind                status  why
==================  ======  ==========================================================
INVALID             400     the request is wrong (Ganeti ``HttpBadRequest``)
NOT_FOUND           404     unknown instance/node/job
EXISTS              409     the name is taken
WRONG_STATE         409     the object is not in a state that allows the request
NOT_UNIQUE          409     a MAC/IP is already used
NO_RESOURCES        503     no space/memory for it now
TEMP_NO_RESOURCES   503     try again (queue full or drained, lock contention)
ENVIRONMENT         502     a node or tool failed (Ganeti uses 502 for "master unreachable")
FAULT               500     a bug
==================  ======  ==========================================================
"""

from __future__ import annotations

import http
import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.common.errors import HTTP_STATUS_KIND, CorralError, ErrorKind, _jsonable

log = logging.getLogger(__name__)

#: HTTP status for each error kind.
KIND_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.EXISTS: 409,
    ErrorKind.WRONG_STATE: 409,
    ErrorKind.NOT_UNIQUE: 409,
    ErrorKind.NO_RESOURCES: 503,
    ErrorKind.TEMP_NO_RESOURCES: 503,
    ErrorKind.ENVIRONMENT: 502,
    ErrorKind.FAULT: 500,
}

#: Error kind assumed for a bare HTTP status (API-level problems without a CorralError).
STATUS_KIND = HTTP_STATUS_KIND


class HttpError(Exception):
    """An API-level failure with an explicit status (bad query parameter, auth, ...).

    Args:
        status: the HTTP status code.
        explain: the detail shown to the caller.
        headers: extra response headers (``WWW-Authenticate`` for 401).
        kind: the error kind reported to Corral clients (default from the status).
    """

    def __init__(
        self,
        status: int,
        explain: str = "",
        *,
        headers: dict[str, str] | None = None,
        kind: ErrorKind | None = None,
    ) -> None:
        super().__init__(explain or reason_phrase(status))
        self.status = status
        self.explain = explain
        self.headers = headers or {}
        self.kind = kind or STATUS_KIND.get(status, ErrorKind.FAULT)


def reason_phrase(status: int) -> str:
    """The standard reason phrase of ``status`` (``"Bad Request"``), or ``"Error"``."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(
    status: int,
    explain: str,
    *,
    kind: ErrorKind,
    type_name: str = "HttpError",
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ganeti's error body plus Corral's ``kind``/``type``/``fields``."""
    return {
        "code": status,
        "message": reason_phrase(status),
        "explain": explain,
        "kind": kind.value,
        "type": type_name,
        "fields": _jsonable(fields or {}),
    }


def status_for(err: CorralError) -> int:
    """The HTTP status an error of this kind is answered with."""
    return KIND_STATUS.get(err.kind, 500)


def corral_error_response(err: CorralError) -> JSONResponse:
    """The response for a :class:`CorralError` raised by a handler or the master."""
    status = status_for(err)
    if status >= 500:
        log.error("request failed: %s", err)
    body = error_body(
        status, str(err), kind=err.kind, type_name=type(err).__name__, fields=err.fields
    )
    return JSONResponse(body, status_code=status)


def http_error_response(err: HttpError) -> JSONResponse:
    """The response for an :class:`HttpError`."""
    body = error_body(err.status, err.explain or reason_phrase(err.status), kind=err.kind)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


async def _corral_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CorralError)
    return corral_error_response(exc)


async def _http_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HttpError)
    return http_error_response(exc)


async def _starlette_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    explain = exc.detail if isinstance(exc.detail, str) else reason_phrase(exc.status_code)
    if exc.status_code == 404 and explain == "Not Found":
        explain = "no such resource"
    err = HttpError(exc.status_code, explain, headers=dict(exc.headers or {}))
    return http_error_response(err)


async def _validation_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in exc.errors()
    )
    return http_error_response(HttpError(400, problems or "invalid request"))


async def _unexpected_handler(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error while handling a request", exc_info=exc)
    body = error_body(500, f"internal error: {exc}", kind=ErrorKind.FAULT, type_name="Exception")
    return JSONResponse(body, status_code=500)


def install_handlers(app: Any) -> None:
    """Register the exception handlers that give every error Ganeti's body."""
    app.add_exception_handler(CorralError, _corral_handler)
    app.add_exception_handler(HttpError, _http_handler)
    app.add_exception_handler(StarletteHTTPException, _starlette_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(Exception, _unexpected_handler)

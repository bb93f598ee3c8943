"""The RPC wire format: JSON bodies in and out of ``POST /rpc/<call>``.

* Request body: the call's request model as a JSON object (``model_dump_json``).
* Answer body, always a JSON object::

      {"ok": true,  "result": <the call's response model>}
      {"ok": false, "error": {"type", "kind", "message", "fields"}}   # CorralError.to_wire()

Decoding is strict: unknown fields, wrong types and missing fields are refused. A request
that does not decode raises :class:`~corral.common.errors.ParamError` (kind INVALID) naming each
bad field (``instance.memory: Field required``); the server sends it back as a 400 answer. An
answer that does not decode raises :class:`~corral.common.errors.RpcError` (kind FAULT); a
well-formed error answer raises the node's error rebuilt by
:func:`~corral.common.errors.error_from_wire`. Nothing here does I/O.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from corral.common.errors import (
    CorralError,
    ErrorKind,
    ParamError,
    RpcError,
    error_from_wire,
)
from corral.objects.opcodes import validation_problems
from corral.rpc.calls import Call, Msg

Req = TypeVar("Req", bound=Msg)
Resp = TypeVar("Resp", bound=Msg)

#: Largest request or answer body accepted (bytes). Hook environments and instance specs are
#: small; this only stops a broken peer from exhausting memory.
MAX_BODY = 32 * 1024 * 1024


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _load_object(body: bytes, what: str) -> dict[str, Any]:
    """Parse ``body`` as one JSON object; ``ValueError`` says why it is not one."""
    if len(body) > MAX_BODY:
        raise ValueError(f"{what} is {len(body)} bytes, more than the limit of {MAX_BODY}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{what} is a JSON {type(data).__name__}, expected an object")
    return data


# --- requests ----------------------------------------------------------------------------------


def encode_request(call: Call[Req, Any], request: Req) -> bytes:
    """Serialise ``request`` for ``call``.

    Raises:
        RpcError: ``request`` is not an instance of the call's request model (kind FAULT: a
            programming error on the calling side).
    """
    if not isinstance(request, call.request):
        raise RpcError(
            f"call {call.name} takes a {call.request.__name__}, not a {type(request).__name__}",
            kind=ErrorKind.FAULT,
            call=call.name,
        )
    return request.model_dump_json().encode()


def decode_request(call: Call[Req, Any], body: bytes) -> Req:
    """Parse and validate the body of a ``call`` request.

    An empty body is read as ``{}`` (so calls without arguments may send nothing).

    Raises:
        ParamError: the body is not a JSON object or does not match the request model; the
            problems name each field (``body`` when the whole body is wrong). Kind INVALID.
    """
    context = f"request of call {call.name}"
    try:
        data = _load_object(body, "body") if body.strip() else {}
    except ValueError as exc:
        raise ParamError({"body": str(exc)}, context=context, call=call.name) from exc
    try:
        return call.request.model_validate(data)
    except ValidationError as exc:
        raise ParamError(validation_problems(exc), context=context, call=call.name) from exc


# --- answers -----------------------------------------------------------------------------------


def encode_result(call: Call[Any, Resp], result: BaseModel) -> bytes:
    """Serialise a successful answer ``{"ok": true, "result": ...}``.

    Raises:
        CorralError: ``result`` is not the call's response model (kind FAULT: a backend bug).
    """
    if not isinstance(result, call.response):
        raise CorralError(
            f"the backend answered call {call.name} with a {type(result).__name__}, "
            f"expected a {call.response.__name__}",
            kind=ErrorKind.FAULT,
            call=call.name,
        )
    return _dumps({"ok": True, "result": result.model_dump(mode="json")})


def encode_error(err: CorralError) -> bytes:
    """Serialise a failed answer ``{"ok": false, "error": err.to_wire()}``."""
    return _dumps({"ok": False, "error": err.to_wire()})


def decode_answer(call: Call[Any, Resp], body: bytes, *, peer: str = "node") -> Resp | CorralError:
    """Parse an answer to ``call``: the result, or the error it carries (returned, not raised).

    Args:
        call: the call that was made.
        body: the answer's body.
        peer: how to name the answering node in messages, e.g. ``node n1 (127.0.0.2:1811)``.

    Returns:
        The response model, or the node's own error rebuilt by ``error_from_wire`` (type from
        the allow-list, kind, message and fields).

    Raises:
        RpcError: the answer is not a valid envelope or its result does not match the
            response model (kind FAULT, fields ``call`` and ``problems``).
    """

    def invalid(problems: dict[str, str]) -> RpcError:
        text = "; ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
        return RpcError(
            f"{peer} sent an invalid answer to call {call.name}: {text}",
            kind=ErrorKind.FAULT,
            call=call.name,
            problems=problems,
        )

    try:
        data = _load_object(body, "answer")
    except ValueError as exc:
        raise invalid({"body": str(exc)}) from exc
    ok = data.get("ok")
    if ok is True:
        if "result" not in data:
            raise invalid({"result": "missing"})
        try:
            return call.response.model_validate(data["result"])
        except ValidationError as exc:
            problems = {f"result.{k}": v for k, v in validation_problems(exc).items()}
            raise invalid(problems) from exc
    if ok is False:
        error = data.get("error")
        if not isinstance(error, dict):
            raise invalid({"error": "missing or not an object"})
        return error_from_wire(error)
    raise invalid({"ok": "missing or not a boolean"})


def decode_response(call: Call[Any, Resp], body: bytes, *, peer: str = "node") -> Resp:
    """Like :func:`decode_answer`, but raise the node's error instead of returning it.

    Raises:
        CorralError: the node's own error, rebuilt.
        RpcError: the answer is not valid (kind FAULT).
    """
    answer = decode_answer(call, body, peer=peer)
    if isinstance(answer, CorralError):
        raise answer
    return answer

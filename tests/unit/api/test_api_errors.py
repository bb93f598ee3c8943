"""Error mapping at the HTTP boundary (pure functions; no fakes)."""

from __future__ import annotations

import json

import pytest

from corral.api.errors import (
    KIND_STATUS,
    HttpError,
    corral_error_response,
    error_body,
    http_error_response,
)
from corral.common.errors import CorralError, ErrorKind, JobError, ParamError


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (ErrorKind.INVALID, 400),
        (ErrorKind.NOT_FOUND, 404),
        (ErrorKind.EXISTS, 409),
        (ErrorKind.WRONG_STATE, 409),
        (ErrorKind.NOT_UNIQUE, 409),
        (ErrorKind.NO_RESOURCES, 503),
        (ErrorKind.TEMP_NO_RESOURCES, 503),
        (ErrorKind.ENVIRONMENT, 502),
        (ErrorKind.FAULT, 500),
    ],
)
def test_every_kind_has_a_status(kind, status):
    assert KIND_STATUS[kind] == status
    resp = corral_error_response(CorralError("boom", kind=kind))
    assert resp.status_code == status
    body = json.loads(resp.body)
    assert body["code"] == status and body["explain"] == "boom" and body["kind"] == kind.value


def test_all_kinds_mapped():
    assert set(KIND_STATUS) == set(ErrorKind)


def test_ganeti_body_shape_and_fields():
    err = ParamError({"beparams.memory": "not a size"}, context="instance")
    body = json.loads(corral_error_response(err).body)
    assert body["message"] == "Bad Request"
    assert body["explain"] == "invalid instance: beparams.memory: not a size"
    assert body["type"] == "ParamError"
    assert body["fields"]["problems"] == {"beparams.memory": "not a size"}
    # Ganeti's client prints "%(code)s %(message)s: %(explain)s"
    assert "{code} {message}: {explain}".format(**body).startswith("400 Bad Request: invalid")


def test_http_error_response_keeps_headers():
    resp = http_error_response(HttpError(401, "who are you", headers={"WWW-Authenticate": "x"}))
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "x"
    assert json.loads(resp.body)["message"] == "Unauthorized"


def test_error_body_unknown_status_phrase():
    assert error_body(599, "x", kind=ErrorKind.FAULT)["message"] == "Error"
    assert (
        json.loads(corral_error_response(JobError("gone", kind=ErrorKind.NOT_FOUND)).body)["type"]
        == "JobError"
    )

"""``POST /2/jobs``: raw opcodes on the trusted local socket only (Ganeti luxi ``SubmitJob``).

Real: the FastAPI app, auth (trusted transport vs TCP), body parsing, the opcode models and
error mapping. Fake: the in-memory master behind it (tests/fakes/master_service.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from corral.api.app import create_app
from corral.objects.opcodes import OpTestDelay
from tests.fakes.asgi import sync_client
from tests.fakes.master_service import FakeMaster
from tests.unit.api.conftest import ADMIN

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def local(master: FakeMaster, users_file: str) -> Iterator[httpx.Client]:
    """A client of an app that trusts its transport, as on the master's UNIX socket."""
    with sync_client(create_app(master, users_file=users_file, local_socket=True)) as c:
        yield c


def _post(client: httpx.Client, body: object, headers: dict[str, str] | None = None):
    return client.post("/2/jobs", content=json.dumps(body), headers={**JSON, **(headers or {})})


def test_local_socket_submits_raw_opcodes(local, master):
    resp = _post(local, {"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0}]})
    assert resp.status_code == 200, resp.text
    job_id = resp.json()
    assert isinstance(job_id, int)
    assert master.submitted[-1] == [OpTestDelay(duration=0)]
    assert local.get(f"/2/jobs/{job_id}").json()["ops"][0]["OP_ID"] == "OP_TEST_DELAY"


def test_tcp_is_refused_even_for_admin(client, master):
    resp = _post(client, {"ops": [{"OP_ID": "OP_TEST_DELAY"}]}, ADMIN)
    assert resp.status_code == 403, resp.text
    assert "local socket" in resp.json()["explain"]
    assert master.submitted == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "'ops'"),
        ({"ops": []}, "'ops'"),
        ({"ops": ["OP_TEST_DELAY"]}, "'ops'"),
        ({"ops": [{"OP_ID": "OP_NOPE"}]}, "OP_ID"),
        ({"ops": [{"OP_ID": "OP_TEST_DELAY", "frobnicate": 1}]}, "frobnicate"),
    ],
)
def test_bad_bodies_are_400_and_submit_nothing(local, master, body, needle):
    resp = _post(local, body)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["explain"]
    assert master.submitted == []

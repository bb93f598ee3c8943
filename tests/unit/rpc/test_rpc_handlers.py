"""The node daemon's call table (decode -> backend -> encode).

Uses the FAKE backend of ``rpc_fakes`` (the real NodeBackend is tested by its owner); the
last test checks the real one has a method for every call.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.common.errors import CorralError, ErrorKind, HypervisorError
from corral.common.paths import Paths
from corral.node.handlers import CallHandlers
from corral.rpc import calls, codec
from tests.unit.rpc.rpc_fakes import FakeBackend


@pytest.fixture
def handlers(tmp_path: Path) -> CallHandlers:
    return CallHandlers(FakeBackend(Paths(str(tmp_path)), "n1"))


def test_backend_missing_methods_is_refused_naming_them() -> None:
    class Partial:
        def version(self, req: calls.Empty) -> calls.VersionResponse:
            raise NotImplementedError

    with pytest.raises(CorralError) as err:
        CallHandlers(Partial())
    assert err.value.kind is ErrorKind.FAULT
    assert "instance_start" in err.value.fields["missing"]
    assert "version" not in err.value.fields["missing"]


def test_ok_call_answers_200(handlers: CallHandlers) -> None:
    reply = handlers.handle("version", b"")
    assert reply.status == 200 and reply.error is None
    assert codec.decode_response(calls.VERSION, reply.body).node_name == "n1"


def test_bad_body_answers_400_naming_the_field(handlers: CallHandlers) -> None:
    reply = handlers.handle("instance_info", b'{"name": "vm1"}')
    assert reply.status == 400
    err = codec.decode_answer(calls.INSTANCE_INFO, reply.body)
    assert isinstance(err, CorralError)
    assert err.kind is ErrorKind.INVALID
    assert "hypervisor" in err.fields["problems"]


def test_backend_error_answers_500_with_the_error(handlers: CallHandlers) -> None:
    body = b'{"name": "vm1", "hypervisor": "broken"}'
    reply = handlers.handle("instance_info", body)
    assert reply.status == 500 and not reply.unexpected
    err = codec.decode_answer(calls.INSTANCE_INFO, reply.body)
    assert isinstance(err, HypervisorError)
    assert err.fields["instance"] == "vm1"


def test_bug_in_backend_becomes_fault_without_traceback_on_the_wire(
    handlers: CallHandlers,
) -> None:
    reply = handlers.handle("instance_info", b'{"name": "vm1", "hypervisor": "crash"}')
    assert reply.status == 500 and reply.unexpected
    assert reply.error is not None
    assert isinstance(reply.error.__cause__, KeyError)  # kept for the node log
    wire = json.loads(reply.body)["error"]
    assert wire["kind"] == ErrorKind.FAULT.value
    assert "Traceback" not in wire["message"]


def test_wrong_response_type_is_a_fault(handlers: CallHandlers) -> None:
    reply = handlers.handle("instance_info", b'{"name": "vm1", "hypervisor": "wrongtype"}')
    assert reply.status == 500
    assert "expected a InstanceInfoResponse" in json.loads(reply.body)["error"]["message"]


def test_unknown_call_is_not_found(handlers: CallHandlers) -> None:
    assert handlers.get("nope") is None
    assert handlers.get("version") is calls.VERSION


def test_real_node_backend_has_every_call(tmp_path: Path) -> None:
    from corral.node.backend import NodeBackend

    CallHandlers(NodeBackend(Paths(str(tmp_path)), "n1"))

"""The RPC wire format: requests, answers, and errors rebuilt on the calling side."""

from __future__ import annotations

import json

import pytest

from corral.common.errors import (
    CorralError,
    ErrorKind,
    HypervisorError,
    ParamError,
    RpcError,
    StorageError,
)
from corral.hypervisor.base import InstanceSpec, NicSpec
from corral.rpc import calls, codec
from corral.storage.base import VolumeInfo, VolumeSpec


def _spec() -> InstanceSpec:
    return InstanceSpec(
        name="vm1",
        uuid="u-1",
        hypervisor="kvm",
        hvparams={"kernel_path": "/boot/vmlinuz", "acpi": True},
        memory=256,
        min_memory=128,
        vcpus=1,
        nics=[NicSpec(index=0, uuid="n-1", mac="aa:00:00:00:00:01", link="br0")],
    )


def _start_request() -> calls.InstanceStartRequest:
    return calls.InstanceStartRequest(
        instance=_spec(),
        disks=[
            calls.DiskRef(
                index=0,
                volume=VolumeSpec(dev_type="file", logical_id="/srv/vm1.disk0", size=1024),
            )
        ],
        paused=True,
        reason="test",
    )


def test_request_round_trip_keeps_nested_models() -> None:
    req = _start_request()
    body = codec.encode_request(calls.INSTANCE_START, req)
    assert json.loads(body)["instance"]["nics"][0]["mac"] == "aa:00:00:00:00:01"
    assert codec.decode_request(calls.INSTANCE_START, body) == req


def test_empty_body_means_no_arguments() -> None:
    assert codec.decode_request(calls.VERSION, b"") == calls.Empty()
    assert codec.decode_request(calls.NODE_INFO, b"  ") == calls.NodeInfoRequest()


def test_encode_request_of_wrong_model_is_a_fault() -> None:
    with pytest.raises(RpcError) as err:
        codec.encode_request(calls.INSTANCE_START, calls.Empty())  # type: ignore[misc]
    assert err.value.kind is ErrorKind.FAULT
    assert "InstanceStartRequest" in str(err.value)


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        (b"{not json", "body", "not valid JSON"),
        (b"[1, 2]", "body", "expected an object"),
        (b'{"hypervisors": ["kvm"], "colour": "red"}', "colour", "unknown field"),
        (b'{"hypervisors": "kvm"}', "hypervisors", "valid list"),
    ],
)
def test_bad_request_names_the_field(body: bytes, field: str, why: str) -> None:
    with pytest.raises(ParamError) as err:
        codec.decode_request(calls.INSTANCE_LIST, body)
    assert err.value.kind is ErrorKind.INVALID
    assert field in err.value.problems
    assert why in err.value.problems[field]
    assert "request of call instance_list" in str(err.value)


def test_missing_nested_field_is_named_with_its_path() -> None:
    data = json.loads(codec.encode_request(calls.INSTANCE_START, _start_request()))
    del data["instance"]["memory"]
    data["disks"][0]["volume"]["size"] = "big"
    with pytest.raises(ParamError) as err:
        codec.decode_request(calls.INSTANCE_START, json.dumps(data).encode())
    assert set(err.value.problems) == {"instance.memory", "disks.0.volume.size"}
    assert err.value.problems["instance.memory"] == "Field required"


def test_result_round_trip() -> None:
    resp = calls.BlockdevInfoResponse(
        info=VolumeInfo(logical_id="/srv/d", path="/srv/d", size=1024, format="qcow2")
    )
    body = codec.encode_result(calls.BLOCKDEV_FIND, resp)
    assert json.loads(body)["ok"] is True
    assert codec.decode_response(calls.BLOCKDEV_FIND, body) == resp
    assert codec.decode_answer(calls.BLOCKDEV_FIND, body) == resp


def test_encode_result_of_wrong_model_is_a_fault() -> None:
    with pytest.raises(CorralError) as err:
        codec.encode_result(calls.NODE_INFO, calls.Empty())
    assert err.value.kind is ErrorKind.FAULT


def test_registered_error_is_rebuilt_with_type_kind_and_fields() -> None:
    sent = StorageError(
        "no space left for /srv/d", kind=ErrorKind.NO_RESOURCES, path="/srv/d", free=3
    )
    body = codec.encode_error(sent)
    assert json.loads(body)["ok"] is False
    with pytest.raises(StorageError) as err:
        codec.decode_response(calls.BLOCKDEV_CREATE, body)
    assert err.value.kind is ErrorKind.NO_RESOURCES
    assert err.value.fields == {"path": "/srv/d", "free": 3}
    assert str(err.value) == "no space left for /srv/d"
    back = codec.decode_answer(calls.BLOCKDEV_CREATE, body)
    assert isinstance(back, StorageError)


def test_param_error_comes_back_as_param_error_with_problems() -> None:
    try:
        codec.decode_request(calls.INSTANCE_LIST, b'{"hypervisors": 3}')
    except ParamError as exc:
        body = codec.encode_error(exc)
    back = codec.decode_answer(calls.INSTANCE_LIST, body)
    # rebuilt with its own type, so callers can act on the keys (e.g. re-check later)
    assert type(back) is ParamError
    assert back.kind is ErrorKind.INVALID
    assert set(back.problems) == {"hypervisors"}
    assert "hypervisors" in str(back)


def test_hypervisor_error_subclass_keeps_its_fields() -> None:
    body = codec.encode_error(HypervisorError("qemu died", instance="vm1"))
    back = codec.decode_answer(calls.INSTANCE_START, body)
    assert isinstance(back, HypervisorError)
    assert back.fields == {"instance": "vm1"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"<html>502</html>", "body"),
        (b'"ok"', "body"),
        (b'{"result": {}}', "ok"),
        (b'{"ok": true}', "result"),
        (b'{"ok": false, "error": "boom"}', "error"),
        (b'{"ok": true, "result": {"software_version": "1"}}', "result.protocol_version"),
    ],
)
def test_invalid_answer_is_an_rpc_fault_naming_the_field(body: bytes, field: str) -> None:
    with pytest.raises(RpcError) as err:
        codec.decode_answer(calls.VERSION, body, peer="node n1 (127.0.0.2:1811)")
    assert err.value.kind is ErrorKind.FAULT
    assert field in err.value.fields["problems"]
    assert str(err.value).startswith("node n1 (127.0.0.2:1811) sent an invalid answer to call")


def test_oversized_body_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_BODY", 10)
    with pytest.raises(ParamError, match="limit"):
        codec.decode_request(calls.NODE_INFO, b'{"hypervisors": ["kvm"]}')

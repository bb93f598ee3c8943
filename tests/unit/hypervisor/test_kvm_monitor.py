"""The typed QMP wrapper against FakeQmpServer (a FAKE QEMU monitor on a real UNIX socket).

A fake is used here because a real QEMU cannot be made to stop answering or to hang up on
demand; real-QEMU QMP is covered by tests/integration/test_kvm_driver.py.
"""

from __future__ import annotations

import time

import pytest

from corral.common.errors import HypervisorError
from corral.hypervisor.kvm.monitor import CpuInfo, Monitor, VmStatus, VncInfo
from tests.unit.hypervisor.fake_qmp import FakeQmpServer


@pytest.fixture
def sock(tmp_path_factory):
    # UNIX socket paths are limited to 107 bytes: keep it short.
    import tempfile

    d = tempfile.mkdtemp(prefix="crlqmp", dir="/tmp")
    yield f"{d}/qmp.sock"
    import shutil

    shutil.rmtree(d, ignore_errors=True)


REPLIES = {
    "query-status": {"return": {"status": "paused", "singlestep": False, "running": False}},
    "query-balloon": {"return": {"actual": 100 * 1024 * 1024}},
    "balloon": {"return": {}},
    "system_powerdown": {"return": {}},
    "system_reset": {"return": {}},
    "stop": {"return": {}},
    "cont": {"return": {}},
    "query-cpus-fast": {
        "return": [
            {
                "cpu-index": 0,
                "thread-id": 4242,
                "qom-path": "/machine/unattached/device[0]",
                "target": "x86_64",
                "props": {"core-id": 0},
            },
            {
                "cpu-index": 1,
                "thread-id": 4243,
                "qom-path": "/machine/unattached/device[1]",
                "target": "x86_64",
                "props": {"core-id": 1},
            },
        ]
    },
    "query-vnc": {
        "return": {
            "enabled": True,
            "host": "127.0.0.1",
            "service": "5901",
            "family": "ipv4",
            "auth": "none",
            "clients": [],
        }
    },
    "query-version": {"return": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": ""}},
}


def test_typed_commands(sock):
    with FakeQmpServer(sock, replies=REPLIES) as server:
        mon = Monitor(sock, name="vm1", timeout=2)
        assert mon.call(lambda q: q.query_status()) == VmStatus(status="paused", running=False)
        assert mon.call(lambda q: q.query_balloon()) == 100 * 1024 * 1024
        assert mon.call(lambda q: q.query_cpus_fast()) == [
            CpuInfo(0, 4242, "/machine/unattached/device[0]"),
            CpuInfo(1, 4243, "/machine/unattached/device[1]"),
        ]
        assert mon.call(lambda q: q.query_vnc()) == VncInfo(
            enabled=True, host="127.0.0.1", port=5901
        )
        assert mon.call(lambda q: q.query_version()) == "7.2.22"
        mon.call(lambda q: q.balloon(64 * 1024 * 1024))
        for action in ("system_powerdown", "system_reset", "stop", "cont", "quit"):
            mon.call(lambda q, a=action: getattr(q, a)())
    assert server.commands == [
        "query-status", "query-balloon", "query-cpus-fast", "query-vnc", "query-version",
        "balloon", "system_powerdown", "system_reset", "stop", "cont", "quit",
    ]  # fmt: skip
    balloon = server.received[5]
    assert balloon["arguments"] == {"value": 64 * 1024 * 1024}
    assert all("id" in m for m in server.received)


async def test_one_session_several_commands(sock):
    with FakeQmpServer(sock, replies=REPLIES) as server:
        async with Monitor(sock, name="vm1", timeout=2).connect() as q:
            await q.stop()
            status = await q.query_status()
            await q.cont()
    assert status.status == "paused"
    assert server.commands == ["stop", "query-status", "cont"]


def test_error_reply_names_the_qmp_error_class(sock):
    replies = {
        "balloon": {
            "error": {"class": "DeviceNotActive", "desc": "No balloon device has been activated"}
        }
    }
    with FakeQmpServer(sock, replies=replies), pytest.raises(HypervisorError) as err:
        Monitor(sock, name="vm1", timeout=2).call(lambda q: q.balloon(1))
    assert err.value.fields["qmp_failure"] == "command"
    assert err.value.fields["error_class"] == "DeviceNotActive"
    assert "No balloon device" in str(err.value)


def test_unknown_command_is_an_error(sock):
    with FakeQmpServer(sock, replies={}), pytest.raises(HypervisorError) as err:
        Monitor(sock, timeout=2).call(lambda q: q.query_status())
    assert err.value.fields["error_class"] == "CommandNotFound"


def test_malformed_reply_is_refused(sock):
    with FakeQmpServer(
        sock,
        replies={
            "query-status": {"return": ["not", "a", "dict"]},
            "query-balloon": {"return": {"actual": "lots"}},
        },
    ):
        mon = Monitor(sock, timeout=2)
        with pytest.raises(HypervisorError, match="expected an object"):
            mon.call(lambda q: q.query_status())
        with pytest.raises(HypervisorError, match="no actual size"):
            mon.call(lambda q: q.query_balloon())


def test_server_that_never_greets_times_out(sock):
    with FakeQmpServer(sock, mode="silent"):
        start = time.monotonic()
        with pytest.raises(HypervisorError) as err:
            Monitor(sock, name="vm1", timeout=0.3).call(lambda q: q.query_status())
        elapsed = time.monotonic() - start
    assert err.value.fields["qmp_failure"] == "timeout"
    assert "did not answer within 0.3s" in str(err.value)
    assert elapsed < 3


def test_command_without_answer_times_out(sock):
    with FakeQmpServer(sock, mode="mute"):
        start = time.monotonic()
        with pytest.raises(HypervisorError) as err:
            Monitor(sock, name="vm1", timeout=0.3).call(lambda q: q.query_status())
        elapsed = time.monotonic() - start
    assert err.value.fields["qmp_failure"] == "timeout"
    assert err.value.fields["command"] == "query-status"
    assert elapsed < 3


def test_missing_socket_is_a_connect_failure(sock):
    with pytest.raises(HypervisorError) as err:
        Monitor(sock, name="vm1", timeout=1).call(lambda q: q.query_status())
    assert err.value.fields["qmp_failure"] == "connect"
    assert sock in str(err.value)


def test_quit_tolerates_hangup_but_other_commands_do_not(sock):
    with FakeQmpServer(sock, mode="hangup", replies=REPLIES):
        Monitor(sock, timeout=2).call(lambda q: q.quit())  # no exception
    replies = {"system_reset": lambda msg: {"return": {}}}
    with FakeQmpServer(sock, replies=replies) as server:
        Monitor(sock, timeout=2).call(lambda q: q.system_reset())
    assert server.commands == ["system_reset"]

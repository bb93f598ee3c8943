"""CorralClient against the real API app served by real uvicorn on a UNIX socket and on TCP.

The master behind the app is the in-memory fake (tests/fakes/master_service.py: FAKE). What
this checks for real: the socket transport, that the app trusts the UNIX socket and
authenticates TCP (the transport is recognised from uvicorn's ASGI scope), and how API errors
and connection failures come back as CorralError with their kind.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
import uvicorn

from corral.api.app import create_app
from corral.client import CorralClient, job_error
from corral.common.errors import CorralError, ErrorKind
from corral.common.paths import Paths
from tests.fakes.master_service import FakeMaster


class _Served:
    def __init__(self, app, **config):
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, lifespan="off", access_log=False, **config)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def served(tmp_path):
    master = FakeMaster()
    users = tmp_path / "users"
    users.write_text("admin pw write\n")
    app = create_app(master, users_file=str(users))
    sock = str(tmp_path / "master.sock")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with _Served(app, uds=sock), _Served(app, host="127.0.0.1", port=port):
        yield master, sock, port


def test_unix_socket_is_trusted_and_tcp_is_not(served):
    master, sock, port = served
    master.add_instance("vm1")
    local = CorralClient(socket_path=sock)
    job = local.follow_job(local.startup_instance("vm1"))
    assert job["status"] == "success" and job_error(job) is None
    remote = CorralClient(url=f"http://127.0.0.1:{port}")
    with pytest.raises(CorralError) as exc:
        remote.shutdown_instance("vm1")
    assert exc.value.fields["http_status"] == 401
    assert "authentication failed" in str(exc.value)
    authed = CorralClient(url=f"http://127.0.0.1:{port}", user="admin", password="pw")
    assert authed.follow_job(authed.shutdown_instance("vm1"))["status"] == "success"
    assert remote.instance_names() == ["vm1"]  # reads need no credentials
    for c in (local, remote, authed):
        c.close()


def test_errors_are_rebuilt_with_their_kind(served):
    _master, sock, _port = served
    with CorralClient(socket_path=sock) as client:
        with pytest.raises(CorralError) as exc:
            client.instance("nope")
        assert exc.value.kind is ErrorKind.NOT_FOUND
        assert str(exc.value) == "instance nope not found"
        assert exc.value.fields["http_status"] == 404
        with pytest.raises(CorralError) as exc:
            client.create_instance({"name": "vm1", "disk_template": "file", "bogus": 1})
        assert exc.value.kind is ErrorKind.INVALID and "bogus" in str(exc.value)


def test_follow_job_reports_log_and_failure(served):
    master, sock, _port = served
    master.add_instance("vm1")
    seen = []
    with CorralClient(socket_path=sock) as client:
        job = client.follow_job(client.startup_instance("vm1"), seen.append)
        assert [e[3] for e in seen] == ["INSTANCE_STARTUP(vm1) started"]
        master.add_instance("vm2")
        job = client.follow_job(client.request("PUT", "/2/instances/vm2/startup"))
        assert job["status"] == "success"


def test_connection_failures_say_what_to_do(tmp_path):
    missing = str(tmp_path / "nothing.sock")
    with CorralClient(socket_path=missing) as client, pytest.raises(CorralError) as exc:
        client.version()
    assert exc.value.kind is ErrorKind.ENVIRONMENT
    assert str(exc.value) == (
        f"cannot connect to the master at {missing}: is corral-master running? "
        "(corral daemons status)"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with CorralClient(url=f"http://127.0.0.1:{port}") as client, pytest.raises(CorralError) as e:
        client.version()
    assert "cannot connect to the Corral API" in str(e.value)


def test_job_error_forms():
    assert job_error({"status": "success"}) is None
    err = job_error(
        {
            "id": 3,
            "status": "error",
            "opstatus": ["success", "error"],
            "opresult": [None, ["OpPrereqError", ["no such OS", "wrong_input"]]],
        }
    )
    assert err is not None and err.kind is ErrorKind.INVALID and str(err) == "no such OS"
    err = job_error(
        {
            "id": 3,
            "status": "error",
            "opstatus": ["error"],
            "opresult": [
                {"type": "OpError", "kind": "wrong_state", "message": "it is running", "fields": {}}
            ],
        }
    )
    assert err is not None and err.kind is ErrorKind.WRONG_STATE
    err = job_error({"id": 4, "status": "canceled"})
    assert err is not None and "canceled" in str(err)


def test_every_job_method_sends_dry_run_and_reason(served):
    """The RAPI turns ``?dry-run=1`` and ``?reason=`` into the opcodes' fields."""
    master, sock, _port = served
    master.add_instance("vm1")
    spec = {"name": "vm2", "disk_template": "diskless", "disks": [], "nics": [], "os": "noop"}
    calls = {
        "create_instance": lambda c, **kw: c.create_instance(spec, **kw),
        "remove_instance": lambda c, **kw: c.remove_instance("vm1", **kw),
        "startup_instance": lambda c, **kw: c.startup_instance("vm1", **kw),
        "shutdown_instance": lambda c, **kw: c.shutdown_instance("vm1", timeout=5, **kw),
        "reboot_instance": lambda c, **kw: c.reboot_instance("vm1", **kw),
        "modify_instance": lambda c, **kw: c.modify_instance("vm1", beparams={"vcpus": 2}, **kw),
        "rename_instance": lambda c, **kw: c.rename_instance("vm1", "vm3", **kw),
        "reinstall_instance": lambda c, **kw: c.reinstall_instance("vm1", os="noop", **kw),
        "grow_disk": lambda c, **kw: c.grow_disk("vm1", 0, 512, **kw),
        "add_instance_tags": lambda c, **kw: c.add_instance_tags("vm1", ["a"], **kw),
        "remove_instance_tags": lambda c, **kw: c.remove_instance_tags("vm1", ["a"], **kw),
    }
    master.auto_run = False  # nothing is applied: only what the master received matters
    with CorralClient(socket_path=sock) as client:
        for name, call in calls.items():
            call(client, dry_run=True, reason="ticket 7")
            ops = master.submitted[-1]
            assert all(op.dry_run for op in ops), name
            assert all(op.reason[0][:2] == ["gnt:user", "ticket 7"] for op in ops), name
            call(client)
            ops = master.submitted[-1]
            assert not any(op.dry_run for op in ops), name
            assert all(op.reason[0][0] != "gnt:user" for op in ops), name


def test_no_cluster_under_the_root(tmp_path):
    paths = Paths(str(tmp_path))
    with CorralClient.for_paths(paths) as client, pytest.raises(CorralError) as exc:
        client.version()
    assert exc.value.kind is ErrorKind.WRONG_STATE
    assert str(exc.value).startswith(
        f"no cluster is initialised under {tmp_path} (run 'corral cluster init' first"
    )
    os.makedirs(os.path.dirname(paths.cluster_conf))
    with open(paths.cluster_conf, "w") as fh:
        fh.write("{}")
    with CorralClient.for_paths(paths) as client, pytest.raises(CorralError) as exc:
        client.version()
    assert exc.value.kind is ErrorKind.ENVIRONMENT
    assert "is corral-master running?" in str(exc.value)

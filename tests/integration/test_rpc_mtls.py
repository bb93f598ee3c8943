"""Real ``corral-noded`` processes on 127.0.0.2, spoken to over mutual TLS.

Each test starts the daemon as its own detached process (``common/daemonize.py``) in a temporary
root with a freshly generated cluster CA, and stops it (by pid) in teardown, even on failure;
the daemon's log is printed so a failing test shows it. The backend is the real
``NodeBackend`` with the ``fake`` hypervisor when it imports; otherwise (only while the
node-backend is being written) the FAKE backend of ``tests/unit/rpc/rpc_fakes.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import corral
from corral.common import daemonize
from corral.common.errors import RpcError
from corral.common.paths import Paths
from corral.rpc import calls
from corral.rpc.client import NodeAddress, RpcClient
from tests.unit.rpc.rpc_fakes import make_pki

HOST = "127.0.0.2"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    from corral.node.backend import NodeBackend  # noqa: F401

    BACKEND_ARGS: list[str] = []
    REAL_BACKEND = True
except ImportError:  # pragma: no cover - only while the backend is being written
    BACKEND_ARGS = ["--backend", "tests.unit.rpc.rpc_fakes:FakeBackend"]
    REAL_BACKEND = False


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _noded_argv(paths: Paths, port: int, *, foreground: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "corral.node.daemon", "--root", paths.root]
    argv += ["--bind", HOST, "--port", str(port), "--log-level", "debug", *BACKEND_ARGS]
    if foreground:
        argv += ["--foreground", "--log-file", _log_file(paths)]
    return argv


def _log_file(paths: Paths) -> str:
    return os.path.join(paths.log_dir, "corral-noded.log")


def _log(paths: Paths) -> str:
    try:
        with open(_log_file(paths)) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return b") Z" in fh.read()
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


@dataclasses.dataclass
class Cluster:
    node: Paths  # the node daemon's root (CA + node certificate "n1")
    master: Paths  # the caller: a certificate "master" from the same CA
    other: Paths  # another cluster: its own CA, a node "n1" at the same address


@dataclasses.dataclass
class Noded:
    paths: Paths
    port: int
    pid: int

    @property
    def address(self) -> NodeAddress:
        return NodeAddress("n1", HOST, self.port)

    @property
    def pid_file(self) -> str:
        return self.paths.pid_file("corral-noded")


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    node = make_pki(str(tmp_path / "n1"), "n1", [HOST])
    master = make_pki(str(tmp_path / "master"), "master", ["127.0.0.1"], ca=node)
    other = make_pki(str(tmp_path / "other"), "n1", [HOST])
    return Cluster(node, master, other)


@pytest.fixture
def noded(cluster: Cluster) -> Iterator[Noded]:
    paths = cluster.node
    port = _free_port()
    pid = daemonize.start_daemon(
        _noded_argv(paths, port), paths.pid_file("corral-noded"), _log_file(paths), env=_env()
    )
    try:
        yield Noded(paths, port, pid)
    finally:
        with contextlib.suppress(Exception):
            daemonize.stop_daemon(paths.pid_file("corral-noded"), timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        print(f"--- corral-noded log ({'real' if REAL_BACKEND else 'FAKE'} backend) ---")
        print(_log(paths))


async def test_same_ca_client_gets_version_and_node_info(cluster: Cluster, noded: Noded) -> None:
    async with RpcClient.from_paths(cluster.master) as client:
        version = await client.call(noded.address, calls.VERSION, calls.Empty())
        hvs = ["fake"] if REAL_BACKEND else []
        info = await client.call(
            noded.address, calls.NODE_INFO, calls.NodeInfoRequest(hypervisors=hvs)
        )
    assert version.node_name == "n1"
    assert version.software_version == corral.__version__
    assert version.protocol_version == corral.PROTOCOL_VERSION
    with open("/proc/sys/kernel/random/boot_id") as fh:
        assert info.boot_id == fh.read().strip()
    assert info.name == "n1" and info.cpu_total >= 1
    if REAL_BACKEND:
        assert "fake" in info.hypervisors
    assert "<-- version from master@127.0.0.1:" in _log(noded.paths)


async def test_client_certificate_from_another_ca_is_refused(
    cluster: Cluster, noded: Noded
) -> None:
    async with RpcClient(
        ca_cert=cluster.node.ca_cert, cert=cluster.other.node_cert, key=cluster.other.node_key
    ) as client:
        with pytest.raises(RpcError) as err:
            await client.call(noded.address, calls.VERSION, calls.Empty())
    assert str(err.value).startswith(f"node n1 ({HOST}:{noded.port}) refused our certificate")
    assert err.value.fields["reason"] == "tls_client_rejected"
    assert "refused caller 127.0.0.1:" in _log(noded.paths)
    assert "unable to get local issuer certificate" in _log(noded.paths)


async def test_client_without_certificate_is_refused(cluster: Cluster, noded: Noded) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cluster.node.ca_cert)
    async with httpx.AsyncClient(verify=ctx, trust_env=False) as http:
        with pytest.raises((httpx.TransportError, ssl.SSLError)) as err:
            await http.post(
                f"https://{HOST}:{noded.port}/rpc/version",
                content=b"{}",
                extensions={"sni_hostname": "n1"},
            )
    assert "CERTIFICATE_REQUIRED" in repr(err.value) + repr(err.value.__cause__)
    assert "no client certificate" in _log(noded.paths)


async def test_node_certificate_from_another_ca_is_refused_by_the_client(
    cluster: Cluster, noded: Noded
) -> None:
    # The client belongs to the other cluster: the node's certificate is not from its CA.
    async with RpcClient.from_paths(cluster.other) as client:
        with pytest.raises(RpcError) as err:
            await client.call(noded.address, calls.VERSION, calls.Empty())
    assert "presented a certificate not signed by our cluster CA" in str(err.value)
    assert err.value.fields["reason"] == "tls_server_rejected"


def test_sigterm_stops_the_daemon_and_removes_its_pid_file(noded: Noded) -> None:
    assert daemonize.daemon_status(noded.pid_file) == noded.pid
    os.kill(noded.pid, signal.SIGTERM)
    assert _wait_gone(noded.pid), "corral-noded did not exit after SIGTERM"
    assert not os.path.exists(noded.pid_file)
    assert "corral-noded stopped" in _log(noded.paths)


def test_second_daemon_on_the_same_root_is_refused(noded: Noded) -> None:
    out = subprocess.run(
        _noded_argv(noded.paths, _free_port()),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert f"already running (pid {noded.pid})" in out.stderr
    assert daemonize.daemon_status(noded.pid_file) == noded.pid


def test_refuses_to_start_without_certificates(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "corral.node.daemon", "--root", str(tmp_path), "--foreground"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "run corral cluster init first" in out.stderr
    assert not os.path.exists(Paths(str(tmp_path)).pid_file("corral-noded"))


async def test_detaches_itself_and_survives_its_starter(cluster: Cluster) -> None:
    paths = cluster.node
    port = _free_port()
    out = subprocess.run(
        _noded_argv(paths, port, foreground=False),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    pid = daemonize.read_pid_file(paths.pid_file("corral-noded"))
    try:
        assert out.returncode == 0, out.stderr + _log(paths)
        assert f"corral-noded started (pid {pid})" in out.stdout
        assert pid is not None
        # The starter has exited; the daemon lives on in its own session, not our child.
        assert daemonize.daemon_status(paths.pid_file("corral-noded")) == pid
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        ppid, _pgrp, session = (int(x) for x in stat[stat.rfind(b")") + 2 :].split()[1:4])
        assert session == pid
        assert ppid != os.getpid()
        async with RpcClient.from_paths(cluster.master) as client:
            version = await client.call(NodeAddress("n1", HOST, port), calls.VERSION, calls.Empty())
        assert version.node_name == "n1"
        assert daemonize.stop_daemon(paths.pid_file("corral-noded"), timeout=10) is True
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        print(_log(paths))

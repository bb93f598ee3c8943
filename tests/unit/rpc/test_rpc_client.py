"""RpcClient against a real in-process RpcServer (real TLS on 127.0.0.1).

The backend behind the server is the FAKE of ``rpc_fakes`` (the transport is under test, not the
node's work); certificates, TLS, HTTP and the error mapping are all real.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from corral.common.errors import CorralError, ErrorKind, HypervisorError, RpcError
from corral.common.paths import Paths
from corral.node.handlers import CallHandlers
from corral.rpc import calls, tls
from corral.rpc.client import NodeAddress, RpcClient
from corral.rpc.server import RpcServer
from tests.unit.rpc.rpc_fakes import FakeBackend, make_pki

HOST = "127.0.0.1"


@pytest.fixture
def pki(tmp_path: Path) -> Paths:
    return make_pki(str(tmp_path / "n1"), "n1", [HOST])


@pytest.fixture
def master_pki(tmp_path: Path, pki: Paths) -> Paths:
    """The caller's own certificate from the same CA (as the master has)."""
    return make_pki(str(tmp_path / "master"), "master", [HOST], ca=pki)


@pytest.fixture
def other_pki(tmp_path: Path) -> Paths:
    """Another cluster: its own CA, a node of the same name and address."""
    return make_pki(str(tmp_path / "other"), "n1", [HOST])


@pytest.fixture
async def server(pki: Paths) -> AsyncIterator[RpcServer]:
    srv = RpcServer(
        CallHandlers(FakeBackend(pki, "n1")), tls.server_ssl_context(pki), host=HOST, port=0
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop(grace=5)


@pytest.fixture
def node(server: RpcServer) -> NodeAddress:
    return NodeAddress("n1", HOST, server.port)


@pytest.fixture
async def client(master_pki: Paths) -> AsyncIterator[RpcClient]:
    async with RpcClient.from_paths(master_pki) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def test_version_and_node_info(client: RpcClient, node: NodeAddress) -> None:
    version = await client.call(node, calls.VERSION, calls.Empty())
    assert version.node_name == "n1"
    info = await client.call(node, calls.NODE_INFO, calls.NodeInfoRequest())
    assert info.name == "n1"
    assert info.cpu_total >= 1 and info.memory_total > 0


async def test_node_error_is_rebuilt_with_kind_and_fields(
    client: RpcClient, node: NodeAddress
) -> None:
    req = calls.InstanceInfoRequest(name="vm1", hypervisor="broken")
    with pytest.raises(HypervisorError) as err:
        await client.call(node, calls.INSTANCE_INFO, req)
    assert err.value.kind is ErrorKind.ENVIRONMENT
    assert err.value.fields["instance"] == "vm1"
    assert err.value.fields["node"] == "n1"
    assert err.value.fields["call"] == "instance_info"
    assert str(err.value) == "hypervisor broken cannot look up vm1"


async def test_bug_on_node_is_a_fault(client: RpcClient, node: NodeAddress) -> None:
    req = calls.InstanceInfoRequest(name="vm1", hypervisor="crash")
    with pytest.raises(CorralError) as err:
        await client.call(node, calls.INSTANCE_INFO, req)
    assert err.value.kind is ErrorKind.FAULT
    assert "KeyError" in str(err.value)


async def test_connection_refused(client: RpcClient) -> None:
    port = _free_port()
    target = NodeAddress("n1", HOST, port)
    with pytest.raises(RpcError) as err:
        await client.call(target, calls.VERSION, calls.Empty())
    assert str(err.value) == f"node n1 ({HOST}:{port}) unreachable: connection refused"
    assert err.value.fields == {
        "node": "n1",
        "call": "version",
        "host": HOST,
        "port": port,
        "reason": "unreachable",
    }
    assert err.value.kind is ErrorKind.ENVIRONMENT


async def test_timeout_when_the_node_is_slow(client: RpcClient, node: NodeAddress) -> None:
    req = calls.HooksRunRequest(hpath="x", phase="pre", env={"FAKE_SLEEP": "1.5"})
    start = time.monotonic()
    with pytest.raises(RpcError) as err:
        await client.call(node, calls.HOOKS_RUN, req, timeout=0.3)
    assert time.monotonic() - start < 1.2
    assert (
        str(err.value) == f"node n1 ({HOST}:{node.port}) did not answer call hooks_run within 0.3s"
    )
    assert err.value.fields["reason"] == "timeout"
    assert err.value.fields["timeout"] == 0.3


async def test_timeout_when_the_server_never_speaks_tls(client: RpcClient) -> None:
    """A TCP server that accepts and then sleeps (no handshake, no answer)."""
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    srv = await asyncio.start_server(silent, HOST, 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RpcError) as err:
            await client.call(
                NodeAddress("n1", HOST, port), calls.VERSION, calls.Empty(), timeout=0.3
            )
        assert err.value.fields["reason"] in ("timeout", "unreachable")
        assert "0.3s" in str(err.value)
    finally:
        srv.close()
        for w in writers:
            w.close()
        await srv.wait_closed()


async def test_default_timeout_is_the_calls(client: RpcClient, node: NodeAddress) -> None:
    """A call finishing well within call.timeout succeeds although it takes a while."""
    req = calls.HooksRunRequest(hpath="x", phase="pre", env={"FAKE_SLEEP": "0.3"})
    assert (await client.call(node, calls.HOOKS_RUN, req)).results == []


async def test_node_with_wrong_name_is_refused(client: RpcClient, server: RpcServer) -> None:
    impostor = NodeAddress("n2", HOST, server.port)  # n1's daemon answering for n2
    with pytest.raises(RpcError) as err:
        await client.call(impostor, calls.VERSION, calls.Empty())
    assert "presented a certificate that is not for n2" in str(err.value)
    assert err.value.fields["reason"] == "tls_server_rejected"


async def test_our_certificate_from_another_ca_is_refused(
    node: NodeAddress, pki: Paths, other_pki: Paths, caplog: pytest.LogCaptureFixture
) -> None:
    # We trust the node's CA, but our own certificate comes from another cluster.
    async with RpcClient(
        ca_cert=pki.ca_cert, cert=other_pki.node_cert, key=other_pki.node_key
    ) as c:
        with pytest.raises(RpcError) as err:
            await c.call(node, calls.VERSION, calls.Empty())
    assert "refused our certificate" in str(err.value)
    assert "unknown ca" in str(err.value)
    assert err.value.fields["reason"] == "tls_client_rejected"
    assert any("refused caller" in r.getMessage() for r in caplog.records)


async def test_node_certificate_from_another_ca_is_refused(
    node: NodeAddress, other_pki: Paths
) -> None:
    async with RpcClient.from_paths(other_pki) as c:
        with pytest.raises(RpcError) as err:
            await c.call(node, calls.VERSION, calls.Empty())
    assert "presented a certificate not signed by our cluster CA" in str(err.value)
    assert err.value.fields["reason"] == "tls_server_rejected"


async def test_call_many_returns_results_and_errors(client: RpcClient, node: NodeAddress) -> None:
    down = NodeAddress("n9", HOST, _free_port())
    out = await client.call_many([node, down], calls.VERSION, calls.Empty())
    assert set(out) == {"n1", "n9"}
    assert isinstance(out["n1"], calls.VersionResponse)
    assert isinstance(out["n9"], RpcError)
    assert "unreachable" in str(out["n9"])


async def test_calls_run_concurrently(client: RpcClient, node: NodeAddress) -> None:
    req = calls.HooksRunRequest(hpath="x", phase="pre", env={"FAKE_SLEEP": "0.5"})
    start = time.monotonic()
    await asyncio.gather(*(client.call(node, calls.HOOKS_RUN, req) for _ in range(4)))
    assert time.monotonic() - start < 1.5  # not 4 x 0.5 s: one worker thread per call


async def test_request_of_wrong_type_is_refused_before_sending(
    client: RpcClient, node: NodeAddress
) -> None:
    with pytest.raises(RpcError) as err:
        await client.call(node, calls.NODE_INFO, calls.Empty())  # type: ignore[misc]
    assert err.value.kind is ErrorKind.FAULT


def test_node_address_text() -> None:
    assert str(NodeAddress("n1", "127.0.0.2", 1811)) == "node n1 (127.0.0.2:1811)"
    assert NodeAddress("n1", "::1", 1811).base_url == "https://[::1]:1811"


async def test_expired_client_certificate_is_refused(
    node: NodeAddress, pki: Paths, tmp_path: Path
) -> None:
    with open(pki.ca_key, "rb") as fh:
        ca_key = serialization.load_pem_private_key(fh.read(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3660)
    cert = tls.build_leaf(
        public_key=key.public_key(),
        common_name="master",
        san=["master"],
        client_auth=True,
        issuer_cert=tls.load_certificate(pki.ca_cert),
        issuer_key=ca_key,
        now=long_ago,
    )
    cert_file, key_file = tmp_path / "old.pem", tmp_path / "old.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    async with RpcClient(ca_cert=pki.ca_cert, cert=str(cert_file), key=str(key_file)) as c:
        with pytest.raises(RpcError) as err:
            await c.call(node, calls.VERSION, calls.Empty())
    assert "refused our certificate (TLS alert: certificate expired" in str(err.value)

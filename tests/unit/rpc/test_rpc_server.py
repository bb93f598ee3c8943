"""RpcServer's HTTP side and lifecycle, spoken to with a plain httpx client over real mTLS.

The backend is the FAKE of ``rpc_fakes``; the server, TLS and HTTP are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.common.errors import CorralError, ErrorKind, RpcError
from corral.common.paths import Paths
from corral.node.handlers import CallHandlers
from corral.rpc import calls, codec, tls
from corral.rpc.client import NodeAddress, RpcClient
from corral.rpc.server import RpcServer
from tests.unit.rpc.rpc_fakes import FakeBackend, make_pki

HOST = "127.0.0.1"


@pytest.fixture
def pki(tmp_path: Path) -> Paths:
    return make_pki(str(tmp_path / "n1"), "n1", [HOST])


@pytest.fixture
def backend(pki: Paths) -> FakeBackend:
    return FakeBackend(pki, "n1")


@pytest.fixture
async def server(pki: Paths, backend: FakeBackend) -> AsyncIterator[RpcServer]:
    srv = RpcServer(CallHandlers(backend), tls.server_ssl_context(pki), host=HOST, port=0)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop(grace=5)


@pytest.fixture
async def http(pki: Paths) -> AsyncIterator[httpx.AsyncClient]:
    ctx = tls.client_ssl_context(pki)
    async with httpx.AsyncClient(verify=ctx, trust_env=False) as c:
        yield c


def _url(server: RpcServer, path: str) -> str:
    return f"https://{HOST}:{server.port}{path}"


SNI = {"sni_hostname": "n1"}


async def test_unknown_call_is_404_with_error_body(
    server: RpcServer, http: httpx.AsyncClient
) -> None:
    r = await http.post(_url(server, "/rpc/no_such_call"), content=b"{}", extensions=SNI)
    assert r.status_code == 404
    err = codec.decode_answer(calls.VERSION, r.content)
    assert isinstance(err, RpcError)
    assert err.kind is ErrorKind.NOT_FOUND
    assert "/rpc/no_such_call" in str(err)
    r = await http.post(_url(server, "/other"), content=b"{}", extensions=SNI)
    assert r.status_code == 404


async def test_wrong_method_is_405(server: RpcServer, http: httpx.AsyncClient) -> None:
    r = await http.get(_url(server, "/rpc/version"), extensions=SNI)
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert json.loads(r.content)["ok"] is False


async def test_bad_body_is_400_naming_the_field(
    server: RpcServer, http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    r = await http.post(
        _url(server, "/rpc/instance_info"), content=b'{"name": "vm1"}', extensions=SNI
    )
    assert r.status_code == 400
    err = codec.decode_answer(calls.INSTANCE_INFO, r.content)
    assert isinstance(err, CorralError)
    assert err.kind is ErrorKind.INVALID
    assert err.fields["problems"] == {"hypervisor": "Field required"}
    assert backend.seen == []  # the backend never saw it


async def test_too_large_body_is_413(
    server: RpcServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "MAX_BODY", 1000)
    r = await http.post(_url(server, "/rpc/version"), content=b" " * 5000, extensions=SNI)
    assert r.status_code == 413


async def test_keep_alive_serves_several_calls_on_one_connection(
    server: RpcServer, http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    ports = set()
    for _ in range(3):
        r = await http.post(
            _url(server, "/rpc/version"),
            content=b"{}",
            extensions={**SNI, "trace": None},
        )
        assert r.status_code == 200
        ports.add(r.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert len(ports) == 1
    assert [name for name, _ in backend.seen] == ["version"] * 3


async def test_each_call_is_logged_at_debug(
    server: RpcServer, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="corral.rpc.server")
    await http.post(_url(server, "/rpc/version"), content=b"{}", extensions=SNI)
    lines = [r.getMessage() for r in caplog.records if r.name == "corral.rpc.server"]
    assert any(line.startswith("<-- version from n1@127.0.0.1:") for line in lines)


async def test_client_without_certificate_is_refused(
    server: RpcServer, pki: Paths, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca_cert)
    async with httpx.AsyncClient(verify=ctx, trust_env=False) as c:
        with pytest.raises((httpx.TransportError, ssl.SSLError)) as err:
            await c.post(_url(server, "/rpc/version"), content=b"{}", extensions=SNI)
    assert "CERTIFICATE_REQUIRED" in repr(err.value) + repr(err.value.__cause__)
    refusals = [r.getMessage() for r in caplog.records if "refused caller" in r.getMessage()]
    assert refusals and "no client certificate" in refusals[0]


async def test_stop_lets_running_calls_finish(
    server: RpcServer, pki: Paths, tmp_path: Path
) -> None:
    master = make_pki(str(tmp_path / "m"), "master", [HOST], ca=pki)
    node = NodeAddress("n1", HOST, server.port)
    async with RpcClient.from_paths(master) as client:
        req = calls.HooksRunRequest(hpath="x", phase="pre", env={"FAKE_SLEEP": "0.5"})
        running = asyncio.create_task(client.call(node, calls.HOOKS_RUN, req))
        await asyncio.sleep(0.2)
        assert await server.stop(grace=5) == 0
        assert (await running).results == []
        with pytest.raises(RpcError, match="connection refused"):
            await client.call(node, calls.VERSION, calls.Empty())


async def test_stop_abandons_calls_after_grace(
    server: RpcServer, pki: Paths, tmp_path: Path
) -> None:
    master = make_pki(str(tmp_path / "m"), "master", [HOST], ca=pki)
    node = NodeAddress("n1", HOST, server.port)
    async with RpcClient.from_paths(master) as client:
        req = calls.HooksRunRequest(hpath="x", phase="pre", env={"FAKE_SLEEP": "0.8"})
        running = asyncio.create_task(client.call(node, calls.HOOKS_RUN, req))
        await asyncio.sleep(0.2)
        assert await server.stop(grace=0.1) == 1
        with pytest.raises(RpcError) as err:
            await running
    assert err.value.fields["reason"] == "unreachable"


async def test_port_in_use_is_an_rpc_error(server: RpcServer, pki: Paths) -> None:
    clash = RpcServer(
        CallHandlers(FakeBackend(pki, "n1")),
        tls.server_ssl_context(pki),
        host=HOST,
        port=server.port,
    )
    with pytest.raises(RpcError, match=f"cannot listen on {HOST}:{server.port}"):
        await clash.start()


async def test_malformed_http_is_400(server: RpcServer, pki: Paths) -> None:
    ctx = tls.client_ssl_context(pki)
    reader, writer = await asyncio.open_connection(HOST, server.port, ssl=ctx, server_hostname="n1")
    try:
        writer.write(b"THIS IS NOT HTTP\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["kind"] == ErrorKind.INVALID.value


async def test_plain_http_caller_is_refused_and_logged(
    server: RpcServer, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(b"POST /rpc/version HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert b"HTTP/1.1 200" not in answer
    assert any("refused caller" in r.getMessage() for r in caplog.records)

"""Revocation lists and pinned contexts in corral.rpc.tls, with real handshakes on loopback."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from corral.common.paths import Paths
from corral.rpc import crl, tls


@pytest.fixture
def ca(tmp_path: Path) -> Paths:
    paths = Paths(str(tmp_path / "ca"))
    paths.ensure()
    tls.create_ca(paths, "crl")
    return paths


def _node(ca: Paths, tmp_path: Path, name: str) -> Paths:
    p = Paths(str(tmp_path / name))
    p.ensure()
    tls.issue_node_cert(p, name, ["127.0.0.1"], ca=ca)
    return p


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> str:
    """Run one TLS handshake on loopback; "ok" or the side and reason that failed."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    result: dict[str, str] = {}

    def serve() -> None:
        conn, _ = lsock.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)
                result["server"] = "ok"
        except (ssl.SSLError, OSError) as exc:
            result["server"] = f"refused: {exc}"

    t = threading.Thread(target=serve)
    t.start()
    try:
        with (
            socket.create_connection(lsock.getsockname()) as raw,
            client_ctx.wrap_socket(raw, server_hostname=name) as conn,
        ):
            conn.sendall(b"x")
            conn.recv(1)
    except (ssl.SSLError, OSError) as exc:
        result["client"] = f"refused: {exc}"
    t.join(10)
    lsock.close()
    if "client" in result and "verify failed" in result["client"]:
        return "client " + result["client"]
    return "ok" if result.get("server") == "ok" else "server " + result.get("server", "?")


def test_crl_roundtrip(ca: Paths) -> None:
    assert crl.revoked_serials(ca.crl) == set()
    crl.write_crl(ca, [5, 7, 5])
    assert crl.revoked_serials(ca.crl) == {5, 7}


def test_revoked_client_refused_by_server(ca: Paths, tmp_path: Path) -> None:
    a, b = _node(ca, tmp_path, "a"), _node(ca, tmp_path, "b")
    server = tls.ReloadingContext(
        lambda: tls.server_context_from_files(
            ca_cert=ca.ca_cert, cert=a.node_cert, key=a.node_key, crl=ca.crl
        ),
        [ca.crl],
    )
    client = tls.client_context_from_files(ca_cert=ca.ca_cert, cert=b.node_cert, key=b.node_key)
    assert _handshake(server.get(), client, "a") == "ok"
    crl.write_crl(ca, [tls.cert_serial(b.node_cert)])
    outcome = _handshake(server.get(), client, "a")  # the context was rebuilt
    assert outcome.startswith("server refused") and "revoked" in outcome


def test_revoked_server_refused_by_client(ca: Paths, tmp_path: Path) -> None:
    a, b = _node(ca, tmp_path, "a"), _node(ca, tmp_path, "b")
    crl.write_crl(ca, [tls.cert_serial(a.node_cert)])
    server = tls.server_context_from_files(ca_cert=ca.ca_cert, cert=a.node_cert, key=a.node_key)
    client = tls.client_context_from_files(
        ca_cert=ca.ca_cert, cert=b.node_cert, key=b.node_key, crl=ca.crl
    )
    outcome = _handshake(server, client, "a")
    assert outcome.startswith("client refused") and "revoked" in outcome


def test_pinned_context_trusts_only_that_certificate(tmp_path: Path) -> None:
    from corral.node.backend.membership import prepare_join

    one, two = Paths(str(tmp_path / "one")), Paths(str(tmp_path / "two"))
    prepare_join(one, ["127.0.0.1"])
    prepare_join(two, ["127.0.0.1"])
    pinned = tls.pinned_client_context(Path(one.join_cert).read_bytes())
    assert _handshake(tls.join_server_context(one), pinned, "x") == "ok"
    outcome = _handshake(tls.join_server_context(two), pinned, "x")
    assert outcome.startswith("client refused")

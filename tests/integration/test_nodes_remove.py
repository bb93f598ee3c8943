"""Removing and re-adding nodes for real: the removed node's certificate is revoked (real TLS
handshakes with it are refused by another node's daemon and by the master's RPC client), the
node goes back to join mode, and ``node readd`` gives a node a new certificate and its files.

Real daemons on their own roots and loopback addresses (tests/integration/harness.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.common.errors import RpcError
from corral.common.paths import Paths
from corral.node.backend import NodeBackend
from corral.node.handlers import CallHandlers
from corral.rpc import crl, tls
from corral.rpc.calls import VERSION, Empty
from corral.rpc.client import NodeAddress, RpcClient
from corral.rpc.server import RpcServer
from tests.conftest import unavailable
from tests.integration.harness import NOOP_OS, LocalCluster, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "node1", hypervisors=["fake"], cluster_name="nodes")
    try:
        yield c
    finally:
        c.close(show_logs=True)


def _listed(c: LocalCluster) -> list[str]:
    return c.run("corral", "node", "list", "--no-headers", "-o", "name").stdout.split()


async def _call_as(ca: str, cert: str, key: str, node: NodeAddress) -> str:
    """Call VERSION on ``node`` presenting ``cert``; the node name answered or the refusal."""
    async with RpcClient(ca_cert=ca, cert=cert, key=key) as client:
        try:
            return (await client.call(node, VERSION, Empty())).node_name
        except RpcError as exc:
            return f"refused:{exc.fields.get('reason')}:{exc}"


async def _serve_and_call(old: Path, master_paths: Paths, host: str) -> str:
    """Serve with node2's old certificate and let the master's client (CRL-aware) call it."""
    port = free_port(host)
    ctx = tls.server_context_from_files(
        ca_cert=str(old / "ca.pem"), cert=str(old / "node.pem"), key=str(old / "node.key")
    )
    backend = NodeBackend(Paths(str(old)), "node2")
    server = RpcServer(CallHandlers(backend), ctx, host=host, port=port)
    await server.start()
    try:
        client = RpcClient.from_paths(master_paths)
        try:
            return (await client.call(NodeAddress("node2", host, port), VERSION, Empty())).node_name
        except RpcError as exc:
            return f"refused:{exc.fields.get('reason')}:{exc}"
        finally:
            await client.aclose()
    finally:
        await server.stop(1)


def test_remove_revokes_certificate(cluster: LocalCluster, tmp_path: Path) -> None:
    c = cluster
    n2 = c.add_node("node2")
    n3 = c.add_node("node3")
    old = tmp_path / "node2-old"
    old.mkdir()
    for f in ("node.pem", "node.key", "ca.pem"):
        shutil.copy(os.path.join(n2.paths.crypto_dir, f), old / f)
    serial = f"{tls.cert_serial(n2.paths.node_cert):x}"
    node3 = NodeAddress("node3", n3.host, n3.port)
    ca = c.paths.ca_cert
    # before: node2's certificate is accepted both ways
    assert asyncio.run(_call_as(ca, str(old / "node.pem"), str(old / "node.key"), node3)) == "node3"
    host2 = n2.host
    assert asyncio.run(_serve_and_call(old, c.paths, host2)) == "node2"

    out = c.corral("node", "remove", "node2")
    assert "node2 removed" in out.stdout
    assert _listed(c) == ["node1", "node3"]
    # the CA's CRL lists it, on the master and (distributed) on node3
    assert int(serial, 16) in crl.revoked_serials(c.paths.crl)
    assert Path(n3.paths.crl).read_bytes() == Path(c.paths.crl).read_bytes()
    # another node's daemon refuses the removed node's certificate (real handshake)
    refused = asyncio.run(_call_as(ca, str(old / "node.pem"), str(old / "node.key"), node3))
    assert refused.startswith("refused:"), refused
    # the client sees the refusal before the node daemon's log line is written: poll it
    deadline = time.monotonic() + 10
    while "revoked" not in Path(n3.log_file).read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "revoked" in Path(n3.log_file).read_text()
    # and the master's RPC client refuses it as a server
    refused = asyncio.run(_serve_and_call(old, c.paths, host2))
    assert refused.startswith("refused:tls_server_rejected"), refused
    assert "revoked" in refused
    # node3 itself still works for the master
    assert c.corral_json("node", "info", "node3")["name"] == "node3"
    # the removed node was told to leave: certificates dropped, back in join mode, same port
    assert not os.path.exists(n2.paths.node_cert)
    assert not os.path.exists(n2.paths.ca_cert)
    assert os.path.exists(n2.paths.join_token)
    assert n2.noded_pid() is not None
    # ... so it can be added again with its new token
    c.corral("node", "add", "node2", "--address", n2.host, "--port", str(n2.port),
             "--join-token", n2.join_token())  # fmt: skip
    assert _listed(c) == ["node1", "node2", "node3"]
    assert f"{tls.cert_serial(n2.paths.node_cert):x}" != serial


def test_remove_refused_for_master_and_unknown(cluster: LocalCluster) -> None:
    c = cluster
    proc = c.corral("node", "remove", "node1", check=False)
    assert proc.returncode != 0
    assert "master node cannot be removed" in proc.stderr
    proc = c.corral("node", "remove", "nosuch", check=False)
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr


def test_remove_refused_with_instances(cluster: LocalCluster) -> None:
    c = cluster
    if not os.path.isdir(NOOP_OS):
        unavailable(f"missing {NOOP_OS} (Debian package ganeti-os-noop)")
    c.add_node("node2")
    c.corral("instance", "add", "-t", "diskless", "--no-nics", "-o", "noop", "-H", "fake",
             "--no-start", "-n", "node2", "vm1")  # fmt: skip
    proc = c.corral("node", "remove", "node2", check=False)
    assert proc.returncode != 0
    assert "still holds instances (vm1)" in proc.stderr
    assert "node2" in _listed(c)


def test_readd(cluster: LocalCluster) -> None:
    c = cluster
    n2 = c.add_node("node2")
    first = tls.cert_serial(n2.paths.node_cert)
    # without a token: a member gets its files again, offline is cleared
    c.corral("node", "modify", "node2", "--offline", "yes")
    os.unlink(n2.paths.cluster_conf)
    c.corral("node", "readd", "node2")
    assert os.path.exists(n2.paths.cluster_conf)
    assert c.corral_json("node", "info", "node2")["offline"] is False
    # a reinstalled host: wiped, back in join mode; readd with its token re-joins it and
    # revokes the old certificate
    n2.stop()
    shutil.rmtree(n2.paths.data_dir)
    n2.paths.ensure()
    n2.start_noded(join=True)
    c.corral("node", "readd", "node2", "--join-token", n2.join_token())
    second = tls.cert_serial(n2.paths.node_cert)
    assert second != first
    assert first in crl.revoked_serials(c.paths.crl)
    assert second not in crl.revoked_serials(c.paths.crl)
    assert c.corral_json("node", "info", "node2")["name"] == "node2"

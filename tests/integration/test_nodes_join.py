"""Adding nodes for real: ``corral-noded --join`` on a new root and address, ``corral node add``
on the master, and what must be refused (wrong token, other version, unreachable).

Nothing is faked: every node is a real ``corral-noded`` with its own root directory and
127.x.y.z address, the master is the real ``corral-master``, and the commands run as
separate processes (tests/integration/harness.py). The ``fake`` hypervisor (a product
feature that runs no guest) keeps the nodes light.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.rpc import tls
from tests.integration.harness import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "node1", hypervisors=["fake"], cluster_name="nodes")
    try:
        yield c
    finally:
        c.close(show_logs=True)


def _nodes(c: LocalCluster) -> dict[str, dict[str, object]]:
    out = c.run("corral", "--output", "json", "node", "list", "-o", "name,role,group,vm_capable")
    data = json.loads(out.stdout)
    return {row["name"]: row for row in data}


def test_add_two_nodes(cluster: LocalCluster) -> None:
    c = cluster
    n2 = c.add_node("node2")
    n3 = c.add_node("node3", master_candidate=True)
    # the node's key never left it; its certificate is from the cluster CA, for its name
    tls.verify_signed_by(n2.paths.node_cert, c.paths.ca_cert)
    assert tls.cert_common_name(n2.paths.node_cert) == "node2"
    assert tls.cert_addresses(n2.paths.node_cert) == [n2.host]
    assert stat.S_IMODE(os.stat(n2.paths.node_key).st_mode) == 0o600
    # the token is one-time: gone after the join
    assert not os.path.exists(n2.paths.join_token)
    # files by role: everybody has the CA, only candidates the CA key and RAPI files
    assert Path(n2.paths.ca_cert).read_bytes() == Path(c.paths.ca_cert).read_bytes()
    assert not os.path.exists(n2.paths.ca_key)
    assert Path(n3.paths.ca_key).read_bytes() == Path(c.paths.ca_key).read_bytes()
    assert Path(n3.paths.rapi_users).read_bytes() == Path(c.paths.rapi_users).read_bytes()
    nodes = _nodes(c)
    assert set(nodes) == {"node1", "node2", "node3"}
    # the master reaches the new nodes over mutual TLS (same port, switched in-process)
    info = c.corral_json("node", "info", "node2")
    assert info["name"] == "node2"
    out = c.run("corral", "--output", "json", "node", "list", "-o", "name,mtotal")
    assert all(row["mtotal"] for row in json.loads(out.stdout)), out.stdout


def _listed(c: LocalCluster) -> list[str]:
    return c.run("corral", "node", "list", "--no-headers", "-o", "name").stdout.split()


def _add(c: LocalCluster, name: str, host: str, port: int, token: str) -> str:
    proc = c.run(
        "corral", "node", "add", name, "--address", host, "--port", str(port),
        "--join-token", token, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def _still_joining(n: object) -> None:
    paths = n.paths  # type: ignore[attr-defined]
    assert os.path.exists(paths.join_token)
    assert not os.path.exists(paths.node_cert)
    assert n.noded_pid() is not None  # type: ignore[attr-defined]


def test_wrong_token_refused_and_nothing_added(cluster: LocalCluster) -> None:
    c = cluster
    n = c.start_joining_node("node5")
    err = _add(c, "node5", n.host, n.port, "not-the-token")
    assert "join token does not match" in err
    assert "node5" not in _listed(c)
    _still_joining(n)
    # the node is still waiting: with the right token it joins
    c.corral("node", "add", "node5", "--address", n.host, "--port", str(n.port),
             "--join-token", n.join_token())  # fmt: skip
    assert "node5" in _listed(c)


def test_other_version_refused(cluster: LocalCluster) -> None:
    from corral.rpc.calls_nodes import TEST_VERSION_ENV

    c = cluster
    n = c.start_joining_node("node4", env={TEST_VERSION_ENV: "9.9.9"})
    err = _add(c, "node4", n.host, n.port, n.join_token())
    assert "runs Corral 9.9.9" in err
    assert "node4" not in _listed(c)
    _still_joining(n)


def test_unreachable_refused(cluster: LocalCluster) -> None:
    from tests.integration.harness import free_port

    c = cluster
    err = _add(c, "node6", c.host, free_port(c.host), "whatever")
    assert "unreachable" in err
    assert "node6" not in _listed(c)


def test_node_name_taken_refused(cluster: LocalCluster) -> None:
    c = cluster
    n = c.start_joining_node("node7")
    err = _add(c, "node1", n.host, n.port, n.join_token())
    assert "already in the cluster" in err
    _still_joining(n)

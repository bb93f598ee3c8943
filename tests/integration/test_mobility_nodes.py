"""Instance mobility on a real three-node cluster (real daemons, real CLI), fake hypervisor.

The master and three node daemons run on one machine, each node in its own root on its own
127.x address, added with the real ``corral node add`` (``LocalCluster.add_node``). The
instances run on the ``fake`` hypervisor — a product feature with the KVM driver's migration
contracts — so many of them fit; live migration of a real QEMU guest is in
``test_mobility_kvm.py``. ``sharedfile`` disks live in one directory all nodes reach at the
same path; ``file`` disks are node-local (under each node's root).

node3 runs with ``CORRAL_FAKE_HV_VERSION`` set, so its hypervisor reports another version.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.integration.harness import NOOP_OS, LocalCluster, NodeHandle

FAKE = ["--no-nics", "-o", "noop", "-H", "fake"]


class Cluster:
    def __init__(self, c: LocalCluster, nodes: dict[str, NodeHandle], shared: str) -> None:
        self.c, self.nodes, self.shared = c, nodes, shared

    def add(self, name: str, node: str, *args: str, template: str = "sharedfile") -> None:
        disk = [] if template == "diskless" else ["--disk", "0:size=16M"]
        self.c.corral("instance", "add", "-t", template, *disk, *FAKE, "-n", node, *args, name)

    def pnode(self, name: str) -> str:
        rows = self.c.corral_json("instance", "list", "-o", "name,pnode", name)
        return str(rows[0]["pnode"])

    def root_of(self, node: str) -> str:
        return self.c.paths.root if node == "node1" else self.nodes[node].paths.root

    def runs_on(self, name: str) -> list[str]:
        """Nodes whose fake hypervisor has the instance (its run file)."""
        found = []
        for node in ("node1", *self.nodes):
            if os.path.exists(
                os.path.join(self.root_of(node), "run/corral/hv/fake", f"{name}.json")
            ):
                found.append(node)
        return found

    def fails(self, *args: str) -> str:
        res = self.c.corral(*args, check=False)
        assert res.returncode != 0, res.stdout
        return res.stderr


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if not os.path.isdir(NOOP_OS):
        unavailable(f"missing {NOOP_OS} (Debian package ganeti-os-noop)")
    base = tempfile.mkdtemp(prefix="crlmob", dir="/tmp")
    shared = os.path.join(base, "shared")
    os.makedirs(shared)
    c = LocalCluster(
        Path(base) / "node1",
        hypervisors=["fake"],
        cluster_name="mob",
        init_options={
            "shared_file_storage_dir": shared,
            "enabled_disk_templates": ["file", "sharedfile", "diskless"],
        },
    )
    failed = True
    try:
        nodes = {"node2": c.add_node("node2")}
        node3 = c.start_joining_node("node3", env={"CORRAL_FAKE_HV_VERSION": "2.0"})
        c.corral(
            "node",
            "add",
            "node3",
            "--address",
            node3.host,
            "--port",
            str(node3.port),
            "--join-token",
            node3.join_token(),
        )
        nodes["node3"] = node3
        yield Cluster(c, nodes, shared)
        failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    finally:
        c.close(show_logs=failed)
        if not failed:
            shutil.rmtree(base, ignore_errors=True)


def test_refusals_happen_before_anything_moves(cluster: Cluster) -> None:
    k, c = cluster, cluster.c
    k.add("vm1", "node1")
    # another hypervisor version on node3
    err = k.fails("instance", "migrate", "--target-node", "node3", "vm1")
    assert "hypervisor versions differ" in err and "2.0 on node3" in err
    # offline target
    c.corral("node", "modify", "--offline", "yes", "node2")
    err = k.fails("instance", "migrate", "--target-node", "node2", "vm1")
    assert "node node2 is offline" in err
    c.corral("node", "modify", "--offline", "no", "node2")
    # no room: a big instance takes node2's memory (fake instances only pretend to use it)
    total = int(c.corral_json("node", "list", "-o", "name,mtotal", "node2")[0]["mtotal"])
    k.add("hog", "node2", "-B", f"maxmem={total - 64}M,minmem=64M", template="diskless")
    err = k.fails("instance", "migrate", "--target-node", "node2", "vm1")
    assert "not enough memory on node node2" in err
    # without a target, no node fits either (node3's hypervisor differs)
    err = k.fails("instance", "migrate", "vm1")
    assert "not enough memory on node node2" in err or "versions differ" in err
    # file disks only their node reaches: move is the way
    k.add("loc1", "node1", template="file")
    err = k.fails("instance", "migrate", "--target-node", "node3", "loc1")
    assert "instance move" in err
    err = k.fails("instance", "failover", "-f", "--target-node", "node3", "loc1")
    assert "instance move" in err
    # nothing moved
    for name in ("vm1", "loc1"):
        assert k.pnode(name) == "node1" and k.runs_on(name) == ["node1"]


def test_migrate_failover_and_move_through_the_cli(cluster: Cluster) -> None:
    k, c = cluster, cluster.c
    k.add("vm1", "node1")
    c.corral("instance", "migrate", "--target-node", "node2", "vm1")
    assert k.pnode("vm1") == "node2" and k.runs_on("vm1") == ["node2"]
    # Ganeti spelling, back to node1
    c.run("gnt-instance", "migrate", "-f", "-n", "node1", "vm1")
    assert k.pnode("vm1") == "node1" and k.runs_on("vm1") == ["node1"]
    c.corral("instance", "failover", "-f", "--target-node", "node2", "vm1")
    assert k.pnode("vm1") == "node2" and k.runs_on("vm1") == ["node2"]
    info = c.corral_json("instance", "info", "vm1")
    assert info["disks"][0]["logical_id"].startswith(k.shared + "/")

    # move: a file disk is copied to node2's root; the checksums are equal
    k.add("loc1", "node1", template="file")
    logical = c.corral_json("instance", "info", "loc1")["disks"][0]["logical_id"]
    src = os.path.join(k.root_of("node1"), logical.lstrip("/"))
    with open(src, "r+b") as fh:
        fh.write(os.urandom(4096))
        fh.seek(8 * 1024 * 1024)
        fh.write(b"end of the data")
    with open(src, "rb") as fh:
        want = hashlib.sha256(fh.read()).hexdigest()
    out = c.corral("instance", "move", "-f", "--target-node", "node2", "loc1")
    assert "copied and verified" in out.stdout + out.stderr
    dst = os.path.join(k.root_of("node2"), logical.lstrip("/"))
    with open(dst, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == want
    assert not os.path.exists(src)
    assert k.pnode("loc1") == "node2" and k.runs_on("loc1") == ["node2"]


def test_node_evacuate_with_several_instances(cluster: Cluster) -> None:
    k, c = cluster, cluster.c
    for name in ("a1", "a2", "a3"):
        k.add(name, "node1")
    k.add("down1", "node1", "--no-start")
    k.add("loc1", "node1", template="file")
    k.add("stay", "node2")
    out = c.corral("--output", "json", "node", "evacuate", "-f", "--target-node", "node2", "node1")
    assert '"action": "migrate"' in out.stdout
    for name in ("a1", "a2", "a3", "down1", "loc1", "stay"):
        assert k.pnode(name) == "node2", name
    for name in ("a1", "a2", "a3", "loc1", "stay"):
        assert k.runs_on(name) == ["node2"], name
    assert k.runs_on("down1") == []
    # node migrate brings the shared ones back (node3 refuses: other hypervisor version)
    res = c.corral("node", "migrate", "-f", "--target-node", "node1", "node2", check=False)
    assert res.returncode != 0 and "loc1" in res.stderr  # its disk is local to node2
    for name in ("a1", "a2", "a3", "stay"):
        assert k.pnode(name) == "node1" and k.runs_on(name) == ["node1"], name
    assert k.pnode("down1") == "node1"
    # node failover (Ganeti: one failover job per instance)
    c.run("gnt-node", "failover", "-f", "-n", "node2", "node1")
    for name in ("a1", "a2", "a3", "stay"):
        assert k.pnode(name) == "node2" and k.runs_on(name) == ["node2"], name

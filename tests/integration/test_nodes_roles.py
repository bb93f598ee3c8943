"""Node roles and node groups against real daemons: ``node modify`` with Ganeti's rules (and the
cluster files following the candidate role), ``group`` commands, ``gnt-node``/``gnt-group``,
and the RAPI resources (``/2/nodes/[n]/role``, ``/2/groups``...).

Real daemons on their own roots and loopback addresses (tests/integration/harness.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path / "node1", hypervisors=["fake"], cluster_name="roles", admin_password="secret"
    )
    try:
        yield c
    finally:
        c.close(show_logs=True)


def _roles(c: LocalCluster) -> dict[str, dict[str, object]]:
    out = c.run(
        "corral", "--output", "json", "node", "list",
        "-o", "name,role,group,offline,drained,master_candidate,vm_capable,master_capable",
    )  # fmt: skip
    return {row["name"]: row for row in json.loads(out.stdout)}


def _fails(c: LocalCluster, *argv: str) -> str:
    proc = c.run(*argv, check=False)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr + proc.stdout


def test_modify_rules_and_files(cluster: LocalCluster) -> None:
    c = cluster
    n2 = c.add_node("node2")
    assert _roles(c)["node2"]["role"] == "R"
    assert not os.path.exists(n2.paths.ca_key)
    # promotion sends the master candidates' files, demotion removes them
    c.corral("node", "modify", "node2", "--master-candidate", "yes")
    assert _roles(c)["node2"]["role"] == "C"
    assert Path(n2.paths.ca_key).read_bytes() == Path(c.paths.ca_key).read_bytes()
    assert os.path.exists(n2.paths.rapi_cert)
    # offline implies not a candidate
    c.corral("node", "modify", "node2", "--offline", "yes")
    r = _roles(c)["node2"]
    assert r["role"] == "O" and r["master_candidate"] is False
    c.corral("node", "modify", "node2", "--offline", "no")
    assert _roles(c)["node2"]["role"] == "R"
    assert not os.path.exists(n2.paths.ca_key)  # removed at the demotion
    # drained, through gnt-node
    out = c.run("gnt-node", "modify", "-D", "yes", "node2")
    assert "drained -> True" in out.stdout
    assert _roles(c)["node2"]["role"] == "D"
    c.run("gnt-node", "modify", "--drained=no", "node2")
    # the master's rules
    assert "cannot be set offline" in _fails(c, "corral", "node", "modify", "node1", "-O", "yes")
    assert "cannot be set offline or drained" in _fails(
        c, "corral", "node", "modify", "node1", "--drained", "yes"
    )
    assert "cannot be demoted" in _fails(
        c, "corral", "node", "modify", "node1", "--master-candidate", "no"
    )
    # one flag at a time; a candidate must be master-capable
    assert "only one of" in _fails(c, "corral", "node", "modify", "node2", "-O", "yes", "-D", "yes")
    c.corral("node", "modify", "node2", "--master-capable", "no")
    assert "not master-capable" in _fails(c, "corral", "node", "modify", "node2", "-C", "yes")
    assert _roles(c)["node2"]["master_capable"] is False


def test_groups(cluster: LocalCluster) -> None:
    c = cluster
    c.add_node("node2")
    c.corral("group", "add", "rack2", "--alloc-policy", "last_resort")
    c.add_node("node3", group="rack2")
    assert _roles(c)["node3"]["group"] == "rack2"
    assert _roles(c)["node2"]["group"] == "default"
    # a non-empty group cannot be removed
    assert "not empty" in _fails(c, "corral", "group", "remove", "rack2")
    # rename: nodes follow
    c.run("gnt-group", "rename", "rack2", "rackB")
    assert _roles(c)["node3"]["group"] == "rackB"
    listed = c.run("gnt-group", "list", "--no-headers").stdout
    assert "rackB" in listed and "last_resort" in listed
    # assign, then remove the emptied group
    c.corral("group", "assign-nodes", "default", "node3")
    assert _roles(c)["node3"]["group"] == "default"
    c.corral("group", "modify", "rackB", "--alloc-policy", "unallocable")
    info = json.loads(c.run("corral", "--output", "json", "group", "info", "rackB").stdout)
    assert info["alloc_policy"] == "unallocable" and info["node_list"] == []
    c.corral("group", "remove", "rackB")
    assert "does not exist" in _fails(c, "corral", "group", "info", "rackB")
    add = ["node", "add", "node9", "--address", "127.0.0.9", "--join-token", "x"]
    assert "does not exist" in _fails(c, "corral", *add, "--group", "nosuch")


def test_rapi_roles_and_groups(cluster: LocalCluster) -> None:
    c = cluster
    c.add_node("node2")
    base = f"https://{c.host}:{c.rapi_port}"
    with httpx.Client(verify=False, auth=("admin", "secret"), timeout=30) as http:

        def wait(job_id: int) -> dict[str, object]:
            for _ in range(300):
                job = http.get(f"{base}/2/jobs/{job_id}").json()
                if job["status"] in ("success", "error", "canceled"):
                    return dict(job)
                time.sleep(0.1)
            raise AssertionError(f"job {job_id} did not finish: {job}")

        r = http.put(f"{base}/2/nodes/node2/role", json="drained")
        assert r.status_code == 200, r.text
        assert wait(r.json())["status"] == "success"
        assert http.get(f"{base}/2/nodes/node2/role").json() == "drained"
        r = http.put(f"{base}/2/nodes/node2/role", json="master")
        assert r.status_code == 400
        r = http.post(f"{base}/2/nodes/node2/modify", json={"drained": False, "vm_capable": False})
        assert wait(r.json())["status"] == "success"
        node = http.get(f"{base}/2/nodes/node2").json()
        assert node["role"] == "R" and node["drained"] is False
        assert node["vm_capable"] is False

        r = http.post(f"{base}/2/groups", json={"name": "g2"})
        assert wait(r.json())["status"] == "success"
        r = http.put(f"{base}/2/groups/g2/assign-nodes", json={"nodes": ["node2"]})
        assert wait(r.json())["status"] == "success"
        groups = {g["name"]: g for g in http.get(f"{base}/2/groups", params={"bulk": 1}).json()}
        assert groups["g2"]["node_list"] == ["node2"]
        assert groups["default"]["node_list"] == ["node1"]
        assert http.get(f"{base}/2/groups").json() == [
            {"name": "default", "uri": "/2/groups/default"},
            {"name": "g2", "uri": "/2/groups/g2"},
        ]
        r = http.delete(f"{base}/2/groups/g2")
        assert wait(r.json())["status"] == "error"  # not empty
        r = http.put(f"{base}/2/groups/g2/rename", json={"new_name": "g3"})
        assert wait(r.json())["status"] == "success"
        assert http.get(f"{base}/2/groups/g3").json()["node_list"] == ["node2"]
        assert http.get(f"{base}/2/groups/g2").status_code == 404

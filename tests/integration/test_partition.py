"""A node partitioned from the master: its daemon runs in a network namespace we cut off.

Real daemons and commands (``corral-master``, three ``corral-noded``, ``corral node add``,
``corral cluster verify``); node3's daemon runs inside a network namespace this test creates
(``tests/integration/netns.py``: a veth pair, ``10.X.Y.1/30`` on the host, ``.2`` inside), and
the partition is ``ip link set <host end> down``. Guests run on the ``fake`` hypervisor (one
JSON file per running instance, readable here from the node's root whatever the network does).
The watcher runs every second. Needs root (netns) — CI runs as root.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool, unavailable
from tests.integration.harness import NOOP_OS, LocalCluster
from tests.integration.netns import NetNs, add_netns_node

pytestmark = [pytest.mark.slow, pytest.mark.root]

ADD = ["-t", "file", "--disk", "0:size=16M", "-o", "noop", "-H", "fake"]


@pytest.fixture
def partitioned(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LocalCluster, NetNs]]:
    if not os.path.isdir(NOOP_OS):
        unavailable(f"missing {NOOP_OS} (Debian package ganeti-os-noop)")
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    require_tool("ip")
    monkeypatch.setenv("CORRAL_WATCHER_INTERVAL", "1")
    ns = NetNs()
    ns.create()
    c: LocalCluster | None = None
    try:
        c = LocalCluster(tmp_path / "node1", hypervisors=["fake"], cluster_name="part")
        c.add_node("node2")
        add_netns_node(c, "node3", ns)
        yield c, ns
    finally:
        try:
            if c is not None:
                ns.heal()  # so the daemon can be stopped cleanly
                rep = getattr(request.node, "rep_call", None)
                c.close(show_logs=rep is None or rep.failed)
        finally:
            ns.close()
            assert not ns.created


def verify(c: LocalCluster) -> tuple[int, list[str]]:
    proc = c.corral("cluster", "verify", check=False)
    lines = proc.stdout.splitlines()
    assert lines and lines[-1].startswith("Cluster verify "), proc.stdout + proc.stderr
    return proc.returncode, lines[:-1]


def running_files(c: LocalCluster, name: str) -> list[str]:
    """The nodes whose fake hypervisor runs ``name``."""
    roots = {"node1": c.paths, **{n: h.paths for n, h in c.nodes.items()}}
    return sorted(
        n
        for n, p in roots.items()
        if os.path.exists(os.path.join(p.hv_run_dir("fake"), name + ".json"))
    )


def listing(c: LocalCluster) -> dict[str, str]:
    out = c.run("gnt-instance", "list", "--no-headers", "--separator=:", "-o", "name,status")
    return dict(line.split(":") for line in out.stdout.splitlines())


def test_partitioned_node_is_reported_and_nothing_moves(
    partitioned: tuple[LocalCluster, NetNs],
) -> None:
    c, ns = partitioned
    c.corral("instance", "add", *ADD, "-n", "node3", "vm1")
    c.corral("instance", "add", *ADD, "-n", "node2", "vm2")
    assert verify(c) == (0, [])
    jobs_before = len(c.corral_json("job", "list"))

    ns.cut()
    started = time.monotonic()
    code, lines = verify(c)
    took = time.monotonic() - started
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(
        "ERROR: node node3: cannot reach the node daemon"
    ), lines
    assert took < 30, f"verify took {took:.1f}s with a partitioned node"
    assert listing(c) == {"vm1": "ERROR_nodedown", "vm2": "running"}
    # a change aimed at the cut-off node fails cleanly and changes nothing
    stop = c.corral("instance", "stop", "vm1", check=False)
    assert stop.returncode != 0
    time.sleep(4)  # watcher rounds during the partition
    assert running_files(c, "vm1") == ["node3"]  # still running there, nowhere else
    assert running_files(c, "vm2") == ["node2"]
    summaries = [j["summary"] for j in c.corral_json("job", "list", "-o", "id,summary")]
    assert not any("INSTANCE_STARTUP" in str(s) for s in summaries), summaries
    # only our own jobs: one verify, one failed stop
    assert len(summaries) == jobs_before + 2

    ns.heal()
    deadline = time.monotonic() + 20
    while verify(c) != (0, []) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert verify(c) == (0, [])
    assert listing(c) == {"vm1": "running", "vm2": "running"}
    assert running_files(c, "vm1") == ["node3"] and running_files(c, "vm2") == ["node2"]
    rows = c.corral_json("instance", "list", "-o", "name,admin_state,pnode")
    assert rows == [
        {"name": "vm1", "admin_state": "up", "pnode": "node3"},
        {"name": "vm2", "admin_state": "up", "pnode": "node2"},
    ]

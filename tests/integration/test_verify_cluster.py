"""Cluster verify and the watcher on a real three-node cluster (fake hypervisor).

Everything is real — ``corral-master``, three ``corral-noded`` (each with its own root and
127.x address, joined with the real ``corral node add``), mutual TLS, the ``corral`` and
``gnt-cluster`` commands — except the guests: they run on the ``fake`` hypervisor (a JSON file
per running instance, a product feature). "Starting an instance by hand on the wrong node" is
copying its file there, and a crash is deleting it: what the KVM driver sees after a QEMU was
started by hand or killed (the real KVM crash is in test_verify_kvm.py). The watcher runs
every second (``CORRAL_WATCHER_INTERVAL=1``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.integration.harness import NOOP_OS, LocalCluster, NodeHandle

pytestmark = pytest.mark.slow

STORAGE = "/srv/corral/disks"
ADD = ["-t", "file", "--disk", "0:size=16M", "-o", "noop", "-H", "fake"]


@pytest.fixture
def cluster(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalCluster]:
    if not os.path.isdir(NOOP_OS):
        unavailable(f"missing {NOOP_OS} (Debian package ganeti-os-noop)")
    monkeypatch.setenv("CORRAL_WATCHER_INTERVAL", "1")
    c = LocalCluster(tmp_path / "node1", hypervisors=["fake"], cluster_name="verify")
    try:
        c.add_node("node2")
        c.add_node("node3")
        yield c
    finally:
        rep = getattr(request.node, "rep_call", None)
        c.close(show_logs=rep is None or rep.failed)


def verify(c: LocalCluster, *args: str) -> tuple[int, list[str]]:
    """Run ``corral cluster verify``: exit code and the finding lines (summary line dropped)."""
    proc = c.corral("cluster", "verify", *args, check=False)
    lines = proc.stdout.splitlines()
    assert lines and lines[-1].startswith("Cluster verify "), proc.stdout + proc.stderr
    return proc.returncode, lines[:-1]


def fake_file(node: NodeHandle | LocalCluster, name: str) -> str:
    return os.path.join(node.paths.hv_run_dir("fake"), f"{name}.json")


def kill_and_wait(node: NodeHandle) -> None:
    """SIGKILL the node daemon and wait until it is gone."""
    pid = node.noded_pid()
    assert pid is not None
    node.kill_noded()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")


def statuses(c: LocalCluster) -> dict[str, str]:
    out = c.run("gnt-instance", "list", "--no-headers", "--separator=:", "-o", "name,status")
    return dict(line.split(":") for line in out.stdout.splitlines())


def startup_jobs(c: LocalCluster) -> list[str]:
    """Summaries of the INSTANCE_STARTUP opcodes of all jobs."""
    jobs = c.corral_json("job", "list", "-o", "id,summary")
    ops = [
        s
        for j in jobs
        for s in (j["summary"] if isinstance(j["summary"], list) else [j["summary"]])
    ]
    return [s for s in ops if s.startswith("INSTANCE_STARTUP")]


def test_verify_finds_each_breakage_and_is_clean_again(cluster: LocalCluster) -> None:
    c = cluster
    n2, n3 = c.nodes["node2"], c.nodes["node3"]
    assert verify(c) == (0, [])
    c.corral("instance", "add", *ADD, "-n", "node2", "vm1")
    c.corral("instance", "add", *ADD, "-n", "node3", "vm2")
    assert verify(c) == (0, [])

    # 1. a cluster file differs on node2 (a trailing newline: TLS still works)
    with open(n2.paths.ca_cert, "rb") as fh:
        ca = fh.read()
    with open(n2.paths.ca_cert, "ab") as fh:
        fh.write(b"\n")
    # 2. an orphan disk image on node3
    orphan_dir = os.path.join(n3.paths.host_path(STORAGE), "gone")
    os.makedirs(orphan_dir)
    with open(os.path.join(orphan_dir, "disk0"), "wb") as fh:
        fh.write(b"\0" * 512)
    # 3. vm1 started by hand on node3 as well
    shutil.copy(fake_file(n2, "vm1"), fake_file(n3, "vm1"))
    code, lines = verify(c)
    assert code == 1
    assert len(lines) == 4, lines
    assert lines[0].startswith(
        "ERROR: node node2: file /var/lib/corral/crypto/ca.pem differs from the master's copy"
    )
    assert lines[1:] == [
        "ERROR: instance vm1: instance should not run on node node3",
        "ERROR: instance vm1: instance runs on 2 nodes at once: node2, node3",
        f"WARNING: node node3: volume {STORAGE}/gone/disk0 is unknown",
    ]
    # the machine-parseable form, through gnt-cluster
    g = c.run("gnt-cluster", "verify", "--error-codes", check=False)
    assert g.returncode == 1
    assert "  - ERROR:EINSTANCEWRONGNODE:instance:vm1:instance should not run on node node3" in (
        g.stdout
    )
    assert "  - WARNING:ENODEORPHANLV:node:node3:" in g.stdout
    # --ignore-errors turns errors into warnings: the verify passes
    code, _ = verify(c, "-I", "ENODEFILECHECK,EINSTANCEWRONGNODE,EINSTANCELAYOUT")
    assert code == 0

    # 4. node3's daemon is killed: ENODERPC, nothing concluded about what runs there
    kill_and_wait(n3)
    code, lines = verify(c, "--error-codes")
    assert code == 1
    rpc = [line for line in lines if line.startswith("ERROR:ENODERPC:node:node3:")]
    assert len(rpc) == 1 and "cannot reach the node daemon" in rpc[0], lines
    assert not any("node3" in line for line in lines if line not in rpc), lines

    # repaired: clean again
    with open(n2.paths.ca_cert, "wb") as fh:
        fh.write(ca)
    shutil.rmtree(orphan_dir)
    os.unlink(fake_file(n3, "vm1"))
    n3.start_noded()
    assert verify(c) == (0, [])


def test_node_daemon_loss_keeps_instances_and_restarts_nothing(cluster: LocalCluster) -> None:
    c = cluster
    n2 = c.nodes["node2"]
    c.corral("instance", "add", *ADD, "-n", "node2", "vm1")
    c.corral("instance", "add", *ADD, "-n", "node3", "vm2")
    assert statuses(c) == {"vm1": "running", "vm2": "running"}
    jobs_before = len(c.corral_json("job", "list"))

    kill_and_wait(n2)
    code, lines = verify(c)
    assert (
        code == 1
        and len(lines) == 1
        and lines[0].startswith("ERROR: node node2: cannot reach the node daemon")
    ), lines
    assert statuses(c) == {"vm1": "ERROR_nodedown", "vm2": "running"}
    time.sleep(4)  # several watcher rounds
    assert startup_jobs(c) == []  # nothing restarted, least of all elsewhere
    assert os.path.exists(fake_file(n2, "vm1"))  # the guest kept running on its node
    assert not os.path.exists(fake_file(c, "vm1"))
    assert not os.path.exists(fake_file(c.nodes["node3"], "vm1"))
    # only the verify jobs were added
    assert len(c.corral_json("job", "list")) == jobs_before + 1

    n2.start_noded()
    assert verify(c) == (0, [])
    assert statuses(c) == {"vm1": "running", "vm2": "running"}

    # a crash with the daemon up: the watcher restarts it on its own node
    os.unlink(fake_file(n2, "vm1"))
    deadline = time.monotonic() + 30
    while not os.path.exists(fake_file(n2, "vm1")) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert os.path.exists(fake_file(n2, "vm1")), "the watcher did not restart vm1"
    assert startup_jobs(c) == ["INSTANCE_STARTUP(vm1)"]
    assert statuses(c) == {"vm1": "running", "vm2": "running"}
    assert verify(c) == (0, [])

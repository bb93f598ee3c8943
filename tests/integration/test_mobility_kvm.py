"""Live migration and failover of a real QEMU guest between two nodes, through the CLI.

A real two-node cluster on one machine (tests/integration/harness.py: node1 with the master,
node2 added with the real ``corral node add``), each node in its own root on its own 127.x
address. The guest is the busybox OS on a ``sharedfile`` disk in one directory both nodes
reach at the same path (NFS in production). Only the CLI drives it: ``corral instance
migrate``, ``corral instance failover``, ``corral instance migrate --cleanup``.

Checks: after a live migration the guest's console answers on node2, what it wrote before is
still in its memory, it did not boot again, and exactly one QEMU process runs it. A failover
boots it on the other node. A migration whose target node daemon is killed half-way leaves the
guest running on node1 only (the job says so), and ``--cleanup`` removes the paused copy on
node2 once its daemon is back. At most two QEMU processes of this test exist at a time (the two
ends of a migration); every one is registered with the session reaper and killed at teardown.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.hypervisor.kvm.process import pid_alive
from tests.conftest import require_tool
from tests.integration.harness import LocalCluster, NodeHandle

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

UP = "CORRAL-GUEST-UP {name}"


class Pair:
    def __init__(self, c: LocalCluster, node2: NodeHandle, shared: str) -> None:
        self.c, self.node2, self.shared = c, node2, shared

    def root(self, node: str) -> str:
        return self.c.paths.root if node == "node1" else self.node2.paths.root

    def serial(self, node: str, name: str) -> str:
        path = os.path.join(self.root(node), "var/log/corral/kvm", f"{name}.serial.log")
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_serial(self, node: str, name: str, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.serial(node, name)):
                return
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not on {node}: {self.serial(node, name)[-2000:]}")

    def pids(self, name: str) -> dict[str, int]:
        """Live QEMU pids of the instance, by node."""
        found = {}
        for node, pids in (("node1", self.c.guest_pids()), ("node2", self.node2.guest_pids())):
            pid = pids.get(name)
            if pid is not None and pid_alive(pid):
                found[node] = pid
        return found

    def register(self) -> None:
        if self.c.reaper is None:
            return
        with open(self.c.reaper, "a", encoding="utf-8") as fh:
            for pids in (self.c.guest_pids(), self.node2.guest_pids()):
                for pid in pids.values():
                    fh.write(f"{pid}\n")

    def console(self, node: str, name: str, line: str, expect: str, timeout: float = 30) -> str:
        """Type into ``corral instance console`` and wait for ``expect`` on ``node``'s log."""
        start = len(self.serial(node, name))
        proc = subprocess.Popen(
            ["corral", "instance", "console", name],
            env=self.c.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdin is not None
            time.sleep(0.5)
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            deadline = time.monotonic() + timeout
            text = ""
            while time.monotonic() < deadline:
                text = self.serial(node, name)[start:]
                if re.search(expect, text):
                    return text
                time.sleep(0.2)
            raise AssertionError(f"{expect!r} not seen on {node} after {line!r}: {text[-1000:]}")
        finally:
            proc.kill()
            proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()

    def pnode(self, name: str) -> str:
        return str(self.c.corral_json("instance", "list", "-o", "name,pnode", name)[0]["pnode"])


@pytest.fixture
def pair(guest_reaper: Path, request: pytest.FixtureRequest) -> Iterator[Pair]:
    require_tool("qemu-system-x86_64", "qemu-img", "socat", "mkfs.ext4", "debugfs", "cpio")
    # short roots: QEMU's UNIX socket paths must stay under 108 bytes
    base = tempfile.mkdtemp(prefix="crlmk", dir="/tmp")
    shared = os.path.join(base, "shared")
    os.makedirs(shared)
    c = LocalCluster(
        Path(base) / "node1",
        hypervisors=["kvm"],
        reaper=guest_reaper,
        cluster_name="mobk",
        init_options={
            "shared_file_storage_dir": shared,
            "enabled_disk_templates": ["sharedfile", "file", "diskless"],
        },
    )
    failed = True
    try:
        node2 = c.add_node("node2")
        yield Pair(c, node2, shared)
        failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    finally:
        c.close(show_logs=failed)
        if failed:
            print(f"kept the roots for inspection: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(900)
def test_live_migration_failover_and_a_failed_migration(pair: Pair) -> None:
    p, c, name = pair, pair.c, "vm1"
    c.corral(
        "instance",
        "add",
        "-t",
        "sharedfile",
        "--disk",
        "0:size=256M",
        "-o",
        "busybox",
        "-B",
        "maxmem=256M,minmem=128M,vcpus=1",
        "-n",
        "node1",
        name,
    )
    p.register()
    p.wait_serial("node1", name, UP.format(name=name))
    p.console("node1", name, "echo kept-$((6*7)) > /tmp/kept; echo WROTE-$((1+1))", r"WROTE-2")
    src_pid = p.pids(name)["node1"]

    # --- live migration to node2 through the CLI ----------------------------------------------
    started = time.monotonic()
    out = c.corral("instance", "migrate", name)  # the only other node: node2
    elapsed = time.monotonic() - started
    assert "now runs on node2" in out.stdout + out.stderr
    p.register()
    assert p.pnode(name) == "node2"
    pids = p.pids(name)
    assert list(pids) == ["node2"] and not pid_alive(src_pid)  # one QEMU afterwards
    # the console answers on node2, the guest kept its memory and did not boot again
    p.console("node2", name, "cat /tmp/kept; echo ANSWER-$((6*7))", r"ANSWER-42")
    assert "kept-42" in p.serial("node2", name)
    assert UP.format(name=name) not in p.serial("node2", name)
    assert elapsed < 120

    # --- failover back to node1: a cold restart there -------------------------------------------
    c.corral("instance", "failover", "-f", name)
    p.register()
    p.wait_serial("node1", name, UP.format(name=name))
    assert p.pnode(name) == "node1" and list(p.pids(name)) == ["node1"]

    # --- a migration whose target daemon dies half-way ---------------------------------------
    # throttle the next migration (the hvparam applies from the next start)
    c.corral("instance", "modify", "-H", "migration_bandwidth=8", name)
    c.corral("instance", "reboot", "--type", "full", name)
    p.register()
    p.wait_serial("node1", name, UP.format(name=name))
    src_pid = p.pids(name)["node1"]
    proc = subprocess.Popen(
        ["corral", "instance", "migrate", "--target-node", "node2", name],
        env=c.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while "node2" not in p.pids(name) and time.monotonic() < deadline:
        time.sleep(0.1)  # the destination QEMU was started paused by accept_instance
    p.register()
    time.sleep(1)  # at 8 MiB/s the transfer is under way for several seconds
    p.node2.kill_noded()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out
    assert "runs on node1" in out, out
    assert p.pnode(name) == "node1"
    assert p.pids(name)["node1"] == src_pid
    p.console("node1", name, "echo STILL-$((7*6))", r"STILL-42")
    # node2 may keep a paused copy: --cleanup removes it once its daemon is back
    p.node2.start_noded()
    out = c.corral("instance", "migrate", "--cleanup", name)
    assert p.pnode(name) == "node1"
    assert list(p.pids(name)) == ["node1"] and p.pids(name)["node1"] == src_pid
    p.console("node1", name, "echo AFTER-$((7*6))", r"AFTER-42")
    c.corral("instance", "remove", "-f", name)
    assert p.pids(name) == {}

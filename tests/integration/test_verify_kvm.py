"""The watcher with a real KVM guest on a two-node cluster: crash -> restart; user shutdown ->
left alone.

Nothing is faked: real ``corral-master`` and two ``corral-noded`` (node2 joined with the real
``corral node add``), one QEMU guest from the busybox OS on node1. (On node2 the busybox OS
cannot boot in this one-machine layout: its kernel hvparams name node1's root; see the
report.) ``kill -9`` of its QEMU is the crash: the watcher (every second here) starts it again
on its node — never on node2 — through an
``OP_INSTANCE_STARTUP`` job and ``corral instance list`` shows it running. A ``poweroff`` typed
inside the guest is a user shutdown: recorded ``USER_down`` and never restarted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.hypervisor.kvm.process import pid_alive
from tests.conftest import require_tool
from tests.integration.harness import LocalCluster, NodeHandle

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

UP = "CORRAL-GUEST-UP"


@pytest.fixture
def cluster(
    guest_reaper: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalCluster]:
    require_tool("qemu-system-x86_64", "qemu-img", "socat", "mkfs.ext4", "debugfs", "cpio")
    monkeypatch.setenv("CORRAL_WATCHER_INTERVAL", "1")
    root = Path("/tmp") / f"crl-vk-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    root.mkdir()
    c = LocalCluster(root / "node1", hypervisors=["kvm"], reaper=guest_reaper)
    failed = True
    try:
        c.add_node("node2")
        yield c
        rep = getattr(request.node, "rep_call", None)
        failed = rep is None or rep.failed
    finally:
        c.close(show_logs=failed)
        if not failed:
            shutil.rmtree(root, ignore_errors=True)


def serial(node: NodeHandle | LocalCluster, name: str) -> str:
    try:
        with open(
            os.path.join(node.paths.log_dir, "kvm", f"{name}.serial.log"), errors="replace"
        ) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def wait_for(what: str, check, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def startup_jobs(c: LocalCluster) -> list[dict[str, object]]:
    jobs = c.corral_json("job", "list", "-o", "id,status,summary")
    return [j for j in jobs if j["summary"] == ["INSTANCE_STARTUP(vm1)"]]


def status(c: LocalCluster, name: str) -> dict[str, object]:
    rows = c.corral_json("instance", "list", "-o", "name,status,admin_state_source,pnode", name)
    return rows[0]


def test_watcher_restarts_a_killed_guest_and_leaves_a_powered_off_one(
    cluster: LocalCluster,
) -> None:
    c = cluster
    n1, n2 = c, c.nodes["node2"]
    c.corral("instance", "add", "-t", "file", "--disk", "0:size=256M", "-o", "busybox",
             "-B", "maxmem=128M,minmem=128M,vcpus=1", "-n", "node1", "vm1")  # fmt: skip
    c.register_guests()
    wait_for("the guest's first boot", lambda: f"{UP} vm1" in serial(n1, "vm1"))
    pid = n1.guest_pids()["vm1"]

    # the crash: QEMU killed
    os.kill(pid, signal.SIGKILL)
    wait_for("a new QEMU", lambda: n1.guest_pids().get("vm1", pid) != pid and pid_alive(
        n1.guest_pids()["vm1"]))  # fmt: skip
    c.register_guests()
    wait_for("the restarted guest's boot", lambda: f"{UP} vm1" in serial(n1, "vm1"))
    assert status(c, "vm1") == {
        "name": "vm1", "status": "running", "admin_state_source": "admin", "pnode": "node1"
    }  # fmt: skip
    assert n2.guest_pids() == {}  # nothing on node2
    restarts = startup_jobs(c)
    assert [j["status"] for j in restarts] == ["success"], c.corral("job", "info").stdout

    # the user powers the guest off from inside: recorded user-down, not restarted
    pid = n1.guest_pids()["vm1"]
    console = subprocess.Popen(
        ["corral", "instance", "console", "vm1"],
        env=c.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert console.stdin is not None
        time.sleep(0.5)
        console.stdin.write("poweroff -f\n")
        console.stdin.flush()
        wait_for("the guest to power off", lambda: not pid_alive(pid), timeout=30)
    finally:
        console.kill()
        console.wait()
        if console.stdin is not None:
            console.stdin.close()
    wait_for("USER_down", lambda: status(c, "vm1")["status"] == "USER_down", timeout=30)
    time.sleep(3)  # more watcher rounds
    assert status(c, "vm1")["status"] == "USER_down"
    assert status(c, "vm1")["admin_state_source"] == "user"
    assert not any(pid_alive(p) for p in n1.guest_pids().values())
    assert n2.guest_pids() == {}
    assert startup_jobs(c) == restarts  # the user's poweroff was not undone
    assert re.search(r"Power down", serial(n1, "vm1"))

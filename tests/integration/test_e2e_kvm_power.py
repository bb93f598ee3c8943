"""Issue 3 end to end: pause, resume, suspend, unsuspend and "user down" on a real cluster.

A real single-host cluster (tests/integration/harness.py: real ``corral-noded`` and
``corral-master`` on a 127.x address, mutual TLS) runs one real QEMU guest from the busybox OS,
driven by the installed ``corral``/``gnt-instance`` commands. The master's watcher runs every
second here (``CORRAL_WATCHER_INTERVAL=1``) so a guest that powers itself off is recorded
"user down" quickly: status ``USER_down`` with ``admin_state_source`` ``user``, as Ganeti.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.hypervisor.kvm.process import pid_alive
from tests.conftest import require_tool
from tests.integration.harness import LocalCluster

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

UP = "CORRAL-GUEST-UP"
FIELDS = "name,status,admin_state,admin_state_source,hv_state,suspended"


@pytest.fixture
def cluster(
    guest_reaper: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalCluster]:
    require_tool("qemu-system-x86_64", "qemu-img", "socat", "mkfs.ext4", "debugfs", "cpio")
    monkeypatch.setenv("CORRAL_WATCHER_INTERVAL", "1")
    root = Path(os.path.join("/tmp", f"crl-pw-{os.getpid()}-{time.monotonic_ns() % 10**6}"))
    root.mkdir()
    c = LocalCluster(root, hypervisors=["kvm"], reaper=guest_reaper)
    failed = True
    try:
        yield c
        failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    finally:
        c.close(show_logs=failed)
        if not failed:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept the cluster root for inspection: {root}")


def _row(c: LocalCluster, name: str) -> dict[str, object]:
    rows = c.corral_json("instance", "list", "-o", FIELDS, name)
    assert len(rows) == 1, rows
    return rows[0]


def _wait_row(c: LocalCluster, name: str, timeout: float = 30, **expected: object) -> None:
    deadline = time.monotonic() + timeout
    row: dict[str, object] = {}
    while time.monotonic() < deadline:
        row = _row(c, name)
        if all(row.get(k) == v for k, v in expected.items()):
            return
        time.sleep(0.5)
    raise AssertionError(f"{name}: expected {expected}, last seen {row}")


def _uptime(c: LocalCluster, name: str) -> float:
    tag = f"U{time.monotonic_ns() % 10**9}"
    out = c.console(name, f"echo {tag}-$(cut -d' ' -f1 /proc/uptime)-END", rf"{tag}-[0-9.]+-END")
    return float(out.split(f"{tag}-")[-1].split("-END")[0])


def test_pause_suspend_and_user_down_through_the_cli(cluster: LocalCluster) -> None:
    c = cluster
    c.corral(
        "instance",
        "add",
        "-t",
        "file",
        "--disk",
        "0:size=256M",
        "-o",
        "busybox",
        "-B",
        "maxmem=128M,minmem=128M,vcpus=1",
        "vm1",
    )
    c.register_guests()
    c.wait_serial("vm1", f"{UP} vm1")
    pid = c.guest_pids()["vm1"]

    # pause / resume: Ganeti's status stays "running", the Corral field says paused
    c.corral("instance", "pause", "vm1")
    assert _row(c, "vm1") == {
        "name": "vm1",
        "status": "running",
        "admin_state": "up",
        "admin_state_source": "admin",
        "hv_state": "paused",
        "suspended": False,
    }
    again = c.corral("instance", "pause", "vm1", check=False)
    assert again.returncode != 0 and "only a running instance can be paused" in again.stderr
    c.corral("instance", "resume", "vm1")
    assert _row(c, "vm1")["hv_state"] == "running"
    before = _uptime(c, "vm1")

    # suspend to disk: the guest is saved and stopped; start is refused, unsuspend restores
    c.corral("instance", "suspend", "vm1")
    assert not pid_alive(pid)
    row = _row(c, "vm1")
    assert row["status"] == "ADMIN_down" and row["suspended"] is True
    assert row["hv_state"] is None
    state_file = os.path.join(c.paths.data_dir, "suspend", "kvm", "vm1.state")
    assert os.path.isfile(state_file)
    refused = c.corral("instance", "start", "vm1", check=False)
    assert refused.returncode != 0 and "suspended" in refused.stderr
    c.corral("instance", "unsuspend", "vm1")
    c.register_guests()
    assert _row(c, "vm1")["status"] == "running" and not _row(c, "vm1")["suspended"]
    assert not os.path.exists(state_file)
    assert before < _uptime(c, "vm1") < before + 120  # the same boot, uptime went on
    assert UP not in c.serial_text("vm1")  # the log of the restored start: no boot in it

    # the guest powers itself off: USER_down at once, then recorded by the watcher
    pid = c.guest_pids()["vm1"]
    c.console("vm1", "poweroff -f", r"reboot: Power down|Power down", timeout=30)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(pid)
    _wait_row(c, "vm1", status="USER_down", admin_state="down", admin_state_source="user")
    assert _row(c, "vm1")["hv_state"] is None  # the node cleaned up after it
    assert not os.path.exists(os.path.join(c.paths.hv_run_dir("kvm"), "vm1"))
    gnt = c.run("gnt-instance", "list", "--no-headers", "--separator=:", "-o", "name,status")
    assert gnt.stdout.strip() == "vm1:USER_down"
    jobs = [j["summary"] for j in c.corral_json("job", "list")]
    assert ["INSTANCE_SHUTDOWN(vm1)"] in jobs  # the watcher's job

    # starting it makes it the administrator's again
    c.corral("instance", "start", "vm1")
    c.register_guests()
    _wait_row(c, "vm1", status="running", admin_state="up", admin_state_source="admin")
    c.wait_serial("vm1", f"{UP} vm1")
    c.corral("instance", "remove", "-f", "vm1")
    assert c.guest_pids() == {}

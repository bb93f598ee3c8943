"""Issue 2 end to end: a real single-host cluster boots real QEMU guests from the CLI.

The cluster runs in a temporary root with the real daemons talking mutual TLS on a 127.x
address (tests/integration/harness.py). Instances use the built-in ``busybox`` OS: its
``create`` script installs Debian's cloud kernel and a busybox root filesystem into the
instance's disk, and the guest proves it is up by printing ``CORRAL-GUEST-UP <hostname>`` on
its serial console. Commands are the installed ``corral`` and ``gnt-instance`` programs.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.hypervisor.kvm.process import pid_alive
from tests.conftest import require_tool
from tests.integration.harness import LocalCluster

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

UP = r"CORRAL-GUEST-UP {name}"


@pytest.fixture
def cluster(
    tmp_path: Path, guest_reaper: Path, request: pytest.FixtureRequest
) -> Iterator[LocalCluster]:
    require_tool("qemu-system-x86_64", "qemu-img", "socat", "mkfs.ext4", "debugfs", "cpio")
    # short root: QEMU's UNIX socket paths must stay under 108 bytes
    root = Path(os.path.join("/tmp", f"crl-e2e-{os.getpid()}-{time.monotonic_ns() % 10**6}"))
    root.mkdir()
    c = LocalCluster(root, hypervisors=["kvm", "fake"], reaper=guest_reaper)
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


def _status(c: LocalCluster, name: str) -> dict[str, object]:
    rows = c.corral_json("instance", "list", "-o", "name,status,oper_ram,disk.size/0", name)
    assert len(rows) == 1, rows
    return rows[0]


def test_instance_lifecycle_on_real_qemu(cluster: LocalCluster) -> None:
    c = cluster
    # add: disk + busybox OS install + start, one job followed by the CLI
    add = c.corral(
        "instance",
        "add",
        "-t",
        "file",
        "--disk",
        "0:size=256M",
        "-o",
        "busybox",
        "-B",
        "maxmem=256M,minmem=128M,vcpus=1",
        "vm1",
    )
    assert "installing OS busybox" in add.stderr + add.stdout
    c.register_guests()
    c.wait_serial("vm1", UP.format(name="vm1"))
    assert _status(c, "vm1") == {
        "name": "vm1",
        "status": "running",
        "oper_ram": 256,
        "disk.size/0": 256,
    }
    info = c.corral_json("instance", "info", "vm1")
    # the driver says which accelerator it used (TCG here: /dev/kvm cannot run guests)
    assert info["hv_runtime"]["accel"] in ("tcg", "kvm")
    assert info["hv_runtime"]["accel_reason"]
    assert info["disks"][0]["logical_id"].endswith("/vm1/disk0")

    # the Ganeti syntax works against the same cluster
    gnt = c.run("gnt-instance", "list", "--no-headers", "--separator=:", "-o", "name,status")
    assert gnt.stdout.strip() == "vm1:running"

    # interactive console, fed by a pipe: the guest answers a command
    out = c.console("vm1", "echo hello-from-$(hostname)", r"hello-from-vm1")
    assert "hello-from-vm1" in out

    # hard reboot (reset): the guest boots again in the same QEMU process
    pid = c.guest_pids()["vm1"]
    c.corral("instance", "reboot", "--type", "hard", "vm1")
    c.wait_serial("vm1", UP.format(name="vm1"), count=2)
    assert c.guest_pids()["vm1"] == pid

    # runtime ballooning within [minmem, maxmem]
    c.corral("instance", "modify", "-m", "160M", "vm1")
    assert _status(c, "vm1")["oper_ram"] == 160
    bad = c.corral("instance", "modify", "-m", "512M", "vm1", check=False)
    assert bad.returncode != 0
    assert "runtime_mem" in bad.stderr

    # grow the disk of the running guest: the guest sees the new size at once
    c.corral("instance", "grow-disk", "vm1", "0", "256M")
    assert _status(c, "vm1")["disk.size/0"] == 512
    out = c.console("vm1", "cat /sys/block/vda/size", r"\n1048576\r?\n")
    assert "1048576" in out

    # killing the node daemon does not stop the guest; once back, it is listed again
    noded = int(Path(c.paths.pid_file("corral-noded")).read_text().strip())
    os.kill(noded, signal.SIGKILL)
    time.sleep(0.5)
    assert pid_alive(pid)
    c.corral("daemons", "start")
    assert _status(c, "vm1")["status"] == "running"

    # soft stop (ACPI power button), then the instance is administratively down
    c.corral("instance", "stop", "vm1")
    assert _status(c, "vm1")["status"] == "ADMIN_down"
    # NOTE: pid_alive, not /proc existence: PID 1 of some containers never reaps zombies
    assert not pid_alive(pid)

    # rename (stopped), reinstall, start under the new name: the OS knows the new name
    c.run("gnt-instance", "rename", "vm1", "vm2")
    c.corral("instance", "reinstall", "-f", "vm2")
    c.corral("instance", "start", "vm2")
    c.register_guests()
    c.wait_serial("vm2", UP.format(name="vm2"))
    disk_dir = os.path.join(c.paths.root, "srv/corral/disks/vm2")
    assert os.path.isdir(disk_dir)
    assert not os.path.exists(os.path.join(c.paths.root, "srv/corral/disks/vm1"))

    # soft reboot = clean shutdown through the guest, then a fresh start
    c.corral("instance", "reboot", "--type", "soft", "vm2")
    c.register_guests()
    c.wait_serial("vm2", UP.format(name="vm2"))

    # remove: guest gone, disks gone, nothing left in the run directory
    c.corral("instance", "remove", "-f", "vm2")
    assert c.corral_json("instance", "list") == []
    assert not os.path.exists(disk_dir)
    assert c.guest_pids() == {}

    # every change was a job; only the out-of-range balloon request failed
    jobs = c.corral_json("job", "list")
    failed = [j["summary"] for j in jobs if j["status"] != "success"]
    assert failed == [["INSTANCE_SET_PARAMS(vm1)"]], jobs


def test_failed_start_rolls_back_everything(cluster: LocalCluster) -> None:
    c = cluster
    res = c.corral(
        "instance",
        "add",
        "-t",
        "file",
        "--disk",
        "0:size=64M",
        "-o",
        "busybox",
        "-H",
        "kvm:kvm_extra=-no-such-qemu-option",
        "vmbad",
        check=False,
    )
    assert res.returncode != 0
    # QEMU's own message reaches the user
    assert "no-such-qemu-option" in res.stderr
    assert c.corral_json("instance", "list") == []
    assert not os.path.exists(os.path.join(c.paths.root, "srv/corral/disks/vmbad"))
    assert c.guest_pids() == {}
    assert not os.path.exists(os.path.join(c.paths.hv_run_dir("kvm"), "vmbad"))
    jobs = c.corral_json("job", "list")
    assert [j["status"] for j in jobs] == ["error"]


def test_bad_input_is_refused_before_anything_changes(cluster: LocalCluster) -> None:
    c = cluster
    cases = [
        (["--disk", "0:size=100"], "needs a unit"),
        (["--disk", "0:size=64M", "-B", "frobnicate=1"], "frobnicate"),
        (["--disk", "0:size=64M", "-B", "vcpus=lots"], "vcpus"),
        (["--disk", "0:size=99999T"], "too large"),
    ]
    for extra, needle in cases:
        res = c.corral("instance", "add", "-t", "file", "-o", "busybox", *extra, "vmx", check=False)
        assert res.returncode != 0, extra
        assert needle in res.stderr, (extra, res.stderr)
    for name in ("vm;rm", "../etc", "a b"):
        res = c.corral(
            "instance",
            "add",
            "-t",
            "file",
            "--disk",
            "0:size=64M",
            "-o",
            "busybox",
            name,
            check=False,
        )
        assert res.returncode != 0 and "name" in res.stderr, (name, res.stderr)
    res = c.corral(
        "instance",
        "add",
        "-t",
        "file",
        "--disk",
        "0:size=64M",
        "-o",
        "nosuch-os",
        "vmx",
        check=False,
    )
    assert res.returncode != 0 and "nosuch-os" in res.stderr
    assert c.corral_json("instance", "list") == []
    disks = os.path.join(c.paths.root, "srv/corral/disks")
    assert not os.path.exists(disks) or os.listdir(disks) == []

    # a second instance with the same name is refused before anything is created
    c.corral(
        "instance",
        "add",
        "-t",
        "file",
        "--disk",
        "0:size=64M",
        "-o",
        "noop",
        "-H",
        "fake",
        "--no-start",
        "dup",
    )
    res = c.corral(
        "instance",
        "add",
        "-t",
        "file",
        "--disk",
        "0:size=64M",
        "-o",
        "noop",
        "-H",
        "fake",
        "--no-start",
        "dup",
        check=False,
    )
    assert res.returncode != 0 and "exists" in res.stderr
    assert [r["name"] for r in c.corral_json("instance", "list")] == ["dup"]

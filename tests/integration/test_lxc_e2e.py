"""Issue 5 end to end: a real single-host cluster runs LXC containers from the CLI.

``corral instance add -H lxc -o busybox`` creates the file disk, runs the busybox OS's
``create`` (which installs the root filesystem into disk 0, as for KVM), and starts the
container from it; the guest prints ``CORRAL-GUEST-UP`` on its console log. Then modify
(balloon = memory cgroup), stop, a failing start with LXC's own log lines, and remove.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.hypervisor.lxc import mounts
from tests.conftest import require_root, require_tool
from tests.integration.harness import LocalCluster

pytestmark = [pytest.mark.lxc, pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[LocalCluster, str]]:
    require_root()
    require_tool("lxc-start", "losetup", "mkfs.ext4", "cpio")
    root = Path(os.path.join("/tmp", f"crl-lxc-{os.getpid()}-{time.monotonic_ns() % 10**6}"))
    root.mkdir()
    bridge = f"crle{random.randint(0, 0xFFFFF):05x}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    c = LocalCluster(root, hypervisors=["lxc"])
    failed = True
    try:
        yield c, bridge
        failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    finally:
        try:
            c.close(show_logs=failed)
        finally:
            lxcpath = c.paths.hv_run_dir("lxc")
            if os.path.isdir(lxcpath):
                for name in os.listdir(lxcpath):
                    subprocess.run(["lxc-stop", "-P", lxcpath, "-n", name, "-k"], check=False)
            for mp in mounts.mounts_under(mounts.read_mountinfo(), str(root)):
                subprocess.run(["umount", "-l", mp], check=False)
            for dev, back in mounts.parse_losetup_json(
                subprocess.run(
                    ["losetup", "--list", "--json"], capture_output=True, text=True
                ).stdout
            ).items():
                if back.startswith(str(root)):
                    subprocess.run(["losetup", "-d", dev], check=False)
            subprocess.run(["ip", "link", "del", bridge], check=False)
            if not failed:
                shutil.rmtree(root, ignore_errors=True)


def _console(c: LocalCluster, name: str) -> str:
    try:
        return Path(c.paths.log_dir, "lxc", f"{name}.console.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _wait_console(c: LocalCluster, name: str, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in _console(c, name):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not on the console of {name}: {_console(c, name)[-1000:]}")


def _status(c: LocalCluster, name: str) -> dict[str, object]:
    rows = c.corral_json("instance", "list", "-o", "name,status,oper_ram", name)
    assert len(rows) == 1, rows
    return rows[0]


def test_container_add_start_console_modify_stop_remove(
    cluster: tuple[LocalCluster, str],
) -> None:
    c, bridge = cluster
    c.corral(
        "instance",
        "add",
        "-H",
        "lxc",
        "-t",
        "file",
        "--disk",
        "0:size=64M",
        "-o",
        "busybox",
        "-B",
        "maxmem=128M,minmem=64M,vcpus=1",
        "--net",
        f"0:link={bridge},ip=10.232.0.5",
        "ct1",
    )
    _wait_console(c, "ct1", "CORRAL-GUEST-UP ct1")
    assert _status(c, "ct1") == {"name": "ct1", "status": "running", "oper_ram": 128}
    lxcpath = c.paths.hv_run_dir("lxc")
    rootfs = os.path.join(lxcpath, "ct1", "rootfs")
    assert mounts.is_mounted(rootfs)
    # the OS install wrote the instance's files into disk 0
    assert Path(rootfs, "etc", "hostname").read_text().strip() == "ct1"
    inside = subprocess.run(
        ["lxc-attach", "-P", lxcpath, "-n", "ct1", "--", "ip", "-4", "addr", "show", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "10.232.0.5/24" in inside

    # console command through the API
    show = c.corral("instance", "console", "--show-cmd", "ct1").stdout
    assert "lxc-console" in show and "ct1" in show

    # memory change on a running container = memory cgroup limit
    c.corral("instance", "modify", "-m", "96M", "ct1")
    assert _status(c, "ct1")["oper_ram"] == 96

    c.corral("instance", "stop", "ct1")
    assert _status(c, "ct1")["status"] == "ADMIN_down"
    assert not mounts.is_mounted(rootfs)
    assert "corral-guest: stop requested" in _console(c, "ct1")

    # a start that LXC refuses fails with LXC's log line and leaves nothing behind
    bad = c.corral(
        "instance", "start", "-H", "lxc_extra_config=lxc.bogus.key=1", "ct1", check=False
    )
    assert bad.returncode != 0
    assert "lxc.bogus.key" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    assert not mounts.is_mounted(rootfs)
    assert not os.path.exists(os.path.join(lxcpath, "ct1"))

    c.corral("instance", "start", "ct1")
    _wait_console(c, "ct1", "CORRAL-GUEST-UP ct1")
    c.corral("instance", "remove", "-f", "ct1")
    assert c.corral_json("instance", "list") == []
    assert mounts.mounts_under(mounts.read_mountinfo(), str(c.paths.root)) == []

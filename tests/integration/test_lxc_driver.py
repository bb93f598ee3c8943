"""The LXC driver against real LXC (root): start, info, balloon, pinning, reboot, stop, failures.

The root filesystem is the busybox OS's guest: busybox plus the guest init that
``corral/osdefs/busybox/prepare-kernel`` writes (extracted from it here, so no kernel is
needed), packed into a raw ext4 image with ``mkfs.ext4 -d``, as the OS's ``create`` does.
Each test's teardown stops its containers by force and checks nothing is left: no container,
no mount under the run directory, no loop device on the image; the bridge is removed.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, HypervisorError, LaunchError
from corral.hypervisor.base import AttachedDisk, InstanceSpec, InstanceState, NicSpec
from corral.hypervisor.lxc import mounts
from corral.hypervisor.lxc.driver import Lxc
from tests.conftest import require_root, require_tool, unavailable

pytestmark = [pytest.mark.lxc, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
PREPARE_KERNEL = REPO / "corral" / "osdefs" / "busybox" / "prepare-kernel"


def guest_init() -> str:
    """The busybox OS's guest init, as prepare-kernel writes it."""
    text = PREPARE_KERNEL.read_text()
    m = re.search(r"<<'GUEST_INIT'\n(.*?)\nGUEST_INIT\n", text, re.S)
    assert m, "guest init not found in prepare-kernel"
    return m.group(1) + "\n"


def make_image(path: Path, init: str | None, *, size_mib: int = 24) -> Path:
    """A raw ext4 image with busybox and ``init`` as /sbin/init (None: no init)."""
    root = path.with_suffix(".root")
    for d in ("bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "run", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    if init is not None:
        (root / "sbin" / "init").write_text(init)
        os.chmod(root / "sbin" / "init", 0o755)
    (root / "etc" / "hostname").write_text("guest\n")
    with open(path, "wb") as fh:
        fh.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-F", "-q", "-d", str(root), str(path)], check=True)
    shutil.rmtree(root)
    return path


class Env:
    """A driver in a temporary root, a bridge, images; cleans up everything it made."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.driver = Lxc(str(tmp / "run" / "lxc"), log_dir=str(tmp / "log"))
        self.bridge = f"crlt{random.randint(0, 0xFFFFF):05x}"
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        self.names: list[str] = []
        self.images: list[Path] = []

    def image(self, name: str, init: str | None = "", **kw: int) -> Path:
        img = make_image(self.tmp / f"{name}.img", guest_init() if init == "" else init, **kw)
        self.images.append(img)
        return img

    def spec(self, name: str, **kw: object) -> InstanceSpec:
        self.names.append(name)
        base: dict[str, object] = {
            "name": name,
            "uuid": f"{random.getrandbits(64):016x}",
            "hypervisor": "lxc",
            "hvparams": {},
            "memory": 128,
            "min_memory": 64,
            "vcpus": 1,
            "nics": [
                NicSpec(
                    index=0, uuid="n0", mac="aa:00:00:5e:00:01", link=self.bridge, ip="10.231.0.2"
                )
            ],
        }
        base.update(kw)
        return InstanceSpec.model_validate(base)

    @staticmethod
    def disk(img: Path) -> list[AttachedDisk]:
        return [AttachedDisk(index=0, uuid="d0", path=str(img), size=24)]

    def console(self, name: str) -> str:
        try:
            return Path(self.driver.log_dir, f"{name}.console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, name: str, pattern: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.console(name)):
                return
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not on {name}'s console: {self.console(name)[-800:]}")

    def attach(self, name: str, *argv: str) -> str:
        res = subprocess.run(
            self.driver.tools.attach_argv(name, argv), capture_output=True, text=True, timeout=30
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    def assert_nothing_left(self, name: str, img: Path | None = None) -> None:
        state, pid = self.driver.tools.info(name)
        assert (state, pid) == ("STOPPED", None)
        assert mounts.mounts_under(mounts.read_mountinfo(), self.driver.run_dir) == []
        if img is not None:
            assert mounts.loops_backing(self.driver.runner, str(img)) == []
        assert not os.path.exists(os.path.join(self.driver.run_dir, name))
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert f"master {self.bridge}" not in links, links

    def close(self) -> None:
        try:
            for name in self.names:
                try:
                    self.driver.stop(name, timeout=0, force=True)
                except Exception:
                    subprocess.run(
                        ["lxc-stop", "-P", self.driver.run_dir, "-n", name, "-k"], check=False
                    )
            for mp in mounts.mounts_under(mounts.read_mountinfo(), str(self.tmp)):
                subprocess.run(["umount", "-l", mp], check=False)
            for img in self.images:
                for dev in mounts.loops_backing(self.driver.runner, str(img)):
                    subprocess.run(["losetup", "-d", dev], check=False)
        finally:
            subprocess.run(["ip", "link", "del", self.bridge], check=False)


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    require_root()
    require_tool("lxc-start", "losetup", "mkfs.ext4")
    if not os.path.exists("/bin/busybox"):
        unavailable("busybox-static missing")
    e = Env(tmp_path)
    try:
        yield e
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for f in sorted(Path(e.driver.log_dir).glob("*")):
                print(f"--- {f} ---\n{f.read_text(errors='replace')[-3000:]}")
        e.close()


def test_verify_and_node_info(env: Env):
    assert env.driver.verify() == []
    info = env.driver.node_info()
    assert info.hv_version.startswith(("4.", "5.", "6."))
    assert "memory" in info.details["cgroup_controllers"]


def test_start_info_balloon_pin_reboot_stop(env: Env):
    img = env.image("c1")
    spec = env.spec("c1", hvparams={"cpu_mask": "1"} if (os.cpu_count() or 1) > 1 else {})
    env.driver.start(spec, env.disk(img))
    env.wait_console("c1", r"CORRAL-GUEST-UP ")
    assert env.driver.list_instances() == ["c1"]
    info = env.driver.instance_info("c1")
    assert info is not None and info.state == InstanceState.RUNNING
    assert info.memory == 128 and info.pid
    cg = env.driver._running("c1")[2]
    assert cg.read(
        "memory", "memory.limit_in_bytes" if cg.layout.version_of("memory") == 1 else "memory.max"
    ) == str(128 << 20)
    # the static address and the MAC, seen from inside
    addr = env.attach("c1", "ip", "addr", "show", "eth0")
    assert "10.231.0.2/24" in addr and "aa:00:00:5e:00:01" in addr

    # balloon: the cgroup file and the limit as the container sees its own cgroup
    assert env.driver.balloon("c1", 96) == 96
    assert env.driver.instance_info("c1").memory == 96  # type: ignore[union-attr]
    inside = env.attach("c1", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert int(inside) == 96 << 20
    with pytest.raises(HypervisorError) as err:
        env.driver.balloon("c1", 512)
    assert err.value.kind == ErrorKind.INVALID

    # pinning: the cpuset file and the affinity of a process inside
    env.driver.pin_cpus("c1", "0")
    assert env.driver.instance_info("c1").details["cpus"] == "0"  # type: ignore[union-attr]
    assert "Cpus_allowed_list:\t0\n" in env.attach("c1", "cat", "/proc/self/status")
    env.driver.pin_cpus("c1", "all")
    assert env.driver.instance_info("c1").vcpus == os.cpu_count()  # type: ignore[union-attr]
    with pytest.raises(HypervisorError) as err:
        env.driver.pin_cpus("c1", "4000")
    assert err.value.kind == ErrorKind.INVALID

    # pause / resume
    env.driver.pause("c1")
    assert env.driver.instance_info("c1").state == InstanceState.PAUSED  # type: ignore[union-attr]
    env.driver.resume("c1")

    # reboot: a new init, the same config (memory back to maxmem)
    old_pid = info.pid
    env.driver.reboot("c1", hard=False)
    env.wait_console("c1", r"CORRAL-GUEST-UP ")
    again = env.driver.instance_info("c1")
    assert again is not None and again.pid != old_pid and again.memory == 128

    # a second start is refused
    with pytest.raises(HypervisorError) as err:
        env.driver.start(spec, env.disk(img))
    assert err.value.kind == ErrorKind.WRONG_STATE

    t0 = time.monotonic()
    env.driver.stop("c1", timeout=20)
    assert time.monotonic() - t0 < 5, "a clean stop of the busybox guest should be quick"
    assert "corral-guest: stop requested" in env.console("c1")
    env.assert_nothing_left("c1", img)
    assert env.driver.instance_info("c1") is None
    env.driver.stop("c1", timeout=5)  # stopping a stopped container succeeds


def test_bad_extra_config_fails_with_lxc_log_and_leaves_nothing(env: Env):
    img = env.image("bad1")
    spec = env.spec("bad1", hvparams={"lxc_extra_config": "lxc.bogus.key=1"})
    with pytest.raises(LaunchError) as err:
        env.driver.start(spec, env.disk(img))
    assert "lxc.bogus.key" in str(err.value), str(err.value)
    env.assert_nothing_left("bad1", img)


def test_rootfs_without_init_fails_with_lxc_log_and_leaves_nothing(env: Env):
    img = env.image("noinit", init=None)
    with pytest.raises(LaunchError) as err:
        env.driver.start(env.spec("noinit"), env.disk(img))
    assert "ERROR" in str(err.value) or "init" in str(err.value), str(err.value)
    env.assert_nothing_left("noinit", img)


def test_disk_without_filesystem_and_missing_bridge(env: Env):
    blank = env.tmp / "blank.img"
    with open(blank, "wb") as fh:
        fh.truncate(16 << 20)
    env.images.append(blank)
    with pytest.raises(HypervisorError) as err:
        env.driver.start(env.spec("blank"), env.disk(blank))
    assert err.value.kind == ErrorKind.INVALID and "cannot mount the root disk" in str(err.value)
    env.assert_nothing_left("blank", blank)

    img = env.image("nobr")
    nic = NicSpec(index=0, uuid="n0", mac="aa:00:00:5e:00:09", link="crl-no-such-br")
    with pytest.raises(LaunchError) as err2:
        env.driver.start(env.spec("nobr", nics=[nic]), env.disk(img))
    assert "crl-no-such-br" in str(err2.value) or "ERROR" in str(err2.value)
    env.assert_nothing_left("nobr", img)


def test_hanging_stop_is_bounded_then_forced(env: Env):
    stubborn = (
        "#!/bin/busybox sh\ntrap '' PWR TERM INT\necho STUBBORN-UP\nwhile :; do sleep 1; done\n"
    )
    img = env.image("hang", init=stubborn)
    env.driver.start(env.spec("hang", nics=[]), env.disk(img))
    env.wait_console("hang", "STUBBORN-UP")
    t0 = time.monotonic()
    env.driver.stop("hang", timeout=2)
    took = time.monotonic() - t0
    assert 2 <= took < 8, took
    env.assert_nothing_left("hang", img)

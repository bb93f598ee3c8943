"""cgroup layout detection and container cgroup files (v1, v2, hybrid), mount-table parsing.

The mount tables and /proc/<pid>/cgroup texts in tests/data/lxc/ are captured from this
project's CI machine (hybrid: v1 controllers plus an empty unified mount) and from a
cgroup-v2-only Debian 12 host. File reads and writes go to a temporary directory laid out
like /sys/fs/cgroup.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.lxc.cgroup import (
    CgroupLayout,
    ContainerCgroup,
    format_cpu_list,
    layout_from_mountinfo,
    parse_cpu_list,
    parse_cpu_stat_usec,
    parse_proc_cgroup,
)
from corral.hypervisor.lxc.mounts import mounts_under, parse_losetup_json, parse_mountinfo

DATA = Path(__file__).resolve().parents[2] / "data" / "lxc"


def _text(name: str) -> str:
    return (DATA / name).read_text()


def test_hybrid_layout_uses_v1_controllers_and_ignores_named_hierarchies():
    layout = layout_from_mountinfo(parse_mountinfo(_text("mountinfo-hybrid-v1.txt")), "")
    assert layout.v1["memory"] == "/sys/fs/cgroup/memory"
    assert layout.v1["cpuset"] == "/sys/fs/cgroup/cpuset"
    assert "name=systemd" not in layout.v1 and "systemd" not in layout.v1
    assert layout.v2_mount == "/sys/fs/cgroup/unified"
    assert layout.version_of("memory") == 1
    assert layout.version_of("rdma") is None
    assert not layout.pure_v2


def test_v2_layout_takes_controllers_from_cgroup_controllers():
    layout = layout_from_mountinfo(
        parse_mountinfo(_text("mountinfo-v2.txt")), _text("cgroup.controllers-v2.txt")
    )
    assert layout.v1 == {}
    assert layout.v2_mount == "/sys/fs/cgroup"
    assert layout.pure_v2
    assert layout.version_of("memory") == 2
    assert layout.version_of("devices") is None  # LXC uses eBPF for devices on v2
    assert {"cpuset", "memory", "pids"} <= layout.controllers()


def test_comanaged_v1_hierarchies_and_flags():
    text = (
        "28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
        "29 25 0:26 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio\n"
        "30 25 0:27 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset,clone_children\n"
        "31 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,xattr,memory\n"
    )
    layout = layout_from_mountinfo(parse_mountinfo(text), "")
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1["net_prio"] == "/sys/fs/cgroup/net_cls,net_prio"
    assert "clone_children" not in layout.v1 and "xattr" not in layout.v1
    assert layout.version_of("memory") == 1


def test_proc_cgroup_parsing():
    v1 = parse_proc_cgroup(_text("proc-cgroup-v1.txt"))
    assert v1["memory"] == "/lxc.payload.web1"
    assert v1[""] == "/lxc.payload.web1"
    assert "name=systemd" not in v1
    assert parse_proc_cgroup(_text("proc-cgroup-v2.txt")) == {"": "/lxc.payload.web1"}
    combined = parse_proc_cgroup("4:cpu,cpuacct:/a/b\n")
    assert combined == {"cpu": "/a/b", "cpuacct": "/a/b"}


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-2,4", {0, 1, 2, 4}), ("1", {1}), ("", set()), ("0-1,3-5\n", {0, 1, 3, 4, 5})],
)
def test_cpu_lists_round_trip(text: str, cpus: set[int]):
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


def test_format_cpu_list_uses_ranges():
    assert format_cpu_list([4, 0, 2, 1]) == "0-2,4"
    assert format_cpu_list([]) == ""
    with pytest.raises(ValueError, match="bad CPU range"):
        parse_cpu_list("3-1")


def test_cpu_stat_v2():
    assert parse_cpu_stat_usec(_text("cpu.stat-v2.txt")) == 1234567
    assert parse_cpu_stat_usec("user_usec 5\n") == 0


def test_mountinfo_unescapes_and_orders_submounts_deepest_first():
    text = (
        "50 1 7:0 / /run/hv/lxc/c1/rootfs rw - ext4 /dev/loop0 rw\n"
        "51 50 0:40 / /run/hv/lxc/c1/rootfs/proc rw - proc proc rw\n"
        "52 50 0:41 / /run/hv/lxc/c1/rootfs/mnt/a\\040b rw - tmpfs tmpfs rw\n"
        "53 52 0:42 / /run/hv/lxc/c1/rootfs/mnt/a\\040b/c rw - tmpfs tmpfs rw\n"
        "54 1 0:43 / /run/hv/lxc/c10/rootfs rw - ext4 /dev/loop1 rw\n"
    )
    entries = parse_mountinfo(text)
    assert entries[2].mount_point == "/run/hv/lxc/c1/rootfs/mnt/a b"
    order = mounts_under(entries, "/run/hv/lxc/c1/rootfs")
    assert order[0] == "/run/hv/lxc/c1/rootfs/mnt/a b/c"
    assert order[-1] == "/run/hv/lxc/c1/rootfs"
    assert "/run/hv/lxc/c10/rootfs" not in order  # a sibling with a common prefix


def test_losetup_json():
    text = (
        '{"loopdevices": [{"name": "/dev/loop0", "back-file": "/srv/d/a.img"},'
        ' {"name": "/dev/loop3", "back-file": "/srv/d/b.img (deleted)"}]}'
    )
    assert parse_losetup_json(text) == {"/dev/loop0": "/srv/d/a.img", "/dev/loop3": "/srv/d/b.img"}
    assert parse_losetup_json("") == {}


# --- files of one container --------------------------------------------------------------


@pytest.fixture
def v1_tree(tmp_path: Path) -> ContainerCgroup:
    for ctl in ("memory", "cpuset", "cpuacct", "pids"):
        d = tmp_path / ctl / "lxc.payload.c1"
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text("")
    base = tmp_path / "memory" / "lxc.payload.c1"
    (base / "memory.limit_in_bytes").write_text(str(128 << 20) + "\n")
    (base / "memory.usage_in_bytes").write_text(str(3 << 20))
    (tmp_path / "cpuset" / "lxc.payload.c1" / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuacct" / "lxc.payload.c1" / "cpuacct.usage").write_text("2500000000\n")
    layout = CgroupLayout(
        v1={c: str(tmp_path / c) for c in ("memory", "cpuset", "cpuacct", "pids")}
    )
    return ContainerCgroup(
        layout, parse_proc_cgroup(_text("proc-cgroup-v1.txt").replace("web1", "c1"))
    )


def test_v1_container_files(v1_tree: ContainerCgroup):
    assert v1_tree.memory_limit() == 128 << 20
    assert v1_tree.memory_usage() == 3 << 20
    assert v1_tree.cpuset() == {0, 1}
    assert v1_tree.cpu_time() == pytest.approx(2.5)
    v1_tree.set_memory_limit(96)
    assert v1_tree.memory_limit() == 96 << 20
    v1_tree.set_cpuset({1})
    assert v1_tree.read("cpuset", "cpuset.cpus") == "1"


def test_v1_unlimited_memory(v1_tree: ContainerCgroup):
    path = os.path.join(v1_tree.dir_of("memory"), "memory.limit_in_bytes")
    Path(path).write_text("9223372036854771712\n")
    assert v1_tree.memory_limit() is None


def test_v2_container_files(tmp_path: Path):
    d = tmp_path / "lxc.payload.c2"
    d.mkdir()
    (d / "memory.max").write_text("max\n")
    (d / "memory.current").write_text(str(5 << 20))
    (d / "cpuset.cpus.effective").write_text("1\n")
    (d / "cpu.stat").write_text(_text("cpu.stat-v2.txt"))
    layout = CgroupLayout(
        v2_mount=str(tmp_path), v2_controllers=frozenset({"memory", "cpuset", "cpu"})
    )
    cg = ContainerCgroup(layout, {"": "/lxc.payload.c2"})
    assert cg.memory_limit() is None
    cg.set_memory_limit(64)
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert cg.memory_limit() == 64 << 20
    assert cg.memory_usage() == 5 << 20
    assert cg.cpuset() == {1}
    assert cg.cpu_time() == pytest.approx(1.234567)


def test_missing_controller_is_an_environment_error(v1_tree: ContainerCgroup):
    with pytest.raises(HypervisorError) as err:
        v1_tree.dir_of("rdma")
    assert err.value.kind == ErrorKind.ENVIRONMENT
    assert "rdma" in str(err.value)


def test_kill_all_kills_the_processes_listed_in_the_cgroup(v1_tree: ContainerCgroup):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        procs = Path(v1_tree.dir_of("pids")) / "cgroup.procs"
        procs.write_text(f"{proc.pid}\n")
        assert v1_tree.pids() == {proc.pid}
        # the fake cgroup file does not empty itself: clear it once the process is dead
        left = v1_tree.kill_all(timeout=0.3)
        assert proc.wait(timeout=5) == -9
        assert left == {proc.pid}  # still listed in the (fake) file, but the process is gone
    finally:
        proc.kill()
        proc.wait()

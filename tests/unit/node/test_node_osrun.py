"""Running OS scripts through NodeBackend: env, log files, failures, timeouts, qcow2 raw views.

The OS definitions here are small real shell scripts written by the tests; disks are real
files made by the file storage driver (qemu-img for qcow2).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, OsError, StorageError
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceSpec, NicSpec
from corral.node.backend import NodeBackend, osrun
from corral.rpc.calls import (
    BlockdevRequest,
    DiskRef,
    Empty,
    OsCreateRequest,
    OsRenameRequest,
    OsVerifyRequest,
)
from corral.storage.base import VolumeSpec
from tests.conftest import require_tool

MiB = 1024 * 1024


def write_os(base: Path, name: str, scripts: dict[str, str], *, params: str = "") -> Path:
    d = base / name
    d.mkdir(parents=True)
    (d / "ganeti_api_version").write_text("20\n15\n10\n")
    (d / "variants.list").write_text("one\ntwo\n")
    (d / "parameters.list").write_text(params)
    for script in ("create", "export", "import", "rename", "verify"):
        p = d / script
        p.write_text("#!/bin/sh\n" + scripts.get(script, "exit 0") + "\n")
        p.chmod(0o755)
    return d


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(str(tmp_path / "root"))


@pytest.fixture
def backend(paths: Paths) -> NodeBackend:
    return NodeBackend(paths, "node1")


@pytest.fixture
def osdir(paths: Paths) -> Path:
    d = Path(paths.os_search_path[0])
    d.mkdir(parents=True)
    return d


def spec(name: str = "vm1") -> InstanceSpec:
    return InstanceSpec(
        name=name,
        uuid="uuid-" + name,
        hypervisor="fake",
        hvparams={},
        memory=128,
        min_memory=64,
        vcpus=1,
        nics=[NicSpec(index=0, uuid="nic0", mac="aa:00:00:00:00:01", link="br0")],
    )


def disk(
    backend: NodeBackend, paths: Paths, index: int, fmt: str = "raw", size: int = 8
) -> DiskRef:
    require_tool("qemu-img")
    v = VolumeSpec(
        dev_type="file",
        logical_id=os.path.join(paths.file_storage_dir, "vm1", f"disk{index}.{fmt}"),
        size=size,
        format=fmt,
        uuid=f"d{index}",
    )
    backend.blockdev_create(BlockdevRequest(volume=v))
    return DiskRef(index=index, volume=v)


def test_create_env_is_cleared_and_complete(
    backend: NodeBackend, paths: Paths, osdir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "env"
    write_os(osdir, "dump", {"create": f'env | sort > {out}; echo "cwd=$(pwd)"'}, params="p1 x\n")
    d0 = disk(backend, paths, 0)
    os.environ["CORRAL_SHOULD_NOT_LEAK"] = "1"
    try:
        resp = backend.os_create(
            OsCreateRequest(
                instance=spec(), disks=[d0], os="dump", osparams={"p1": "v1"}, reinstall=True
            )
        )
    finally:
        del os.environ["CORRAL_SHOULD_NOT_LEAK"]
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert "CORRAL_SHOULD_NOT_LEAK" not in env and "HOME" not in env
    # sh itself adds PWD; everything else comes from build_env
    assert set(env) - {"PWD"} == {
        "PATH", "OS_API_VERSION", "OS_NAME", "OS_VARIANT", "DEBUG_LEVEL", "OSP_P1",
        "INSTANCE_NAME", "INSTANCE_OS", "INSTANCE_UUID", "INSTANCE_PRIMARY_NODE", "HYPERVISOR",
        "DISK_COUNT", "DISK_0_PATH", "DISK_0_SIZE", "DISK_0_ACCESS", "DISK_0_UUID",
        "DISK_0_BACKEND_TYPE", "NIC_COUNT", "NIC_0_MAC", "NIC_0_UUID", "NIC_0_MODE",
        "NIC_0_BRIDGE", "NIC_0_LINK", "INSTANCE_BE_maxmem", "INSTANCE_BE_minmem",
        "INSTANCE_BE_vcpus", "CORRAL_CACHE_DIR", "CORRAL_KERNELS_DIR", "INSTANCE_REINSTALL",
    }  # fmt: skip
    assert env["OS_VARIANT"] == "one"  # default variant: the first
    assert env["INSTANCE_REINSTALL"] == "1"
    assert env["DISK_0_PATH"] == d0.volume.logical_id
    assert env["INSTANCE_PRIMARY_NODE"] == "node1"
    log_dir = os.path.join(paths.log_dir, "os")
    assert os.path.dirname(resp.log_file) == log_dir
    assert re.fullmatch(
        r"add-dump-vm1-\d{4}-\d\d-\d\d_\d\d_\d\d_\d\d_\d+\.log", os.path.basename(resp.log_file)
    )
    assert f"cwd={osdir / 'dump'}" in resp.output_tail


def test_failing_script_raises_with_last_lines(
    backend: NodeBackend, paths: Paths, osdir: Path
) -> None:
    body = (
        "i=0; while [ $i -lt 30 ]; do echo line$i; i=$((i+1)); done; echo 'disk full' >&2; exit 4"
    )
    write_os(osdir, "failing", {"create": body})
    with pytest.raises(OsError) as exc:
        backend.os_create(
            OsCreateRequest(instance=spec(), disks=[disk(backend, paths, 0)], os="failing")
        )
    msg = str(exc.value)
    assert "exit code 4" in msg and "disk full" in msg and "line29" in msg
    assert "line5\n" not in msg  # only the last 20 lines
    assert exc.value.fields["rc"] == 4
    log_file = exc.value.fields["log_file"]
    with open(log_file) as fh:
        assert "line0" in fh.read()


def test_script_timeout(
    backend: NodeBackend, paths: Paths, osdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_os(osdir, "slow", {"create": "echo working; sleep 60"})
    monkeypatch.setattr(osrun, "CREATE_TIMEOUT", 0.5)
    start = time.monotonic()
    with pytest.raises(OsError) as exc:
        backend.os_create(
            OsCreateRequest(instance=spec(), disks=[disk(backend, paths, 0)], os="slow")
        )
    assert time.monotonic() - start < 10
    assert "timed out after 0.5s" in str(exc.value) and "working" in str(exc.value)


def test_unknown_os_variant_and_params(backend: NodeBackend, paths: Paths, osdir: Path) -> None:
    write_os(osdir, "x", {"create": "exit 0"}, params="good doc\n")
    d0 = disk(backend, paths, 0)
    for os_name, params, kind in [
        ("nosuch", {}, ErrorKind.NOT_FOUND),
        ("x+three", {}, ErrorKind.INVALID),
        ("x", {"bad": "1"}, ErrorKind.INVALID),
        ("../x", {}, ErrorKind.INVALID),
    ]:
        with pytest.raises(OsError) as exc:
            backend.os_create(
                OsCreateRequest(instance=spec(), disks=[d0], os=os_name, osparams=params)
            )
        assert exc.value.kind is kind, os_name
    assert not os.path.isdir(os.path.join(paths.log_dir, "os")) or not os.listdir(
        os.path.join(paths.log_dir, "os")
    )


def test_missing_disk_names_its_index(backend: NodeBackend, paths: Paths, osdir: Path) -> None:
    write_os(osdir, "x", {})
    d0 = disk(backend, paths, 0)
    missing = DiskRef(
        index=1,
        volume=VolumeSpec(
            dev_type="file", logical_id=os.path.join(paths.file_storage_dir, "gone"), size=8
        ),
    )
    with pytest.raises(StorageError) as exc:
        backend.os_create(OsCreateRequest(instance=spec(), disks=[d0, missing], os="x"))
    assert exc.value.kind is ErrorKind.NOT_FOUND
    assert "disk 1" in str(exc.value)


def test_qcow2_gets_a_raw_view_converted_back(
    backend: NodeBackend, paths: Paths, osdir: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    write_os(
        osdir,
        "writer",
        {
            "create": f'echo "$DISK_0_PATH $(stat -c %s "$DISK_0_PATH")" > {seen}; '
            "printf CORRAL-RAW-VIEW | "
            'dd of="$DISK_0_PATH" bs=1 seek=1048576 conv=notrunc 2>/dev/null',
            "rename": f'echo "$DISK_0_PATH $OLD_INSTANCE_NAME" > {seen}; '
            'dd if="$DISK_0_PATH" bs=1 skip=1048576 count=15 2>/dev/null; '
            'printf RENAMED | dd of="$DISK_0_PATH" bs=1 seek=2097152 conv=notrunc 2>/dev/null',
        },
    )
    d0 = disk(backend, paths, 0, fmt="qcow2", size=16)
    image = d0.volume.logical_id
    backend.os_create(OsCreateRequest(instance=spec(), disks=[d0], os="writer"))
    view_path, view_size = seen.read_text().split()
    assert view_path != image and os.path.dirname(view_path) == os.path.dirname(image)
    assert int(view_size) == 16 * MiB
    assert not os.path.exists(view_path)
    assert sorted(os.listdir(os.path.dirname(image))) == ["disk0.qcow2"]
    raw = tmp_path / "check.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, str(raw)], check=True)
    data = raw.read_bytes()
    assert data[MiB : MiB + 15] == b"CORRAL-RAW-VIEW"
    # rename gets a copy of the current content, and its changes are kept too
    resp = backend.os_rename(
        OsRenameRequest(instance=spec("vm2"), disks=[d0], os="writer", old_name="vm1")
    )
    assert "CORRAL-RAW-VIEW" in resp.output_tail
    assert os.path.basename(resp.log_file).startswith("rename-writer-vm1-vm2-")
    assert seen.read_text().split()[1] == "vm1"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, str(raw)], check=True)
    data = raw.read_bytes()
    assert data[2 * MiB : 2 * MiB + 7] == b"RENAMED"
    assert sorted(os.listdir(os.path.dirname(image))) == ["disk0.qcow2"]


def test_qcow2_failed_script_leaves_image_and_no_temp(
    backend: NodeBackend, paths: Paths, osdir: Path
) -> None:
    write_os(
        osdir,
        "half",
        {"create": 'printf GARBAGE | dd of="$DISK_0_PATH" conv=notrunc 2>/dev/null; exit 1'},
    )
    d0 = disk(backend, paths, 0, fmt="qcow2")
    image = Path(d0.volume.logical_id)
    before = image.read_bytes()
    with pytest.raises(OsError):
        backend.os_create(OsCreateRequest(instance=spec(), disks=[d0], os="half"))
    assert image.read_bytes() == before
    assert sorted(os.listdir(os.path.dirname(d0.volume.logical_id))) == ["disk0.qcow2"]


def test_verify_runs_verify_parameters(backend: NodeBackend, osdir: Path, tmp_path: Path) -> None:
    args = tmp_path / "args"
    write_os(
        osdir,
        "v",
        {
            "verify": f'echo "$*" > {args}; '
            'if [ "$OSP_SIZE" = bad ]; then echo "size must be a number" >&2; exit 1; fi'
        },
        params="size the size\n",
    )
    assert backend.os_verify(OsVerifyRequest(os="v+two", osparams={"size": "3"})) == Empty()
    assert args.read_text().strip() == "parameters"
    with pytest.raises(OsError) as exc:
        backend.os_verify(OsVerifyRequest(os="v", osparams={"size": "bad"}))
    assert exc.value.kind is ErrorKind.INVALID
    assert "size must be a number" in str(exc.value)


def test_diagnose_through_backend(backend: NodeBackend, osdir: Path) -> None:
    write_os(osdir, "mine", {})
    names = {o.name: o for o in backend.os_diagnose(Empty()).oses}
    assert names["mine"].valid and names["mine"].variants == ["one", "two"]
    assert names["busybox"].builtin


def test_log_file_name_never_leaves_the_log_dir(paths: Paths) -> None:
    path = osrun.log_file_name(paths, "add", "busybox+default", "../../etc/evil name")
    assert os.path.dirname(path) == os.path.join(paths.log_dir, "os")
    assert os.path.basename(path).startswith("add-busybox+default-.._.._etc_evil_name-")
    assert os.path.isfile(path)

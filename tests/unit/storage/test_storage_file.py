"""The ``file`` storage driver against real files (and the real qemu-img) in temporary dirs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from corral.common import runcmd
from corral.common.errors import CommandError, ErrorKind, StorageError
from corral.common.paths import Paths
from corral.storage.base import VolumeSpec
from corral.storage.file import FileStorage, parse_qemu_img_info
from corral.storage.registry import get_storage
from tests.conftest import require_root, require_tool

DATA = Path(__file__).resolve().parents[2] / "data" / "qemu-img"
MiB = 1024 * 1024


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(str(tmp_path / "root"))


@pytest.fixture
def driver(paths: Paths) -> FileStorage:
    require_tool("qemu-img")
    drv = get_storage("file", paths)
    assert isinstance(drv, FileStorage)
    return drv


def vol(paths: Paths, rel: str, size: int = 64, fmt: str = "raw", **params: str) -> VolumeSpec:
    return VolumeSpec(
        dev_type="file",
        logical_id=os.path.join(paths.file_storage_dir, rel),
        size=size,
        format=fmt,
        params=dict(params),
    )


# --- parsing captured qemu-img output ------------------------------------------------------------


def test_parse_qemu_img_info_qcow2() -> None:
    info = parse_qemu_img_info((DATA / "info-qcow2-64M.json").read_text(), "/x")
    assert (info.virtual_size, info.actual_size, info.format) == (64 * MiB, 200704, "qcow2")


def test_parse_qemu_img_info_raw() -> None:
    info = parse_qemu_img_info((DATA / "info-raw-32M.json").read_text(), "/x")
    assert (info.virtual_size, info.actual_size, info.format) == (32 * MiB, 0, "raw")


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"format": "raw"}', '{"virtual-size": 1}'])
def test_parse_qemu_img_info_rejects_garbage(text: str) -> None:
    with pytest.raises(StorageError):
        parse_qemu_img_info(text, "/x")


def test_registry_unknown_type(paths: Paths) -> None:
    with pytest.raises(StorageError) as exc:
        get_storage("plain", paths)
    assert exc.value.kind is ErrorKind.INVALID
    assert "plain" in str(exc.value)


# --- create / find / grow / remove ---------------------------------------------------------------


def test_create_raw_is_sparse_and_exact(driver: FileStorage, paths: Paths) -> None:
    v = vol(paths, "vm1/disk0.raw", size=128)
    info = driver.create(v)
    assert info.path == v.logical_id and info.size == 128 and info.format == "raw"
    st = os.stat(v.logical_id)
    assert st.st_size == 128 * MiB
    assert st.st_blocks * 512 < MiB  # sparse: nothing allocated yet
    assert oct(st.st_mode & 0o777) == oct(0o600)


def test_create_qcow2(driver: FileStorage, paths: Paths) -> None:
    v = vol(paths, "vm1/disk0.qcow2", size=256, fmt="qcow2")
    info = driver.create(v)
    assert (info.size, info.format) == (256, "qcow2")
    out = subprocess.run(
        ["qemu-img", "info", "-f", "qcow2", v.logical_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "virtual size: 256 MiB" in out
    assert os.path.getsize(v.logical_id) < MiB  # metadata only


def test_create_existing_refused_and_kept(driver: FileStorage, paths: Paths) -> None:
    v = vol(paths, "vm1/disk0.raw")
    driver.create(v)
    with open(v.logical_id, "r+b") as fh:
        fh.write(b"payload")
    with pytest.raises(StorageError) as exc:
        driver.create(v)
    assert exc.value.kind is ErrorKind.EXISTS
    with open(v.logical_id, "rb") as fh:
        assert fh.read(7) == b"payload"


def test_find_missing_is_none(driver: FileStorage, paths: Paths) -> None:
    assert driver.find(vol(paths, "nope.raw")) is None


def test_find_wrong_format_is_an_error(driver: FileStorage, paths: Paths) -> None:
    driver.create(vol(paths, "vm1/disk0", fmt="raw"))
    with pytest.raises(StorageError) as exc:
        driver.find(vol(paths, "vm1/disk0", fmt="qcow2"))
    assert "qcow2" in str(exc.value)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_grow(driver: FileStorage, paths: Paths, fmt: str) -> None:
    v = vol(paths, f"vm1/disk0.{fmt}", size=64, fmt=fmt)
    driver.create(v)
    info = driver.grow(v, 32)
    assert info.size == 96
    found = driver.find(v)
    assert found is not None and found.size == 96 and found.format == fmt


def test_grow_missing_and_bad_amount(driver: FileStorage, paths: Paths) -> None:
    v = vol(paths, "vm1/disk0.raw")
    with pytest.raises(StorageError) as exc:
        driver.grow(v, 10)
    assert exc.value.kind is ErrorKind.NOT_FOUND
    driver.create(v)
    with pytest.raises(StorageError) as exc:
        driver.grow(v, 0)
    assert exc.value.kind is ErrorKind.INVALID


def test_remove_prunes_empty_dirs_and_is_idempotent(driver: FileStorage, paths: Paths) -> None:
    a = vol(paths, "vm1/disk0.raw")
    b = vol(paths, "vm1/disk1.qcow2", fmt="qcow2")
    driver.create(a)
    driver.create(b)
    driver.remove(a)
    assert os.path.isdir(os.path.dirname(a.logical_id))  # disk1 still there
    driver.remove(b)
    assert not os.path.exists(os.path.dirname(a.logical_id))
    assert os.path.isdir(paths.file_storage_dir)  # the storage dir itself stays
    driver.remove(b)  # missing: fine


def test_rename_moves_and_retries(driver: FileStorage, paths: Paths) -> None:
    v = vol(paths, "vm1/disk0.raw")
    driver.create(v)
    new = os.path.join(paths.file_storage_dir, "vm2/disk0.raw")
    info = driver.rename(v, new)
    assert info.path == new and os.path.exists(new)
    assert not os.path.exists(os.path.dirname(v.logical_id))
    assert driver.rename(v, new).path == new  # retried rename: already done


def test_rename_refuses_existing_target(driver: FileStorage, paths: Paths) -> None:
    a, b = vol(paths, "a.raw"), vol(paths, "b.raw")
    driver.create(a)
    driver.create(b)
    with pytest.raises(StorageError) as exc:
        driver.rename(a, b.logical_id)
    assert exc.value.kind is ErrorKind.EXISTS
    assert os.path.exists(a.logical_id)


def test_space_of_missing_dir_uses_parent(driver: FileStorage, tmp_path: Path) -> None:
    total, free = driver.space(str(tmp_path / "does/not/exist"))
    st = os.statvfs(tmp_path)
    assert total == st.f_blocks * st.f_frsize // MiB
    assert 0 < free <= total


def test_storage_dir_from_params(driver: FileStorage, tmp_path: Path, paths: Paths) -> None:
    other = tmp_path / "cluster-disks"
    v = VolumeSpec(
        dev_type="file",
        logical_id=str(other / "vm1" / "d0"),
        size=8,
        params={"storage_dir": str(other)},
    )
    # file storage is node-local: the master's path is re-rooted under the node's root
    info = driver.create(v)
    assert info.path == paths.root + str(other / "vm1" / "d0")
    assert info.logical_id == v.logical_id
    assert os.path.isfile(info.path) and not os.path.exists(v.logical_id)
    assert driver.list_volumes(str(other)) == [v.logical_id]
    # the same path is refused when the default storage dir applies
    with pytest.raises(StorageError) as exc:
        driver.find(VolumeSpec(dev_type="file", logical_id=v.logical_id, size=8))
    assert exc.value.kind is ErrorKind.INVALID


# --- paths that escape the storage dir -----------------------------------------------------------


@pytest.mark.parametrize(
    "logical_id",
    [
        "relative/disk",
        "{sd}/../escape",
        "{sd}/vm1/../../escape",
        "{sd}//vm1",
        "{sd}/./vm1",
        "{sd}",
        "{sd}/",
        "/etc/passwd",
        "{sd}-sibling/disk",
        "{sd}/vm1/disk\n0",
        "",
    ],
)
def test_path_escape_refused(driver: FileStorage, paths: Paths, logical_id: str) -> None:
    v = VolumeSpec(dev_type="file", logical_id=logical_id.format(sd=paths.file_storage_dir), size=8)
    for action in (driver.create, driver.find, driver.remove):
        with pytest.raises(StorageError) as exc:
            action(v)
        assert exc.value.kind is ErrorKind.INVALID
    assert not os.path.exists(os.path.join(os.path.dirname(paths.file_storage_dir), "escape"))


def test_symlinked_dir_escape_refused(driver: FileStorage, paths: Paths, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.makedirs(paths.file_storage_dir)
    os.symlink(outside, os.path.join(paths.file_storage_dir, "vm1"))
    with pytest.raises(StorageError) as exc:
        driver.create(vol(paths, "vm1/disk0"))
    assert exc.value.kind is ErrorKind.INVALID
    assert list(outside.iterdir()) == []


def test_symlinked_file_refused(driver: FileStorage, paths: Paths, tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("x")
    os.makedirs(paths.file_storage_dir)
    os.symlink(target, os.path.join(paths.file_storage_dir, "disk0"))
    with pytest.raises(StorageError) as exc:
        driver.remove(vol(paths, "disk0"))
    assert exc.value.kind is ErrorKind.INVALID
    assert target.exists()


def test_rename_target_outside_refused(driver: FileStorage, paths: Paths) -> None:
    v = vol(paths, "a.raw")
    driver.create(v)
    with pytest.raises(StorageError) as exc:
        driver.rename(v, "/tmp/stolen.raw")
    assert exc.value.kind is ErrorKind.INVALID
    assert os.path.exists(v.logical_id)


def test_bad_format_refused(driver: FileStorage, paths: Paths) -> None:
    with pytest.raises(StorageError) as exc:
        driver.create(vol(paths, "a.vmdk", fmt="vmdk"))
    assert exc.value.kind is ErrorKind.INVALID
    assert not os.path.exists(paths.file_storage_dir + "/a.vmdk")


# --- failures leave nothing behind ---------------------------------------------------------------


def test_qemu_img_failure_leaves_nothing(paths: Paths) -> None:
    """A qemu-img that fails (a fake runner standing in for a broken tool) leaves no file/dir."""

    def failing_runner(argv, **kwargs):  # type: ignore[no-untyped-def]
        raise CommandError(argv, 1, "", "qemu-img: simulated failure")

    drv = FileStorage(paths, runner=failing_runner)
    v = vol(paths, "vm1/sub/disk0.qcow2", fmt="qcow2")
    with pytest.raises(StorageError) as exc:
        drv.create(v)
    assert "simulated failure" in str(exc.value)
    assert os.listdir(paths.file_storage_dir) == []


def test_real_runner_used_by_default(paths: Paths) -> None:
    assert FileStorage(paths)._run is runcmd.run


@pytest.mark.root
def test_no_space_is_no_resources(tmp_path: Path) -> None:
    """A 16 MiB tmpfs as the storage dir: creating or growing beyond it is refused."""
    require_root()
    require_tool("qemu-img", "mount", "umount")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        # the mount lies inside the root: taken as a host path (see Paths.host_path)
        paths = Paths(str(tmp_path))
        drv = FileStorage(paths)
        params = {"storage_dir": str(mnt)}
        big = VolumeSpec(
            dev_type="file", logical_id=str(mnt / "vm1" / "d0"), size=64, params=params
        )
        with pytest.raises(StorageError) as exc:
            drv.create(big)
        assert exc.value.kind is ErrorKind.NO_RESOURCES
        assert exc.value.fields["needed"] == 64
        assert os.listdir(mnt) == []  # not even the instance dir is left
        small = VolumeSpec(
            dev_type="file", logical_id=str(mnt / "d1"), size=8, format="qcow2", params=params
        )
        drv.create(small)
        with pytest.raises(StorageError) as exc:
            drv.grow(small, 64)
        assert exc.value.kind is ErrorKind.NO_RESOURCES
        found = drv.find(small)
        assert found is not None and found.size == 8
    finally:
        subprocess.run(["umount", str(mnt)], check=True)

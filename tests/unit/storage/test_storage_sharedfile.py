"""The ``sharedfile`` driver and node-local re-rooting of ``file`` volumes (real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, StorageError
from corral.common.paths import Paths
from corral.storage.base import VolumeSpec
from corral.storage.registry import get_storage
from corral.storage.sharedfile import SharedFileStorage
from tests.conftest import require_tool


def test_host_path() -> None:
    assert Paths("/").host_path("/srv/corral/disks") == "/srv/corral/disks"
    p = Paths("/tmp/n2")
    assert p.host_path("/srv/corral/disks") == "/tmp/n2/srv/corral/disks"
    assert p.host_path("/tmp/n2/srv/x") == "/tmp/n2/srv/x"  # already inside the root
    assert p.host_path("/tmp/n2x/y") == "/tmp/n2/tmp/n2x/y"  # a prefix is not "inside"
    assert p.host_path("relative") == "relative"


def test_two_nodes_reach_one_sharedfile_volume_but_not_each_others_file_volume(
    tmp_path: Path,
) -> None:
    require_tool("qemu-img")
    shared = str(tmp_path / "shared")
    n1, n2 = Paths(str(tmp_path / "n1")), Paths(str(tmp_path / "n2"))
    vol = VolumeSpec(
        dev_type="sharedfile",
        logical_id=f"{shared}/vm1/disk0",
        size=8,
        params={"storage_dir": shared},
    )
    d1, d2 = get_storage("sharedfile", n1), get_storage("sharedfile", n2)
    assert isinstance(d1, SharedFileStorage) and d1.CAPABILITIES.shared
    info = d1.create(vol)
    assert info.path == vol.logical_id  # the same absolute path on every node
    found = d2.find(vol)
    assert found is not None and found.path == vol.logical_id and found.size == 8
    assert d2.list_volumes(shared) == [vol.logical_id]
    d2.remove(vol)
    assert d1.find(vol) is None and os.listdir(shared) == []

    local = VolumeSpec(
        dev_type="file",
        logical_id="/srv/corral/disks/vm1/disk0",
        size=8,
        params={"storage_dir": "/srv/corral/disks"},
    )
    f1, f2 = get_storage("file", n1), get_storage("file", n2)
    assert f1.create(local).path == n1.root + local.logical_id
    assert f2.find(local) is None  # node-local: node2 has no such file
    assert f1.list_volumes("/srv/corral/disks") == [local.logical_id]
    assert f2.list_volumes("/srv/corral/disks") == []
    total, free = f1.space("/srv/corral/disks")
    assert 0 < free <= total


def test_sharedfile_needs_its_storage_dir(tmp_path: Path) -> None:
    drv = get_storage("sharedfile", Paths(str(tmp_path)))
    vol = VolumeSpec(dev_type="sharedfile", logical_id=f"{tmp_path}/x/disk0", size=8)
    with pytest.raises(StorageError) as exc:
        drv.create(vol)
    assert exc.value.kind is ErrorKind.INVALID and "storage dir" in str(exc.value)
    outside = VolumeSpec(
        dev_type="sharedfile",
        logical_id="/etc/passwd",
        size=8,
        params={"storage_dir": str(tmp_path)},
    )
    with pytest.raises(StorageError) as exc:
        drv.find(outside)
    assert exc.value.kind is ErrorKind.INVALID

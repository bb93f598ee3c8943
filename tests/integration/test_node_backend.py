"""Real OS definitions through NodeBackend: the built-in busybox OS and Debian's ganeti-os-noop.

The busybox ``create`` runs for real: it fetches Debian's cloud kernel with ``apt-get download``
(cached between runs in ``$CORRAL_TEST_CACHE`` or ``<repo>/.cache``), builds the initrd, and
writes an ext4 root filesystem into raw and qcow2 disks, which the tests read back with
``debugfs``. No VM is booted here (the KVM driver's and the end-to-end tests do that).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, OsError
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceSpec, NicSpec
from corral.node.backend import NodeBackend
from corral.rpc.calls import (
    BlockdevRequest,
    DiskRef,
    Empty,
    OsCreateRequest,
    OsRenameRequest,
    OsVerifyRequest,
)
from corral.storage.base import VolumeSpec
from tests.conftest import require_tool, unavailable

REPO = Path(__file__).resolve().parents[2]
NOOP_DIR = "/usr/share/ganeti/os/noop"


def shared_cache() -> Path:
    """Download cache shared by test runs (the kernel package is ~27 MB)."""
    path = Path(os.environ.get("CORRAL_TEST_CACHE", REPO / ".cache")) / "busybox"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths(str(tmp_path / "root"))
    os.makedirs(p.cache_dir)
    os.symlink(shared_cache(), os.path.join(p.cache_dir, "busybox"))
    return p


@pytest.fixture
def backend(paths: Paths) -> NodeBackend:
    require_tool("qemu-img", "mkfs.ext4", "debugfs", "dpkg-deb", "cpio", "apt-get")
    if not os.access("/bin/busybox", os.X_OK):
        msg = "/bin/busybox missing (busybox-static)"
        unavailable(msg)
    return NodeBackend(paths, "node1")


def spec(name: str) -> InstanceSpec:
    return InstanceSpec(
        name=name,
        uuid="uuid-" + name,
        hypervisor="kvm",
        hvparams={"serial_console": True},
        memory=128,
        min_memory=128,
        vcpus=1,
        nics=[NicSpec(index=0, uuid="nic0", mac="aa:00:00:00:00:01", ip="192.0.2.5")],
    )


def new_disk(backend: NodeBackend, paths: Paths, fmt: str, size: int = 64) -> DiskRef:
    v = VolumeSpec(
        dev_type="file",
        logical_id=os.path.join(paths.file_storage_dir, "inst", f"disk0.{fmt}"),
        size=size,
        format=fmt,
        uuid="disk-uuid",
    )
    backend.blockdev_create(BlockdevRequest(volume=v))
    return DiskRef(index=0, volume=v)


def debugfs(image: str, command: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", command, image], capture_output=True, text=True, check=True
    ).stdout


def raw_image(ref: DiskRef, tmp_path: Path) -> str:
    """A raw file to inspect: the disk itself, or a raw conversion of a qcow2 disk."""
    if ref.volume.format == "raw":
        return ref.volume.logical_id
    out = str(tmp_path / "inspect.raw")
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", ref.volume.logical_id, out],
        check=True,
    )
    return out


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_busybox_create_and_rename(
    backend: NodeBackend, paths: Paths, tmp_path: Path, fmt: str
) -> None:
    ref = new_disk(backend, paths, fmt)
    resp = backend.os_create(
        OsCreateRequest(
            instance=spec("vm1.example.com"),
            disks=[ref],
            os="busybox",
            osparams={"dns_nameservers": "192.0.2.53"},
        )
    )
    assert "installed vm1.example.com" in resp.output_tail
    assert os.path.basename(resp.log_file).startswith("add-busybox-vm1.example.com-")

    image = raw_image(ref, tmp_path)
    assert debugfs(image, "cat /etc/hostname").strip() == "vm1.example.com"
    assert debugfs(image, "cat /etc/resolv.conf").strip() == "nameserver 192.0.2.53"
    init = debugfs(image, "cat /sbin/init")
    assert init.startswith("#!/bin/busybox sh") and "CORRAL-GUEST-UP" in init
    assert "virtio_blk.ko" in debugfs(image, "ls /lib/modules/corral")
    assert "busybox" in debugfs(image, "ls -l /bin")
    label = subprocess.run(
        ["dumpe2fs", "-h", image], capture_output=True, text=True, check=True
    ).stdout
    assert "Filesystem volume name:   root" in label

    # the kernel and initrd the cluster's default KVM hvparams point at
    kdir = Path(paths.kernels_dir)
    for link in ("vmlinuz-kvmU", "initrd-kvmU"):
        target = kdir / link
        assert target.is_symlink() and target.resolve().is_file(), link
    kver = (kdir / "vmlinuz-kvmU").resolve().parent.name
    assert kver in debugfs(image, "cat /lib/modules/corral/kernel-version")
    assert not list(kdir.glob(".busybox-stage.*"))
    assert sorted(os.listdir(os.path.dirname(ref.volume.logical_id))) == [f"disk0.{fmt}"]

    # rename rewrites /etc/hostname and /etc/hosts inside the image without mounting it
    resp = backend.os_rename(
        OsRenameRequest(
            instance=spec("vm2.example.com"), disks=[ref], os="busybox", old_name="vm1.example.com"
        )
    )
    image = raw_image(ref, tmp_path)
    assert debugfs(image, "cat /etc/hostname").strip() == "vm2.example.com"
    assert "127.0.1.1\tvm2.example.com" in debugfs(image, "cat /etc/hosts")
    assert sorted(os.listdir(os.path.dirname(ref.volume.logical_id))) == [f"disk0.{fmt}"]


def test_busybox_reinstall_and_verify(backend: NodeBackend, paths: Paths) -> None:
    ref = new_disk(backend, paths, "raw")
    req = OsCreateRequest(instance=spec("vm3"), disks=[ref], os="busybox+default")
    backend.os_create(req)
    resp = backend.os_create(req.model_copy(update={"reinstall": True}))
    assert "reinstalling" in resp.output_tail
    assert debugfs(ref.volume.logical_id, "cat /etc/hostname").strip() == "vm3"
    backend.os_verify(OsVerifyRequest(os="busybox", osparams={"dns_nameservers": "2001:db8::1"}))
    with pytest.raises(OsError) as exc:
        backend.os_verify(
            OsVerifyRequest(os="busybox", osparams={"dns_nameservers": "1.2.3.4,nope"})
        )
    assert exc.value.kind is ErrorKind.INVALID
    assert "not an IP address: 'nope'" in str(exc.value)


def test_busybox_create_refuses_a_tiny_disk(backend: NodeBackend, paths: Paths) -> None:
    ref = new_disk(backend, paths, "raw", size=8)
    with pytest.raises(OsError) as exc:
        backend.os_create(OsCreateRequest(instance=spec("vm4"), disks=[ref], os="busybox"))
    assert "disk 0 has 8 MiB; the busybox system needs at least 16 MiB" in str(exc.value)


def test_busybox_create_failure_cleans_up(backend: NodeBackend, paths: Paths) -> None:
    """mkfs.ext4 fails on a disk smaller than it was declared (the size check passes)."""
    ref = new_disk(backend, paths, "raw", size=16)
    os.truncate(ref.volume.logical_id, 1024 * 1024)
    with pytest.raises(OsError) as exc:
        backend.os_create(OsCreateRequest(instance=spec("vm4"), disks=[ref], os="busybox"))
    assert "failed (exit code 1)" in str(exc.value)
    assert "mkfs.ext4" in str(exc.value)
    log_text = Path(exc.value.fields["log_file"]).read_text()
    root_dir = log_text.split("building the root tree in ", 1)[1].split()[0]
    assert not os.path.exists(root_dir), "the temporary root tree was left behind"
    assert not list(Path(paths.kernels_dir).glob(".busybox-stage.*"))


@pytest.fixture
def noop_paths(paths: Paths) -> Paths:
    """The node's OS search path holds Debian's noop definition, unchanged (a symlink to it)."""
    if not os.path.isdir(NOOP_DIR):
        msg = f"{NOOP_DIR} missing (apt-get install ganeti-os-noop)"
        unavailable(msg)
    search = Path(paths.os_search_path[2])  # <root>/usr/share/ganeti/os, like Debian's
    search.mkdir(parents=True)
    os.symlink(NOOP_DIR, search / "noop")
    return paths


def test_debian_noop_os(backend: NodeBackend, noop_paths: Paths) -> None:
    oses = {o.name: o for o in backend.os_diagnose(Empty()).oses}
    assert oses["noop"].valid, oses["noop"].error
    assert 10 in oses["noop"].api_versions and oses["noop"].variants == []
    ref = new_disk(backend, noop_paths, "qcow2", size=8)
    resp = backend.os_create(OsCreateRequest(instance=spec("vm5"), disks=[ref], os="noop"))
    assert os.path.exists(resp.log_file)
    backend.os_rename(OsRenameRequest(instance=spec("vm6"), disks=[ref], os="noop", old_name="vm5"))
    backend.os_verify(OsVerifyRequest(os="noop"))
    with pytest.raises(OsError) as exc:
        backend.os_create(OsCreateRequest(instance=spec("vm5"), disks=[ref], os="noop+x"))
    assert exc.value.kind is ErrorKind.INVALID

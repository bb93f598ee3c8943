"""The node side of cluster verify: file checksums and storage listings (real files, tmp roots)."""

from __future__ import annotations

import hashlib
import os

from corral.common.paths import Paths
from corral.node.backend.verify import file_checksums, volume_list
from corral.rpc.calls_cluster import FileChecksumsRequest, VolumeListRequest


def test_checksums_are_named_root_relative_and_missing_files_are_none(tmp_path):
    paths = Paths(str(tmp_path / "n1"))
    paths.ensure()
    os.makedirs(os.path.dirname(paths.ca_cert), exist_ok=True)
    with open(paths.ca_cert, "wb") as fh:
        fh.write(b"ca")
    answer = file_checksums(paths, FileChecksumsRequest(role="regular", files=["/etc/nothere"]))
    assert answer.checksums["/var/lib/corral/crypto/ca.pem"] == hashlib.sha256(b"ca").hexdigest()
    assert answer.checksums["/var/lib/corral/crypto/crl.pem"] is None
    assert answer.checksums["/etc/nothere"] is None
    assert "/var/lib/corral/crypto/ca.key" not in answer.checksums  # candidates only
    cand = file_checksums(paths, FileChecksumsRequest(role="master-candidate"))
    assert "/var/lib/corral/crypto/ca.key" in cand.checksums


def test_volume_list_maps_local_dirs_under_the_root_and_shared_dirs_as_is(tmp_path):
    paths = Paths(str(tmp_path / "n1"))
    local = paths.host_path("/srv/corral/disks")
    os.makedirs(os.path.join(local, "vm1"))
    open(os.path.join(local, "vm1", "disk0"), "wb").close()
    deep = os.path.join(local, "a", "b", "c", "d", "e")
    os.makedirs(deep)
    open(os.path.join(deep, "too-deep"), "wb").close()
    shared = tmp_path / "shared"
    os.makedirs(shared / "vm2")
    open(shared / "vm2" / "disk0", "wb").close()
    os.symlink("/etc", shared / "link-to-dir")  # not followed
    answer = volume_list(
        paths,
        VolumeListRequest(dirs=["/srv/corral/disks", "/nonexistent"], shared_dirs=[str(shared)]),
    )
    assert answer.volumes == {
        "/srv/corral/disks": ["/srv/corral/disks/vm1/disk0"],
        "/nonexistent": [],
        str(shared): [f"{shared}/vm2/disk0"],
    }
    assert answer.errors == {} and not answer.truncated
    bad = volume_list(paths, VolumeListRequest(dirs=["relative"]))
    assert bad.errors == {"relative": "not an absolute path"}

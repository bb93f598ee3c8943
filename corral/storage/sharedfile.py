"""The ``sharedfile`` storage driver: image files in a directory every node mounts (NFS).

It is the ``file`` driver (``file.py``: same path checks, raw and qcow2 images, free-space
checks) with two differences:

* the storage dir is the cluster's ``shared_file_storage_dir`` and is the *same absolute
  path on every node* — it is not re-rooted under a node's root, so node daemons sharing one
  machine in tests reach the same files, as NFS clients would;
* the volume must say where it lives (``params["storage_dir"]``): there is no node default.

Because every node reaches the volume, an instance on ``sharedfile`` disks can be migrated or
failed over without copying its disks (``StorageCapabilities.shared``). Nothing here locks a
volume against use by two nodes at once: the master makes sure one node runs the instance
(QEMU's own image locks catch mistakes on a single host only).
"""

from __future__ import annotations

from corral.common.errors import ErrorKind, StorageError
from corral.storage.base import StorageCapabilities, VolumeSpec
from corral.storage.file import FORMATS, FileStorage


class SharedFileStorage(FileStorage):
    """Image files (raw or qcow2) in a directory shared by all nodes."""

    NAME = "sharedfile"
    CAPABILITIES = StorageCapabilities(grow=True, snapshot=False, shared=True, formats=FORMATS)

    def _cluster_storage_dir(self, vol: VolumeSpec) -> str:
        """The shared directory named by the volume.

        Raises:
            StorageError: the volume names no storage dir, or not an absolute one (INVALID).
        """
        if not vol.params.get("storage_dir"):
            raise StorageError(
                f"sharedfile volume {vol.logical_id} does not name its shared storage dir",
                kind=ErrorKind.INVALID,
                logical_id=vol.logical_id,
            )
        return super()._cluster_storage_dir(vol)

    def _host(self, path: str) -> str:
        """The same path on every node (no re-rooting)."""
        return path

"""Block devices: create, remove, grow, find, rename and measure volumes via storage drivers.

Each request names its driver by ``volume.dev_type``; the driver enforces where volumes may
live. :meth:`Blockdevs.resolve` turns an instance's :class:`~corral.rpc.calls.DiskRef` into the
volume found on this node, for starting instances and running OS scripts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from corral.common.errors import ErrorKind, StorageError
from corral.rpc.calls import DiskRef
from corral.storage.base import StorageDriver, VolumeInfo, VolumeSpec

log = logging.getLogger(__name__)

#: Returns the storage driver for a ``dev_type`` (raises StorageError for unknown ones).
StorageGetter = Callable[[str], StorageDriver]


class Blockdevs:
    """The block-device family of node calls."""

    def __init__(self, get_storage: StorageGetter) -> None:
        """Create the family; ``get_storage`` maps a ``dev_type`` to its driver."""
        self._get_storage = get_storage

    def driver(self, vol: VolumeSpec) -> StorageDriver:
        """The driver of ``vol``.

        Raises:
            StorageError: no driver handles ``vol.dev_type`` (INVALID).
        """
        return self._get_storage(vol.dev_type)

    def create(self, vol: VolumeSpec) -> VolumeInfo:
        """Create the volume; see :meth:`StorageDriver.create` for the failure contract."""
        return self.driver(vol).create(vol)

    def remove(self, vol: VolumeSpec) -> None:
        """Remove the volume (missing is fine); see :meth:`StorageDriver.remove`."""
        self.driver(vol).remove(vol)

    def grow(self, vol: VolumeSpec, amount: int) -> VolumeInfo:
        """Grow the volume by ``amount`` MiB; see :meth:`StorageDriver.grow`."""
        return self.driver(vol).grow(vol, amount)

    def check_room(self, vol: VolumeSpec, amount: int) -> None:
        """Check the volume may grow by ``amount`` MiB; see :meth:`StorageDriver.check_grow`."""
        self.driver(vol).check_grow(vol, amount)

    def find(self, vol: VolumeSpec) -> VolumeInfo | None:
        """The volume's facts, or None when it does not exist; see :meth:`StorageDriver.find`."""
        return self.driver(vol).find(vol)

    def rename(self, vol: VolumeSpec, new_logical_id: str) -> VolumeInfo:
        """Rename the volume; see :meth:`StorageDriver.rename`."""
        return self.driver(vol).rename(vol, new_logical_id)

    def sizes(self, vols: Sequence[VolumeSpec]) -> list[int | None]:
        """The size in MiB of each volume, None for volumes that do not exist.

        Raises:
            StorageError: a volume exists but cannot be inspected, or has a bad path/type.
        """
        result: list[int | None] = []
        for vol in vols:
            info = self.find(vol)
            result.append(None if info is None else info.size)
        return result

    def resolve(self, ref: DiskRef) -> VolumeInfo:
        """The volume behind an instance disk, which must exist on this node.

        Raises:
            StorageError: the volume is missing (NOT_FOUND; the message names the disk index
                and the volume), or the driver cannot inspect it.
        """
        info = self.find(ref.volume)
        if info is None:
            raise StorageError(
                f"disk {ref.index}: volume {ref.volume.logical_id} ({ref.volume.dev_type}) "
                "not found on this node",
                kind=ErrorKind.NOT_FOUND,
                disk_index=ref.index,
                logical_id=ref.volume.logical_id,
            )
        return info

    def resolve_all(self, refs: Sequence[DiskRef]) -> list[tuple[DiskRef, VolumeInfo]]:
        """Resolve every disk, in index order.

        Raises:
            StorageError: as :meth:`resolve`, for the first disk that fails.
        """
        return [(ref, self.resolve(ref)) for ref in sorted(refs, key=lambda r: r.index)]

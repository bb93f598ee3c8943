"""The storage driver interface: create, remove, grow, find and size block devices.

Contracts every driver keeps:

* ``create`` either leaves a complete volume of at least the requested size, or nothing;
  creating a volume that already exists is refused with ``ErrorKind.EXISTS``.
* ``remove`` of a volume that does not exist succeeds (idempotent).
* ``grow`` only grows; it is refused (not half-done) when the space is missing.
* Errors are :class:`~corral.common.errors.StorageError` carrying the tool's stderr.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from corral.common.errors import ErrorKind, StorageError


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StorageCapabilities:
    """What a storage driver can do."""

    grow: bool = True
    snapshot: bool = False
    shared: bool = False  # reachable from several nodes (failover without copying)
    formats: tuple[str, ...] = ("raw",)


class VolumeSpec(BaseModel):
    """A volume to create or act on, as the master describes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dev_type: str
    logical_id: str
    size: int  # MiB
    format: str = "raw"
    uuid: str = ""
    params: dict[str, Any] = Field(default_factory=dict)


class VolumeInfo(BaseModel):
    """What the node found about a volume."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    logical_id: str
    path: str
    size: int  # MiB (virtual size for qcow2)
    format: str
    allocated: int = 0  # MiB actually used on the host


class StorageDriver(abc.ABC):
    """One kind of disk storage on a node."""

    NAME: ClassVar[str]
    CAPABILITIES: ClassVar[StorageCapabilities]

    @abc.abstractmethod
    def create(self, vol: VolumeSpec) -> VolumeInfo:
        """Create the volume.

        Raises:
            StorageError: it exists already (kind EXISTS), there is no room (NO_RESOURCES), or
                the tool failed; nothing is left behind.
        """

    @abc.abstractmethod
    def remove(self, vol: VolumeSpec) -> None:
        """Remove the volume; a missing volume is not an error.

        Raises:
            StorageError: the volume exists but could not be removed.
        """

    @abc.abstractmethod
    def grow(self, vol: VolumeSpec, amount: int) -> VolumeInfo:
        """Grow the volume by ``amount`` MiB.

        Raises:
            StorageError: missing volume (NOT_FOUND), no room (NO_RESOURCES), tool failure.
        """

    def check_grow(self, vol: VolumeSpec, amount: int) -> None:
        """Check that ``vol`` can grow by ``amount`` MiB, without changing anything.

        Used before a hypervisor grows a running instance's image itself.

        Raises:
            StorageError: bad amount (INVALID) or not enough room (NO_RESOURCES).
        """
        if amount <= 0:
            raise StorageError(
                f"grow amount must be positive, got {amount} MiB", kind=ErrorKind.INVALID
            )

    @abc.abstractmethod
    def find(self, vol: VolumeSpec) -> VolumeInfo | None:
        """Return the volume's facts, or None when it does not exist.

        Raises:
            StorageError: the volume exists but cannot be inspected.
        """

    def rename(self, vol: VolumeSpec, new_logical_id: str) -> VolumeInfo:
        """Give the volume a new logical id (file disks follow their instance's name).

        The default refuses: drivers that can rename override this.

        Raises:
            StorageError: renaming is not supported (kind INVALID), the volume is missing
                (NOT_FOUND), the new name is taken (EXISTS), or the rename failed.
        """
        raise StorageError(
            f"{self.NAME} volumes cannot be renamed",
            kind=ErrorKind.INVALID,
            logical_id=vol.logical_id,
        )

    @abc.abstractmethod
    def space(self, location: str) -> tuple[int, int]:
        """Total and free MiB where this driver creates volumes (``location`` = dir/VG).

        Raises:
            StorageError: the location cannot be inspected.
        """

"""The storage driver registry: ``dev_type`` -> driver class.

Drivers are cheap objects without global state; :func:`get_storage` builds one per call, so
callers (the node backend, tests) may use a fresh driver per request.
"""

from __future__ import annotations

from collections.abc import Callable

from corral.common.errors import ErrorKind, StorageError
from corral.common.paths import Paths
from corral.storage.base import StorageDriver
from corral.storage.file import FileStorage
from corral.storage.sharedfile import SharedFileStorage

#: Every storage driver by the ``dev_type`` of the disks it serves.
STORAGE_DRIVERS: dict[str, Callable[[Paths], StorageDriver]] = {
    "file": FileStorage,
    "sharedfile": SharedFileStorage,
}


def get_storage(dev_type: str, paths: Paths) -> StorageDriver:
    """Return the driver for disks of ``dev_type`` working under ``paths``.

    Raises:
        StorageError: no driver handles ``dev_type`` (kind INVALID).
    """
    try:
        cls = STORAGE_DRIVERS[dev_type]
    except KeyError:
        known = ", ".join(sorted(STORAGE_DRIVERS))
        raise StorageError(
            f"unknown disk type {dev_type!r} (this node supports: {known})",
            kind=ErrorKind.INVALID,
            dev_type=dev_type,
        ) from None
    return cls(paths)

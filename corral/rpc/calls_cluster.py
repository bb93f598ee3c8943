"""RPC calls of the cluster area (registered into :data:`corral.rpc.calls.CALLS`).

Both serve ``cluster verify`` (``master/ops/cluster.py``); the node side is
``node/backend/verify.py``.

``file_checksums``
    The sha256 of the files that must be identical on every node (the node computes the list
    itself from its role, with ``membership.cluster_files``, so several nodes with different
    roots on one machine compare the same logical files), plus any extra root-relative files.
    Files are named root-relative (``/var/lib/corral/ca.pem``), so the master can compare
    nodes whose roots differ.

``volume_list``
    The image files below the given storage directories (logical paths, as the instances'
    ``logical_id`` names them), so the master can find orphan volumes and missing disks.
"""

from __future__ import annotations

from pydantic import Field

from corral.rpc.calls import Call, Msg, register_calls


class FileChecksumsRequest(Msg):
    """Which files to checksum.

    Attributes:
        role: ``master-candidate`` or ``regular``: which cluster files the node must have.
        files: extra files, root-relative (``/etc/...``), checksummed as well.
    """

    role: str = "regular"
    files: list[str] = Field(default_factory=list)


class FileChecksumsResponse(Msg):
    """sha256 (hex) of each file by root-relative name; None: the file does not exist."""

    checksums: dict[str, str | None]
    #: Files that exist but cannot be read, with the reason.
    errors: dict[str, str] = Field(default_factory=dict)


class VolumeListRequest(Msg):
    """Storage directories (logical paths, as in the cluster parameters) to list.

    Attributes:
        dirs: node-local directories (``file_storage_dir``): under the node's root.
        shared_dirs: directories that are the same path on every node
            (``shared_file_storage_dir``): used as they are.
    """

    dirs: list[str] = Field(default_factory=list)
    shared_dirs: list[str] = Field(default_factory=list)
    #: Do not descend further than this many directory levels below each dir.
    max_depth: int = 4


class VolumeListResponse(Msg):
    """Regular files below each directory (logical paths), by directory.

    A directory that does not exist gives an empty list; one that cannot be read is named in
    ``errors`` with the reason.
    """

    volumes: dict[str, list[str]]
    errors: dict[str, str] = Field(default_factory=dict)
    #: True when the listing was cut at ``max_entries`` files.
    truncated: bool = False


FILE_CHECKSUMS = Call("file_checksums", FileChecksumsRequest, FileChecksumsResponse, 60)
VOLUME_LIST = Call("volume_list", VolumeListRequest, VolumeListResponse, 60)

register_calls(FILE_CHECKSUMS, VOLUME_LIST)

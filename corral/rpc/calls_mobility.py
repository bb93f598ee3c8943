"""RPC calls of the mobility area: copying a volume from one node to another.

``instance move`` copies each disk with three calls (see ``node/backend/transfer.py``)::

    destination: transfer_import_start(volume)  -> {id, port, token}: a one-shot TLS listener
                                                    on the destination's address; the volume
                                                    (created before with blockdev_create) is
                                                    truncated and will receive the image
    source:      transfer_export(volume, host,   -> {bytes, sha256}: streams the image file to
                     port, token, dest_node)        the listener (mutual TLS with the cluster
                                                    certificates, the destination's name checked)
    destination: transfer_import_wait(id)        -> {bytes, sha256}: what arrived and was
                                                    written and synced

The master compares both checksums: a copy counts only when they are equal.
"""

from __future__ import annotations

from pydantic import Field

from corral.rpc.calls import Call, Empty, Msg, register_calls
from corral.storage.base import VolumeSpec


class TransferImportStartRequest(Msg):
    """Open a one-shot import of a volume on this (the destination) node."""

    volume: VolumeSpec
    #: Address to listen on (the node's primary IP as the master knows it).
    listen_host: str
    #: Seconds the listener waits for the source to connect.
    connect_timeout: float = Field(default=60.0, gt=0, le=3600)


class TransferImportStartResponse(Msg):
    """Where the source must send the volume, and the one-time token it must present."""

    import_id: str
    port: int
    token: str


class TransferExportRequest(Msg):
    """Send a volume of this (the source) node to a destination's import."""

    volume: VolumeSpec
    dest_node: str  # checked against the destination's certificate
    dest_host: str
    port: int
    token: str


class TransferResult(Msg):
    """Bytes moved and their SHA-256 (hex)."""

    bytes: int
    sha256: str


class TransferImportWaitRequest(Msg):
    """Wait for an import to finish (at most ``timeout`` seconds)."""

    import_id: str
    timeout: float = Field(default=600.0, gt=0, le=86400)


class TransferImportAbortRequest(Msg):
    """Stop an import (the listener closes; the partial volume stays for the caller to remove)."""

    import_id: str


#: The destination only opens a socket.
TRANSFER_IMPORT_START = Call(
    "transfer_import_start", TransferImportStartRequest, TransferImportStartResponse, 60
)
#: Streams the whole image: one hour covers ~1 TiB at 300 MiB/s.
TRANSFER_EXPORT = Call("transfer_export", TransferExportRequest, TransferResult, 3600)
#: The master passes ``timeout`` and waits a margin longer.
TRANSFER_IMPORT_WAIT = Call("transfer_import_wait", TransferImportWaitRequest, TransferResult, 660)
TRANSFER_IMPORT_ABORT = Call("transfer_import_abort", TransferImportAbortRequest, Empty, 30)

register_calls(
    TRANSFER_IMPORT_START,
    TRANSFER_EXPORT,
    TRANSFER_IMPORT_WAIT,
    TRANSFER_IMPORT_ABORT,
)

"""Volume transfer between two node backends over real mutual-TLS sockets on 127.0.0.1.

Both "nodes" run in this process (two roots, certificates from one CA); the sockets, TLS
handshakes, token check and checksums are real.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, StorageError
from corral.node.backend import NodeBackend
from corral.rpc.calls import BlockdevRequest
from corral.rpc.calls_mobility import (
    TransferExportRequest,
    TransferImportStartRequest,
    TransferImportWaitRequest,
)
from corral.storage.base import VolumeSpec
from tests.conftest import require_tool
from tests.unit.rpc.rpc_fakes import make_pki

VOL = VolumeSpec(
    dev_type="file",
    logical_id="/srv/corral/disks/vm1/disk0",
    size=16,
    params={"storage_dir": "/srv/corral/disks"},
)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[NodeBackend, NodeBackend]:
    require_tool("qemu-img")
    p1 = make_pki(str(tmp_path / "n1"), "n1", ["127.0.0.1"])
    p2 = make_pki(str(tmp_path / "n2"), "n2", ["127.0.0.1"], ca=p1)
    return NodeBackend(p1, "n1"), NodeBackend(p2, "n2")


def _sha(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def test_copy_is_verified_and_sparse(pair: tuple[NodeBackend, NodeBackend]) -> None:
    src, dst = pair
    path = src.blockdev_create(BlockdevRequest(volume=VOL)).info
    assert path is not None
    with open(path.path, "r+b") as fh:
        fh.write(b"head" * 1000)
        fh.seek(12 * 1024 * 1024)
        fh.write(b"tail")
    target = dst.blockdev_create(BlockdevRequest(volume=VOL)).info
    assert target is not None and target.path != path.path
    opened = dst.transfer_import_start(
        TransferImportStartRequest(volume=VOL, listen_host="127.0.0.1")
    )
    sent = src.transfer_export(
        TransferExportRequest(
            volume=VOL, dest_node="n2", dest_host="127.0.0.1", port=opened.port, token=opened.token
        )
    )
    got = dst.transfer_import_wait(TransferImportWaitRequest(import_id=opened.import_id))
    assert sent == got and got.bytes == 16 * 1024 * 1024
    assert got.sha256 == _sha(path.path) == _sha(target.path)
    # only the two 1 MiB blocks holding data are written: holes stay holes
    assert os.stat(target.path).st_blocks * 512 <= 2 * 1024 * 1024


def test_wrong_token_and_wrong_node_name_are_refused(
    pair: tuple[NodeBackend, NodeBackend],
) -> None:
    src, dst = pair
    src.blockdev_create(BlockdevRequest(volume=VOL))
    target = dst.blockdev_create(BlockdevRequest(volume=VOL)).info
    assert target is not None
    before = _sha(target.path)
    opened = dst.transfer_import_start(
        TransferImportStartRequest(volume=VOL, listen_host="127.0.0.1")
    )
    # the destination's certificate is n2's: a source expecting another node refuses it
    with pytest.raises(StorageError) as exc:
        src.transfer_export(
            TransferExportRequest(
                volume=VOL,
                dest_node="n3",
                dest_host="127.0.0.1",
                port=opened.port,
                token=opened.token,
            )
        )
    assert exc.value.kind is ErrorKind.ENVIRONMENT
    with pytest.raises(StorageError):
        dst.transfer_import_wait(TransferImportWaitRequest(import_id=opened.import_id))
    opened = dst.transfer_import_start(
        TransferImportStartRequest(volume=VOL, listen_host="127.0.0.1")
    )
    with pytest.raises(StorageError) as exc:
        src.transfer_export(
            TransferExportRequest(
                volume=VOL,
                dest_node="n2",
                dest_host="127.0.0.1",
                port=opened.port,
                token="not-the-token",
            )
        )
    with pytest.raises(StorageError) as exc:
        dst.transfer_import_wait(TransferImportWaitRequest(import_id=opened.import_id))
    assert "wrong token" in str(exc.value)
    assert _sha(target.path) == before  # nothing was written

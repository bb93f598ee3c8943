"""Copying a volume between two nodes: a one-shot TLS listener on the destination.

The flow (the master drives it, see ``rpc/calls_mobility.py``):

1. **import start** (destination): the volume exists already (``blockdev_create``). The node
   opens a TCP listener on its address (port chosen by the kernel), makes a random one-time
   token, and starts a thread that accepts *one* connection within ``connect_timeout``.
2. **export** (source): the node connects with mutual TLS — its own node certificate as client
   certificate, the cluster CA as trust anchor, the destination's *node name* checked against
   the destination's certificate — sends a header line ``{"token", "bytes"}`` and then the
   image file's bytes, hashing them (SHA-256) as it reads. The destination answers with a line
   ``{"bytes", "sha256"}`` of what it received and wrote; the source compares.
3. **import wait** (destination): returns what the import thread received, or its error.

No shell and no external tool is involved. The destination truncates the volume to zero
first and writes only the non-zero blocks (holes stay holes, so a sparse 10 GiB raw disk stays
sparse), then sets the final length and syncs the file before it answers. A wrong token, a
short stream or a write error fails the import; the partial volume is left for the master to remove
(it created it). Only files are supported (``file`` and ``sharedfile`` volumes): the image
file is copied byte for byte, whatever its format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import ssl
import threading
from collections.abc import Callable

from corral.common.errors import CorralError, ErrorKind, StorageError
from corral.common.paths import Paths
from corral.node.backend.blockdev import Blockdevs
from corral.storage.base import VolumeSpec

log = logging.getLogger(__name__)

#: Bytes read and written at a time.
CHUNK = 1024 * 1024
_ZERO = bytes(CHUNK)
#: Longest header/answer line accepted.
MAX_LINE = 4096
#: Seconds a socket operation (one read or write) may block once connected.
IO_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True, slots=True)
class TransferStats:
    """Bytes moved and their SHA-256 (hex)."""

    bytes: int
    sha256: str


@dataclasses.dataclass(slots=True)
class _Import:
    path: str
    token: str
    thread: threading.Thread | None = None
    listener: socket.socket | None = None
    result: TransferStats | None = None
    error: CorralError | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


def _recv_line(conn: ssl.SSLSocket) -> bytes:
    """One newline-terminated line (without it), read byte by byte up to MAX_LINE."""
    buf = bytearray()
    while len(buf) <= MAX_LINE:
        ch = conn.recv(1)
        if not ch:
            raise StorageError("the peer closed the transfer connection early")
        if ch == b"\n":
            return bytes(buf)
        buf += ch
    raise StorageError("transfer header line too long", kind=ErrorKind.INVALID)


def _recv_block(conn: ssl.SSLSocket, size: int) -> bytes:
    """Exactly ``size`` bytes.

    Raises:
        StorageError: the stream ended first.
    """
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = conn.recv_into(view[got:], size - got)
        if n == 0:
            raise StorageError(f"the transfer stream ended early ({got} of {size} bytes)")
        got += n
    return bytes(buf)


def _is_zero(block: bytes) -> bool:
    return block == _ZERO if len(block) == CHUNK else block.count(0) == len(block)


class Transfers:
    """The transfer family of node calls (both sides).

    Args:
        paths: the node's layout (its certificates make the TLS contexts).
        node_name: this node's name.
        blockdevs: resolves volumes to image files.
        server_context / client_context: TLS context factories (default: the node's mutual
            TLS contexts from ``rpc/tls.py``); tests may inject others.
    """

    def __init__(
        self,
        paths: Paths,
        node_name: str,
        blockdevs: Blockdevs,
        *,
        server_context: Callable[[], ssl.SSLContext] | None = None,
        client_context: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.paths = paths
        self.node_name = node_name
        self._blockdevs = blockdevs
        self._server_context = server_context or self._default_server_context
        self._client_context = client_context or self._default_client_context
        self._imports: dict[str, _Import] = {}
        self._guard = threading.Lock()

    def _default_server_context(self) -> ssl.SSLContext:
        from corral.rpc.tls import server_ssl_context

        return server_ssl_context(self.paths)

    def _default_client_context(self) -> ssl.SSLContext:
        from corral.rpc.tls import client_ssl_context

        return client_ssl_context(self.paths)

    def _file_of(self, vol: VolumeSpec) -> str:
        """The image file of an existing file-based volume on this node.

        Raises:
            StorageError: not a file volume (INVALID) or missing (NOT_FOUND).
        """
        if vol.dev_type not in ("file", "sharedfile"):
            raise StorageError(
                f"volumes of type {vol.dev_type} cannot be transferred (file volumes only)",
                kind=ErrorKind.INVALID,
                logical_id=vol.logical_id,
            )
        info = self._blockdevs.find(vol)
        if info is None:
            raise StorageError(
                f"volume {vol.logical_id} not found on {self.node_name}",
                kind=ErrorKind.NOT_FOUND,
                logical_id=vol.logical_id,
            )
        return info.path

    # --- destination -----------------------------------------------------------------------

    def import_start(
        self, vol: VolumeSpec, *, listen_host: str, connect_timeout: float
    ) -> tuple[str, int, str]:
        """Listen for one export into ``vol`` (which must exist); returns (id, port, token).

        Raises:
            StorageError: the volume is missing or not a file (nothing listens then), or
                the listener cannot be opened (ENVIRONMENT).
        """
        path = self._file_of(vol)
        context = self._server_context()
        try:
            listener = socket.create_server((listen_host, 0))
        except OSError as exc:
            raise StorageError(
                f"cannot listen on {listen_host} for a transfer: {exc.strerror or exc}",
                kind=ErrorKind.ENVIRONMENT,
            ) from exc
        listener.settimeout(connect_timeout)
        port = int(listener.getsockname()[1])
        import_id = secrets.token_hex(8)
        imp = _Import(path=path, token=secrets.token_urlsafe(32), listener=listener)
        imp.thread = threading.Thread(
            target=self._receive,
            args=(imp, context),
            name=f"transfer-import-{import_id}",
            daemon=True,
        )
        with self._guard:
            self._imports[import_id] = imp
        imp.thread.start()
        log.info("import %s into %s listening on %s:%d", import_id, path, listen_host, port)
        return import_id, port, imp.token

    def _receive(self, imp: _Import, context: ssl.SSLContext) -> None:
        """The import thread: accept one connection, check the token, write the image."""
        listener = imp.listener
        assert listener is not None
        try:
            try:
                raw, peer = listener.accept()
            except TimeoutError as exc:
                raise StorageError(
                    "no source connected to the transfer in time", kind=ErrorKind.ENVIRONMENT
                ) from exc
            finally:
                listener.close()
            raw.settimeout(IO_TIMEOUT)
            with context.wrap_socket(raw, server_side=True) as conn:
                imp.result = self._receive_stream(imp, conn)
            log.info("import into %s from %s done (%d bytes)", imp.path, peer, imp.result.bytes)
        except CorralError as exc:
            imp.error = exc
        except (OSError, ValueError) as exc:
            imp.error = StorageError(
                f"transfer into {imp.path} failed: {exc}", kind=ErrorKind.ENVIRONMENT
            )
        finally:
            imp.done.set()

    def _receive_stream(self, imp: _Import, conn: ssl.SSLSocket) -> TransferStats:
        try:
            header = json.loads(_recv_line(conn))
            token, total = str(header["token"]), int(header["bytes"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError("malformed transfer header", kind=ErrorKind.INVALID) from exc
        if not hmac.compare_digest(token, imp.token) or total < 0:
            conn.sendall(b'{"error": "refused"}\n')
            raise StorageError("transfer refused: wrong token", kind=ErrorKind.INVALID)
        digest = hashlib.sha256()
        fd = os.open(imp.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, 0)
            offset = 0
            while offset < total:
                block = _recv_block(conn, min(CHUNK, total - offset))
                digest.update(block)
                if not _is_zero(block):
                    os.pwrite(fd, block, offset)
                offset += len(block)
            os.ftruncate(fd, total)
            os.fsync(fd)
        finally:
            os.close(fd)
        stats = TransferStats(bytes=total, sha256=digest.hexdigest())
        conn.sendall(json.dumps(dataclasses.asdict(stats)).encode() + b"\n")
        return stats

    def import_wait(self, import_id: str, *, timeout: float) -> TransferStats:
        """What the import received; waits up to ``timeout`` seconds for it to end.

        Raises:
            StorageError: unknown id (NOT_FOUND), still running after ``timeout``
                (TEMP_NO_RESOURCES; call again), or the import failed (its error).
        """
        with self._guard:
            imp = self._imports.get(import_id)
        if imp is None:
            raise StorageError(f"no transfer import {import_id}", kind=ErrorKind.NOT_FOUND)
        if not imp.done.wait(timeout):
            raise StorageError(
                f"transfer import {import_id} still running after {timeout:g}s",
                kind=ErrorKind.TEMP_NO_RESOURCES,
            )
        with self._guard:
            self._imports.pop(import_id, None)
        if imp.error is not None:
            raise imp.error
        assert imp.result is not None
        return imp.result

    def import_abort(self, import_id: str) -> None:
        """Close the import's listener (an unknown or finished import is fine)."""
        with self._guard:
            imp = self._imports.pop(import_id, None)
        if imp is not None and imp.listener is not None and not imp.done.is_set():
            # NOTE: shutdown wakes the accept() of the import thread, which then ends.
            with contextlib.suppress(OSError):
                imp.listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                imp.listener.close()

    # --- source ----------------------------------------------------------------------------

    def export(
        self, vol: VolumeSpec, *, dest_node: str, dest_host: str, port: int, token: str
    ) -> TransferStats:
        """Stream the volume's image file to a destination's import.

        Raises:
            StorageError: missing volume (NOT_FOUND), the destination unreachable, not
                presenting ``dest_node``'s certificate, refusing the token, or answering a
                checksum that differs from what was sent (ENVIRONMENT).
        """
        path = self._file_of(vol)
        context = self._client_context()
        digest = hashlib.sha256()
        try:
            with open(path, "rb", buffering=0) as fh:
                total = os.fstat(fh.fileno()).st_size
                raw = socket.create_connection((dest_host, port), timeout=IO_TIMEOUT)
                with context.wrap_socket(raw, server_hostname=dest_node) as conn:
                    conn.sendall(json.dumps({"token": token, "bytes": total}).encode() + b"\n")
                    sent = 0
                    while sent < total:
                        block = fh.read(min(CHUNK, total - sent))
                        if not block:
                            raise StorageError(f"{path} shrank while it was sent")
                        digest.update(block)
                        conn.sendall(block)
                        sent += len(block)
                    answer = json.loads(_recv_line(conn))
        except (OSError, ValueError) as exc:
            raise StorageError(
                f"sending {vol.logical_id} to {dest_node} ({dest_host}:{port}) failed: {exc}",
                kind=ErrorKind.ENVIRONMENT,
                logical_id=vol.logical_id,
            ) from exc
        mine = TransferStats(bytes=total, sha256=digest.hexdigest())
        if answer.get("error"):
            raise StorageError(
                f"{dest_node} refused the transfer of {vol.logical_id}: {answer['error']}",
                kind=ErrorKind.ENVIRONMENT,
            )
        theirs = TransferStats(bytes=int(answer.get("bytes", -1)), sha256=str(answer.get("sha256")))
        if theirs != mine:
            raise StorageError(
                f"transfer of {vol.logical_id} to {dest_node} is corrupt: sent {mine.bytes} "
                f"bytes sha256 {mine.sha256}, received {theirs.bytes} sha256 {theirs.sha256}",
                kind=ErrorKind.ENVIRONMENT,
                logical_id=vol.logical_id,
            )
        log.info("exported %s to %s (%d bytes)", path, dest_node, total)
        return mine

"""The frames and pipe plumbing of the Xen migration tunnel (see ``tunnel.py``).

Inside the TLS connection both directions carry frames: one type byte, a 4-byte big-endian
length, the payload. Control frames (HELLO, ACCEPT, STATUS) hold a JSON object; DATA frames
hold stream bytes; an EOF frame ends one direction (a half-close that does not depend on
TLS close_notify handling).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from corral.common.errors import CorralError, ErrorKind, HypervisorError

#: Largest payload of one frame (and the size of the reads that fill them).
MAX_FRAME = 256 * 1024
#: Largest HELLO / ACCEPT / STATUS payload.
MAX_CONTROL = 16 * 1024
#: Seconds to wait for a connection to close cleanly.
CLOSE_TIMEOUT = 10.0

HELLO, ACCEPT, DATA, EOF, STATUS = b"H", b"A", b"D", b"E", b"S"
_HEAD = 5


# --- frames -------------------------------------------------------------------------------------


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """One frame of type ``kind`` (an empty payload for EOF)."""
    return kind + len(payload).to_bytes(4, "big") + payload


def control(kind: bytes, data: dict[str, Any]) -> bytes:
    """A control frame holding ``data`` as JSON."""
    return frame(kind, json.dumps(data).encode())


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One frame.

    Raises:
        HypervisorError: the peer closed the connection (mid-frame or between frames) or
            sent an oversized frame.
    """
    try:
        head = await reader.readexactly(_HEAD)
        kind, size = head[:1], int.from_bytes(head[1:], "big")
        if size > (MAX_CONTROL if kind in (HELLO, ACCEPT, STATUS) else MAX_FRAME):
            raise HypervisorError(f"tunnel frame of {size} bytes is too large")
        return kind, (await reader.readexactly(size) if size else b"")
    except asyncio.IncompleteReadError as exc:
        raise HypervisorError("the other end closed the tunnel") from exc


def decode_control(payload: bytes, what: str) -> dict[str, Any]:
    """The JSON object of a control frame.

    Raises:
        HypervisorError: (INVALID) not a JSON object.
    """
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise HypervisorError(f"malformed tunnel {what}", kind=ErrorKind.INVALID) from exc
    if not isinstance(data, dict):
        raise HypervisorError(f"malformed tunnel {what}", kind=ErrorKind.INVALID)
    return data


class Activity:
    """When a byte last moved; shared by the pumps and the idle watchdog."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.bytes_in = 0
        self.bytes_out = 0

    def moved(self, n_in: int = 0, n_out: int = 0) -> None:
        """Record that bytes moved (in: from the source, out: towards it)."""
        self.last = time.monotonic()
        self.bytes_in += n_in
        self.bytes_out += n_out

    async def idle(self, limit: float) -> None:
        """Return once nothing moved for ``limit`` seconds."""
        while True:
            left = self.last + limit - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 1.0))


async def pipe_reader(pipe: Any) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """A stream reader on a pipe (file object); closing the transport closes the pipe.

    Raises:
        ValueError: ``pipe`` is a regular file (asyncio needs a pipe, socket or tty).
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_FRAME, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
    )
    return reader, transport


async def pipe_writer(pipe: Any) -> asyncio.StreamWriter:
    """A stream writer (with flow control) on a pipe; closing it closes the pipe.

    Raises:
        ValueError: ``pipe`` is a regular file.
    """
    loop = asyncio.get_running_loop()
    protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop)
    transport, _ = await loop.connect_write_pipe(lambda: protocol, pipe)
    return asyncio.StreamWriter(transport, protocol, None, loop)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a connection, waiting a bounded time; errors while closing are ignored."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)


async def finish_tasks(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them, swallowing their results and errors."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def why(exc: BaseException) -> str:
    """A short text for an exception, for results and stderr."""
    if isinstance(exc, CorralError):
        return str(exc)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc`` to exit (polling) and return its exit status."""
    # NOTE: polled, not waited in a thread: the asyncio child watchers are per main thread
    # in Python 3.11 and this loop runs in the listener's own thread.
    while (rc := proc.poll()) is None:
        await asyncio.sleep(0.05)
    return rc

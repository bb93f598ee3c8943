"""The node daemon's HTTPS server: mutual TLS, HTTP/1.1 (h11), ``POST /rpc/<call>``.

One asyncio task per connection:

1. TCP accept, then the TLS handshake (:class:`TlsStream`) with a context that requires
   a client certificate signed by the cluster CA (``tls.server_ssl_context``). A caller whose
   certificate is missing, expired or from another CA fails the handshake; it is logged once
   at WARNING ("refused caller 127.0.0.9:40112: ...") and the connection is closed.
2. HTTP/1.1 requests, parsed by ``h11``, with keep-alive. ``POST /rpc/<name>`` runs the
   dispatcher's ``handle`` (``corral.node.handlers.CallHandlers``) in a worker thread — the
   one place where the node daemon leaves the event loop (``asyncio.to_thread``) — and sends
   its reply.
   An unknown call is answered 404, another method 405, a body over
   :data:`~corral.rpc.codec.MAX_BODY` 413, malformed HTTP 400; all with a JSON error envelope.

The server can change *mode* while it listens (:meth:`RpcServer.switch`): a node in join mode
serves the join calls with its bootstrap certificate and no client authentication, and
switches to mutual TLS on the same port once it has joined (and back when it leaves). Each
connection keeps the mode it was accepted in and is closed after its current request when the
mode changes, so a connection opened without client authentication can never reach the
calls of the authenticated mode. The TLS context may be given as a function, called for each
connection (``tls.ReloadingContext.get``: a new revocation list applies to the next handshake).

Each call is logged at DEBUG with caller, status and duration; a failed call is logged once
here (ERROR; with its traceback when it was not a CorralError). See ``docs/architecture/rpc.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

import h11

from corral.common.errors import CorralError, ErrorKind, RpcError
from corral.rpc import codec
from corral.rpc.calls import Call

log = logging.getLogger(__name__)

_READ_CHUNK = 65536


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status, JSON body, and the error it carries (for the server's log)."""

    status: int
    body: bytes
    error: CorralError | None = None
    #: True when ``error`` came from an unexpected exception (logged with its traceback).
    unexpected: bool = False


class Dispatcher(Protocol):
    """What the server needs from the call table (``corral.node.handlers.CallHandlers``)."""

    def get(self, name: str) -> Call[Any, Any] | None:
        """The call named ``name``, or None."""

    def handle(self, name: str, body: bytes) -> Reply:
        """Run call ``name`` on ``body`` (blocking; called in a worker thread)."""


class TlsStream:
    """Server side of TLS over an asyncio stream, with ``ssl.SSLObject`` and memory BIOs.

    NOTE: asyncio's own TLS (``start_tls``, Python 3.11) drops the alert OpenSSL produces when
    a handshake fails and then aborts the socket, so a refused caller only sees "connection
    reset" — with TLS 1.3, after it believed the handshake had succeeded. Driving the
    ``SSLObject`` here lets the server send the alert ("unknown ca", "certificate required")
    and close cleanly, so the caller can say *why* it was refused.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ssl.SSLContext
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_side=True)

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _feed(self) -> None:
        data = await self._reader.read(_READ_CHUNK)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    async def handshake(self) -> None:
        """Run the TLS handshake.

        Raises:
            ssl.SSLError: the handshake failed (e.g. the client certificate was refused); the
                alert has been sent.
            OSError: the connection failed.
        """
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._feed()
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    await self._flush()  # the alert tells the caller why
                raise
            else:
                await self._flush()
                return

    async def abort_after_alert(self) -> None:
        """After a failed handshake: stop writing, read what the caller still sends (briefly).

        Closing a socket with unread data makes the kernel send a reset, which can overtake
        the alert; reading until the caller closes (or 2 s) avoids that.
        """
        with contextlib.suppress(Exception):
            if self._writer.can_write_eof():
                self._writer.write_eof()
            async with asyncio.timeout(2):
                while await self._reader.read(_READ_CHUNK):
                    pass

    def peercert(self) -> Any:
        """The verified client certificate as ``ssl.SSLSocket.getpeercert()`` returns it."""
        return self._tls.getpeercert()

    async def read(self) -> bytes:
        """Read decrypted bytes; ``b""`` when the caller closed the connection.

        Raises:
            ssl.SSLError, OSError: the connection broke.
        """
        while True:
            try:
                data = self._tls.read(_READ_CHUNK)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._feed()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            else:
                await self._flush()
                return data

    async def write(self, data: bytes) -> None:
        """Encrypt and send ``data``.

        Raises:
            ssl.SSLError, OSError: the connection broke.
        """
        self._tls.write(data)
        await self._flush()

    async def close_notify(self) -> None:
        """Send the TLS close_notify alert (best effort)."""
        with contextlib.suppress(ssl.SSLError, OSError):
            self._tls.unwrap()
        with contextlib.suppress(OSError):
            await self._flush()


class _HttpProblem(Exception):
    """A request the server answers itself, without running a call."""

    def __init__(self, status: int, error: CorralError) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error


SslContextSource = ssl.SSLContext | Callable[[], ssl.SSLContext]


@dataclasses.dataclass(frozen=True, slots=True)
class _Mode:
    handlers: Dispatcher
    source: SslContextSource
    generation: int

    def context(self) -> ssl.SSLContext:
        return self.source if isinstance(self.source, ssl.SSLContext) else self.source()


class RpcServer:
    """Serves the RPC calls of one node daemon.

    Args:
        handlers: the call table (decode -> backend -> encode).
        ssl_context: a server context that requires client certificates, or a function
            returning the one to use for each new connection.
        host: address to listen on.
        port: TCP port (0: pick a free one, see :attr:`port`).
        handshake_timeout: seconds a caller has to complete the TLS handshake.
        idle_timeout: seconds an idle keep-alive connection stays open.
    """

    def __init__(
        self,
        handlers: Dispatcher,
        ssl_context: SslContextSource,
        *,
        host: str,
        port: int,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 75.0,
    ) -> None:
        self._mode = _Mode(handlers, ssl_context, 0)
        self.host = host
        self._port = port
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        # connection task -> True while it runs a call
        self._conns: dict[asyncio.Task[None], bool] = {}
        self._idle_event = asyncio.Event()
        self._stopping = False

    @property
    def port(self) -> int:
        """The TCP port actually listened on (after :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting connections.

        Raises:
            RpcError: the address cannot be bound (in use, not local, no permission).
        """
        try:
            self._server = await asyncio.start_server(
                self._on_connect, self.host, self._port, reuse_address=True
            )
        except OSError as exc:
            raise RpcError(
                f"cannot listen on {self.host}:{self._port}: {exc.strerror or exc}",
                host=self.host,
                port=self._port,
            ) from exc
        log.info("listening on %s:%d (HTTPS, mutual TLS)", self.host, self.port)

    async def stop(self, grace: float = 30.0) -> int:
        """Stop accepting, let running calls finish for up to ``grace`` seconds, close all.

        Returns:
            How many calls were still running when the grace period ended (their worker
            threads are abandoned; the caller decides whether to wait for them).
        """
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._conns.items()):
            if not busy:
                task.cancel()
        if any(self._conns.values()):
            log.info("waiting up to %gs for %d running calls", grace, sum(self._conns.values()))
            self._idle_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle_event.wait(), grace)
        abandoned = sum(self._conns.values())
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if abandoned:
            log.warning("stopped with %d calls still running", abandoned)
        return abandoned

    def switch(self, handlers: Dispatcher, ssl_context: SslContextSource) -> None:
        """Serve new connections with other calls and TLS settings, on the same socket.

        Connections accepted before are closed once their current request is answered.
        """
        self._mode = _Mode(handlers, ssl_context, self._mode.generation + 1)
        for task, busy in list(self._conns.items()):
            if not busy:
                task.cancel()
        log.info("serving a new set of calls (mode %d)", self._mode.generation)

    # --- connections -------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = False
        peer = _addr(writer.get_extra_info("peername"))
        mode = self._mode
        try:
            stream = TlsStream(reader, writer, mode.context())
            try:
                await asyncio.wait_for(stream.handshake(), self._handshake_timeout)
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                log.warning("refused caller %s: %s", peer, _tls_reason(exc))
                await stream.abort_after_alert()
                return
            caller = _caller_name(stream.peercert(), peer)
            await self._serve(stream, caller, mode)
        except asyncio.CancelledError:
            pass  # server stopping
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.debug("connection from %s ended: %s", peer, exc)
        finally:
            self._conns.pop(task, None)
            if not any(self._conns.values()):
                self._idle_event.set()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _serve(self, stream: TlsStream, caller: str, mode: _Mode) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        while not self._stopping and mode.generation == self._mode.generation:
            try:
                got = await self._read_request(conn, stream)
                if got is None:
                    return
                request, body = got
                status, answer, headers = await self._dispatch(request, body, caller, mode)
            except _HttpProblem as exc:
                status, answer, headers = exc.status, codec.encode_error(exc.error), []
                log.warning("bad request from %s: %s", caller, exc.error)
            except h11.RemoteProtocolError as exc:
                if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                    return
                err = RpcError(f"malformed HTTP request: {exc}", kind=ErrorKind.INVALID)
                status, answer, headers = exc.error_status_hint, codec.encode_error(err), []
                log.warning("bad request from %s: %s", caller, err)
            close = (
                self._stopping
                or conn.their_state is not h11.DONE
                or mode.generation != self._mode.generation
            )
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(answer))),
                *headers,
            ]
            if close:
                headers.append(("connection", "close"))
            out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
            out += conn.send(h11.Data(data=answer)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
            await stream.write(out)
            if close or conn.our_state is h11.MUST_CLOSE:
                await stream.close_notify()
                return
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, stream: TlsStream
    ) -> tuple[h11.Request, bytes] | None:
        """Read one whole request; None when the caller closed or stayed idle too long."""
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await asyncio.wait_for(stream.read(), self._idle_timeout)
                except TimeoutError:
                    return None
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
                for name, value in event.headers:
                    if name == b"content-length" and int(value) > codec.MAX_BODY:
                        raise _too_large()
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > codec.MAX_BODY:
                    raise _too_large()
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # PAUSED cannot happen before we answer
                return None

    async def _dispatch(
        self, request: h11.Request, body: bytes, caller: str, mode: _Mode
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        name = path.removeprefix("/rpc/") if path.startswith("/rpc/") else None
        call = mode.handlers.get(name) if name else None
        if call is None or name is None:
            raise _HttpProblem(
                404,
                RpcError(
                    f"this node has no RPC call at {path!r} (different software versions?)",
                    kind=ErrorKind.NOT_FOUND,
                    path=path,
                ),
            )
        if request.method != b"POST":
            err = RpcError(
                f"call {name} needs POST, not {request.method.decode('ascii', 'replace')}",
                kind=ErrorKind.INVALID,
                call=name,
            )
            return 405, codec.encode_error(err), [("allow", "POST")]
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = True
        start = time.monotonic()
        try:
            # The one place where the node daemon runs blocking backend code (STYLE §5).
            reply: Reply = await asyncio.to_thread(mode.handlers.handle, name, body)
        finally:
            self._conns[task] = False
            if not any(self._conns.values()):
                self._idle_event.set()
        elapsed = time.monotonic() - start
        log.debug("<-- %s from %s: %d in %.3fs", name, caller, reply.status, elapsed)
        if reply.error is not None:
            if reply.unexpected:
                log.error(
                    "call %s from %s failed after %.3fs: %s",
                    name,
                    caller,
                    elapsed,
                    reply.error,
                    exc_info=reply.error.__cause__,
                )
            elif reply.status >= 500:
                # NOTE: the caller (the master's job executor) handles and logs this error;
                # the node keeps an INFO line for its own history (STYLE: log once).
                log.info(
                    "call %s from %s failed after %.3fs: %s", name, caller, elapsed, reply.error
                )
            else:
                log.warning("call %s from %s refused: %s", name, caller, reply.error)
        return reply.status, reply.body, []


def _too_large() -> _HttpProblem:
    return _HttpProblem(
        413,
        RpcError(f"request body larger than {codec.MAX_BODY} bytes", kind=ErrorKind.INVALID),
    )


def _addr(sockname: Any) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname)


def _caller_name(peercert: Any, peer: str) -> str:
    """``<CN>@<addr>`` for logs, from the verified client certificate."""
    if isinstance(peercert, dict):
        for rdn in peercert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return f"{value}@{peer}"
    return peer


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no TLS handshake within the time limit"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no client certificate"
        if reason == "UNEXPECTED_EOF_WHILE_READING":
            return (
                "the caller hung up during the TLS handshake (does it not trust our certificate?)"
            )
        if "ALERT_" in reason:  # the caller aborted the handshake
            alert = reason.split("ALERT_", 1)[1].replace("_", " ").lower()
            return f"the caller aborted the TLS handshake (alert: {alert}; wrong cluster CA?)"
        return f"TLS handshake failed ({reason})"
    return f"connection failed during TLS handshake ({exc})"

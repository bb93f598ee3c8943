"""The migration tunnel: ``xl migrate`` over Corral's mutual TLS instead of ssh.

``xl migrate -s <command> ... <domain> <host>`` runs ``sh -c "exec <command> <host> xl
[-t] [-T] [-v...] migrate-receive [-e] [-d] [-p]"`` and speaks its migration protocol over
that program's stdin and stdout, in both directions (stream, acknowledgements, "permission
to start", final report). ssh would run ``xl migrate-receive`` on ``<host>``; Corral uses
instead:

* on the destination, a :class:`TunnelListener` started by the driver's accept step: a
  one-shot TCP listener that takes exactly **one** connection (the listening socket is closed
  at once, later connections are refused), requires a client certificate of the cluster CA
  (``server_ssl_context``), checks the one-time token with :func:`hmac.compare_digest`,
  allows only the flags ``xl migrate`` passes, then runs ``receive_argv`` (the driver gives
  ``[xl, "migrate-receive", ...]``) with its stdin/stdout connected to the stream and its
  stderr captured;
* on the source, this module as a program (:func:`sender_command` builds the command for
  ``-s``): it connects with the node's certificate (``client_ssl_context``), checks that the
  destination presents the certificate of ``--server-name`` (its node name), sends the token
  (read from the environment variable :data:`TOKEN_ENV`, never from argv) and the remote
  command, then copies its stdin to the tunnel and the tunnel to its stdout.

Inside TLS the two sides exchange frames (1 type byte, 4 length bytes, payload), so each
direction ends with an explicit end-of-stream frame (half-close without TLS-level tricks)::

    sender -> listener   HELLO {"token", "args"}, DATA..., EOF
    listener -> sender   ACCEPT {"ok": true} | {"error"}, DATA..., EOF, STATUS {"rc", "error"}

Like ssh, the sender exits with the remote command's exit status once STATUS arrives, and
with 255 when the tunnel itself fails (refused, TLS error, connection lost), so ``xl
migrate`` reports a failed migration. Every step is bounded: accepting (``accept_timeout``),
the TLS handshake and the HELLO (:data:`HANDSHAKE_TIMEOUT`), and the stream, which fails when
no byte has moved either way for ``io_timeout`` seconds; :meth:`TunnelListener.close` kills a
receiver that still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import hmac
import logging
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from corral.common.errors import CorralError, ErrorKind, HypervisorError
from corral.common.paths import Paths
from corral.hypervisor.xen.tunnelio import (
    ACCEPT,
    DATA,
    EOF,
    HELLO,
    MAX_FRAME,
    STATUS,
    Activity,
    close_writer,
    control,
    decode_control,
    finish_tasks,
    frame,
    pipe_reader,
    pipe_writer,
    read_frame,
    wait_exit,
    why,
)

log = logging.getLogger(__name__)

#: The environment variable that carries the one-time token to the sender.
TOKEN_ENV = "CORRAL_XEN_TUNNEL_TOKEN"
#: Seconds for the TCP connect, the TLS handshake and the HELLO/ACCEPT exchange, each.
HANDSHAKE_TIMEOUT = 30.0
#: Seconds without a byte moving either way after which the stream is given up. xl is
#: silent while the destination restores the domain (7-34 s seen under TCG), so be generous.
IO_TIMEOUT = 300.0
#: Seconds given to the receiver's output to drain after it exited.
DRAIN_TIMEOUT = 10.0
#: Seconds to wait for a killed receiver, and for the listener thread to end on close().
KILL_TIMEOUT = 10.0
#: Exit status of the sender when the tunnel fails (ssh uses 255 for its own errors too).
TUNNEL_FAILED = 255

#: Options of ``xl migrate-receive`` that may be passed on: -e (no monitoring daemon),
#: -d (debug; older xl sends it), -p (leave the domain paused), -F (no daemonizing).
RECEIVE_FLAGS = frozenset({"-e", "-d", "-p", "-F"})
#: Global ``xl`` options ``xl migrate`` puts before ``migrate-receive``: -t (progress with
#: carriage returns, for a tty), -T (timestamps), -v... (verbosity). They only change how
#: the receiver prints its log, so they are accepted and dropped.
_DROPPED = re.compile(r"-t|-T|-v+")


@dataclasses.dataclass(frozen=True, slots=True)
class TunnelResult:
    """How an incoming migration tunnel ended.

    Attributes:
        rc: exit status of the receiver (negative: killed by that signal); None when it
            never ran (no connection, refused, TLS failure).
        output: the end of the receiver's stderr (what ``xl migrate-receive`` printed).
        error: why the tunnel failed, ``""`` when it did not.
        bytes_in: stream bytes received from the source.
        bytes_out: bytes of the receiver's answers sent back.
    """

    rc: int | None
    output: str = ""
    error: str = ""
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def ok(self) -> bool:
        """The tunnel worked and the receiver exited 0."""
        return not self.error and self.rc == 0


def receive_flags(args: Sequence[str]) -> list[str]:
    """Check the remote command a sender asks for; return the flags for migrate-receive.

    ``args`` is what ``xl migrate`` put after the host: ``xl``, optional global options
    (dropped), ``migrate-receive`` and its options, e.g. ``["xl", "-t",
    "migrate-receive", "-p"]`` -> ``["-p"]``.

    Raises:
        HypervisorError: (INVALID) anything else: another program or subcommand, or an
            option outside :data:`RECEIVE_FLAGS` (such as Remus' ``-r`` or ``--colo``).
    """
    words = list(args)
    if not words or words[0] != "xl":
        raise HypervisorError(
            f"refused remote command {shlex.join(words)!r}: not xl", kind=ErrorKind.INVALID
        )
    index = 1
    while index < len(words) and _DROPPED.fullmatch(words[index]):
        index += 1
    if index >= len(words) or words[index] != "migrate-receive":
        raise HypervisorError(
            f"refused remote command {shlex.join(words)!r}: not xl migrate-receive",
            kind=ErrorKind.INVALID,
        )
    flags: list[str] = []
    for word in words[index + 1 :]:
        if word == "-T":  # NOTE: some xl versions put -T after the subcommand
            continue
        if word not in RECEIVE_FLAGS:
            raise HypervisorError(
                f"refused migrate-receive option {word!r} "
                f"(allowed: {' '.join(sorted(RECEIVE_FLAGS))})",
                kind=ErrorKind.INVALID,
            )
        if word not in flags:
            flags.append(word)
    return flags


# --- destination ----------------------------------------------------------------------------


def _default_server_context(paths: Paths) -> ssl.SSLContext:
    # NOTE: hypervisor/ does not import rpc/ at module level (STYLE.md §1); the node's TLS
    # identity is the one thing shared with the RPC layer, so it is borrowed lazily here,
    # as node/backend/transfer.py does.
    from corral.rpc.tls import server_ssl_context

    return server_ssl_context(paths)


def _default_client_context(paths: Paths) -> ssl.SSLContext:
    from corral.rpc.tls import client_ssl_context

    return client_ssl_context(paths)


class TunnelListener:
    """The destination end of one migration: accept one source, run the receiver.

    Args:
        paths: the node's layout (its certificate and the cluster CA make the TLS context).
        host: address to listen on (the node's migration address).
        port: TCP port (the ``migration_port`` hvparam; 0 lets the kernel choose, see
            :attr:`port` after :meth:`start`).
        token: the one-time secret the source must present.
        receive_argv: the receiver, e.g. ``[xl, "migrate-receive"]``; the allowed flags the
            source asks for are appended (those already present are not repeated).
        accept_timeout: seconds to wait for the source to connect.
        io_timeout: seconds without traffic after which the stream is given up.
        server_context: TLS context factory (default: the node's mutual-TLS server context).
    """

    def __init__(
        self,
        paths: Paths,
        *,
        host: str,
        port: int,
        token: str,
        receive_argv: Sequence[str],
        accept_timeout: float = 120.0,
        io_timeout: float = IO_TIMEOUT,
        server_context: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        if not token:
            raise HypervisorError("a migration tunnel needs a token", kind=ErrorKind.INVALID)
        if not receive_argv:
            raise HypervisorError("a migration tunnel needs a receiver", kind=ErrorKind.INVALID)
        self.paths = paths
        self.host = host
        self.port = port
        self._token = token.encode()
        self.receive_argv = list(receive_argv)
        self.accept_timeout = accept_timeout
        self.io_timeout = io_timeout
        self._context_factory = server_context or (lambda: _default_server_context(paths))
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[TunnelResult] | None = None
        self._closing = False
        self._done = threading.Event()
        self._result: TunnelResult | None = None
        self._stderr = bytearray()
        self._activity = Activity()
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TunnelListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Listen on ``host:port`` and serve one source in a background thread.

        Raises:
            TlsError: the node's certificate or the CA is missing or invalid.
            HypervisorError: the port is in use (EXISTS) or cannot be listened on
                (ENVIRONMENT); the listener was started already (WRONG_STATE).
        """
        if self._thread is not None or self._closing:
            raise HypervisorError(
                "the migration tunnel was started already", kind=ErrorKind.WRONG_STATE
            )
        context = self._context_factory()
        try:
            sock = socket.create_server((self.host, self.port))
        except OSError as exc:
            busy = exc.errno == errno.EADDRINUSE
            raise HypervisorError(
                f"cannot listen on {self.host}:{self.port} for a migration: {exc.strerror or exc}",
                kind=ErrorKind.EXISTS if busy else ErrorKind.ENVIRONMENT,
                host=self.host,
                port=self.port,
            ) from exc
        sock.setblocking(False)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(
            target=self._thread_main, args=(context,), name=f"xen-tunnel-{self.port}", daemon=True
        )
        self._thread.start()
        log.info("migration tunnel listening on %s:%d", self.host, self.port)

    @property
    def done(self) -> bool:
        """True once the tunnel ended (successfully or not)."""
        return self._done.is_set()

    def wait(self, timeout: float) -> TunnelResult:
        """How the tunnel ended; waits up to ``timeout`` seconds for it.

        Raises:
            HypervisorError: not started (WRONG_STATE), or still running after ``timeout``
                (TEMP_NO_RESOURCES; ask again later).
        """
        if self._thread is None:
            raise HypervisorError(
                "the migration tunnel was not started", kind=ErrorKind.WRONG_STATE
            )
        if not self._done.wait(timeout):
            raise HypervisorError(
                f"the migration tunnel on port {self.port} is still running",
                kind=ErrorKind.TEMP_NO_RESOURCES,
                bytes_in=self._activity.bytes_in,
            )
        assert self._result is not None
        return self._result

    def close(self) -> None:
        """Stop listening and kill the receiver if it still runs; idempotent, never raises.

        The tunnel's result (see :meth:`wait`) then says it was closed, unless it had ended
        before.
        """
        with self._guard:
            self._closing = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                loop.call_soon_threadsafe(task.cancel)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(KILL_TIMEOUT)
            if thread.is_alive():
                log.warning("migration tunnel thread on port %d did not end", self.port)
        proc = self._proc
        if proc is not None and proc.poll() is None:  # NOTE: only if the thread is stuck
            proc.kill()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        if thread is None:
            self._finish(TunnelResult(rc=None, error="the migration tunnel was closed"))

    def _finish(self, result: TunnelResult) -> None:
        if not self._done.is_set():
            self._result = result
            self._done.set()

    def _thread_main(self, context: ssl.SSLContext) -> None:
        loop = asyncio.new_event_loop()
        result = TunnelResult(rc=None, error="the migration tunnel was closed")
        try:
            with self._guard:
                if self._closing:
                    return
                self._loop = loop
                self._task = loop.create_task(self._serve(context))
            result = loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # the thread must always report
            log.exception("migration tunnel on port %d failed", self.port)
            result = TunnelResult(rc=None, error=f"the migration tunnel failed: {why(exc)}")
        finally:
            with self._guard:
                self._loop = None
                self._task = None
            loop.close()
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
            if self._proc is not None and result.rc is None:
                result = dataclasses.replace(result, rc=self._proc.returncode)
            self._finish(
                dataclasses.replace(
                    result,
                    output=self._stderr.decode("utf-8", "replace"),
                    bytes_in=self._activity.bytes_in,
                    bytes_out=self._activity.bytes_out,
                )
            )
            log.info(
                "migration tunnel on port %d ended: rc=%s %s",
                self.port,
                self._result.rc if self._result else None,
                self._result.error if self._result else "",
            )

    async def _serve(self, context: ssl.SSLContext) -> TunnelResult:
        """Accept one connection and run the session; failures become the result."""
        loop = asyncio.get_running_loop()
        sock = self._sock
        assert sock is not None
        try:
            raw, peer = await asyncio.wait_for(loop.sock_accept(sock), self.accept_timeout)
        except TimeoutError:
            return TunnelResult(
                rc=None,
                error=f"no migration source connected within {self.accept_timeout:g}s",
            )
        finally:
            sock.close()  # exactly one connection: later ones are refused
        log.info("migration tunnel on port %d: connection from %s", self.port, peer)
        try:
            reader = asyncio.StreamReader(limit=MAX_FRAME, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport, _ = await asyncio.wait_for(
                loop.connect_accepted_socket(
                    lambda: protocol, raw, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
                ),
                HANDSHAKE_TIMEOUT + 1,
            )
        except (OSError, TimeoutError) as exc:
            raw.close()
            return TunnelResult(
                rc=None,
                error=f"TLS handshake with the migration source {peer[0]} failed: {why(exc)}",
            )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            return await self._session(reader, writer)
        except (HypervisorError, OSError, TimeoutError) as exc:
            return TunnelResult(
                rc=None, error=f"migration tunnel from {peer[0]} failed: {why(exc)}"
            )
        finally:
            await close_writer(writer)

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> TunnelResult:
        kind, payload = await asyncio.wait_for(read_frame(reader), HANDSHAKE_TIMEOUT)
        hello = decode_control(payload, "greeting") if kind == HELLO else {}
        token, args = hello.get("token"), hello.get("args")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self._token):
            return await self._refuse(writer, "wrong token")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            return await self._refuse(writer, "no remote command")
        try:
            flags = receive_flags(args)
        except HypervisorError as exc:
            return await self._refuse(writer, str(exc))
        argv = self.receive_argv + [f for f in flags if f not in self.receive_argv]
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list; long-lived, owned here
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            return await self._refuse(writer, f"cannot run {argv[0]}: {why(exc)}")
        self._proc = proc
        log.info("migration tunnel on port %d runs %s (pid %d)", self.port, argv, proc.pid)
        try:
            writer.write(control(ACCEPT, {"ok": True}))
            await writer.drain()
            return await self._pump(proc, reader, writer)
        finally:
            await self._reap(proc)

    async def _refuse(self, writer: asyncio.StreamWriter, why: str) -> TunnelResult:
        with contextlib.suppress(OSError):
            writer.write(control(ACCEPT, {"error": f"refused: {why}"}))
            await asyncio.wait_for(writer.drain(), HANDSHAKE_TIMEOUT)
        return TunnelResult(rc=None, error=f"migration tunnel refused: {why}")

    async def _pump(
        self,
        proc: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> TunnelResult:
        assert proc.stdin and proc.stdout and proc.stderr
        activity = self._activity
        stdin = await pipe_writer(proc.stdin)
        stdout, stdout_transport = await pipe_reader(proc.stdout)
        stderr, stderr_transport = await pipe_reader(proc.stderr)
        upstream = asyncio.create_task(self._upstream(reader, stdin))
        downstream = asyncio.create_task(self._downstream(stdout, writer))
        errors = asyncio.create_task(self._collect_stderr(stderr))
        exited = asyncio.create_task(wait_exit(proc))
        idle = asyncio.create_task(activity.idle(self.io_timeout))
        tasks = [upstream, downstream, errors, exited, idle]
        error = ""
        try:
            await asyncio.wait({exited, idle}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                error = f"no data moved through the migration tunnel for {self.io_timeout:g}s"
                proc.kill()
                await exited
            await asyncio.wait({downstream, errors}, timeout=DRAIN_TIMEOUT)
            lost = upstream.exception() if upstream.done() and not upstream.cancelled() else None
            if lost is not None and not error:
                error = f"the migration source went away: {why(lost)}"
            with contextlib.suppress(OSError, TimeoutError):
                writer.write(control(STATUS, {"rc": proc.returncode, "error": error}))
                await asyncio.wait_for(writer.drain(), HANDSHAKE_TIMEOUT)
            return TunnelResult(rc=proc.returncode, error=error)
        finally:
            await finish_tasks(tasks)
            stdin.close()
            stdout_transport.close()
            stderr_transport.close()

    async def _upstream(self, reader: asyncio.StreamReader, stdin: asyncio.StreamWriter) -> None:
        """Source -> receiver's stdin, until the source's EOF frame; stdin closed after."""
        broken = False
        try:
            while True:
                kind, payload = await read_frame(reader)
                if kind == EOF:
                    return
                if kind != DATA:
                    raise HypervisorError(
                        f"unexpected tunnel frame {kind!r}", kind=ErrorKind.INVALID
                    )
                self._activity.moved(n_in=len(payload))
                if broken:
                    continue  # the receiver stopped reading: keep draining the source
                try:
                    stdin.write(payload)
                    await stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    broken = True
        finally:
            stdin.close()

    async def _downstream(self, stdout: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Receiver's stdout -> source, then an EOF frame; drains stdout if the source is gone."""
        sending = True
        while True:
            chunk = await stdout.read(MAX_FRAME)
            if chunk:
                self._activity.moved(n_out=len(chunk))
            if not sending:
                if not chunk:
                    return
                continue
            try:
                writer.write(frame(DATA, chunk) if chunk else frame(EOF))
                await writer.drain()
            except OSError:
                sending = False
            if not chunk:
                return

    async def _collect_stderr(self, stderr: asyncio.StreamReader) -> None:
        while chunk := await stderr.read(MAX_FRAME):
            self._stderr += chunk
            del self._stderr[: max(0, len(self._stderr) - 64 * 1024)]

    async def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            log.warning("killing the migration receiver (pid %d)", proc.pid)
            proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait_exit(proc), KILL_TIMEOUT)


# --- source ---------------------------------------------------------------------------------


def sender_command(paths: Paths, *, port: int, server_name: str) -> str:
    """The command for ``xl migrate -s``: this module as a program, quoted for ``sh``.

    ``xl`` appends ``<host> xl migrate-receive [flags]`` and runs the whole through
    ``sh -c "exec ..."``, so this is necessarily a shell string; every word is quoted. The
    token is not in it: the caller sets :data:`TOKEN_ENV` in ``xl``'s environment.
    """
    return shlex.join(
        [
            sys.executable,
            "-m",
            "corral.hypervisor.xen.tunnel",
            "--root",
            paths.root,
            "--port",
            str(port),
            "--server-name",
            server_name,
        ]
    )


def _exit_status(rc: Any) -> int:
    if isinstance(rc, bool) or not isinstance(rc, int):
        return TUNNEL_FAILED
    if rc < 0:  # killed by a signal, reported like a shell does
        return min(128 - rc, TUNNEL_FAILED)
    return min(rc, TUNNEL_FAILED)


def _detach_fd(fd: int, mode: str) -> Any:
    """A private copy of ``fd`` as a file; ``fd`` itself then points at /dev/null.

    Closing the copy then really closes our end of the pipe (xl sees EOF), and later writes
    by the interpreter to fd 0/1 go nowhere instead of failing.
    """
    copy = os.dup(fd)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, fd)
    os.close(null)
    return open(copy, mode, buffering=0)  # closed by the pipe transport that takes it


class _Sender:
    """The source end, run by ``xl migrate`` as ``<command> <host> xl migrate-receive ...``."""

    def __init__(self, opts: argparse.Namespace, token: str) -> None:
        self.opts = opts
        self.token = token
        self.activity = Activity()

    def fail(self, message: str) -> int:
        sys.stderr.write(
            f"corral migration tunnel to {self.opts.host}:{self.opts.port}: {message}\n"
        )
        sys.stderr.flush()
        return TUNNEL_FAILED

    async def run(self) -> int:
        opts = self.opts
        try:
            context = _default_client_context(Paths(opts.root))
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    opts.host,
                    opts.port,
                    ssl=context,
                    server_hostname=opts.server_name,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                ),
                opts.connect_timeout,
            )
        except CorralError as exc:
            return self.fail(str(exc))
        except (OSError, TimeoutError) as exc:
            return self.fail(f"cannot connect: {why(exc)}")
        try:
            return await self._session(reader, writer)
        except (HypervisorError, OSError, TimeoutError) as exc:
            return self.fail(why(exc))
        finally:
            await close_writer(writer)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(control(HELLO, {"token": self.token, "args": self.opts.command}))
        await writer.drain()
        kind, payload = await asyncio.wait_for(read_frame(reader), HANDSHAKE_TIMEOUT)
        answer = decode_control(payload, "answer") if kind == ACCEPT else {}
        if not answer.get("ok"):
            return self.fail(str(answer.get("error") or "the destination did not accept"))
        try:
            stdin, stdin_transport = await pipe_reader(_detach_fd(0, "rb"))
            stdout = await pipe_writer(_detach_fd(1, "wb"))
        except ValueError as exc:  # a regular file: asyncio pipes need pipes or sockets
            return self.fail(f"stdin and stdout must be pipes: {exc}")
        upstream = asyncio.create_task(self._upstream(stdin, writer))
        idle = asyncio.create_task(self.activity.idle(self.opts.io_timeout))
        downstream = asyncio.create_task(self._downstream(reader, stdout))
        try:
            await asyncio.wait({downstream, idle}, return_when=asyncio.FIRST_COMPLETED)
            if not downstream.done():
                return self.fail(f"no data moved for {self.opts.io_timeout:g}s")
            status = downstream.result()
            if status.get("error"):
                sys.stderr.write(f"corral migration tunnel: {status['error']}\n")
            return _exit_status(status.get("rc"))
        finally:
            await finish_tasks([upstream, idle, downstream])
            stdin_transport.close()
            stdout.close()

    async def _upstream(self, stdin: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await stdin.read(MAX_FRAME):
            self.activity.moved(n_out=len(chunk))
            writer.write(frame(DATA, chunk))
            await writer.drain()
        writer.write(frame(EOF))
        await writer.drain()

    async def _downstream(
        self, reader: asyncio.StreamReader, stdout: asyncio.StreamWriter
    ) -> dict[str, Any]:
        """Tunnel -> stdout until the STATUS frame, which is returned."""
        open_ = True
        while True:
            kind, payload = await read_frame(reader)
            if kind == STATUS:
                return decode_control(payload, "status")
            if kind == EOF:
                stdout.close()
                open_ = False
            elif kind == DATA:
                self.activity.moved(n_in=len(payload))
                if open_:
                    try:
                        stdout.write(payload)
                        await stdout.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        open_ = False  # xl stopped reading; keep draining for the status
            else:
                raise HypervisorError(f"unexpected tunnel frame {kind!r}", kind=ErrorKind.INVALID)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corral.hypervisor.xen.tunnel",
        description="Corral's replacement for ssh in 'xl migrate -s': connects to the "
        "destination node's migration tunnel with mutual TLS. The token is read from "
        f"${TOKEN_ENV}.",
    )
    parser.add_argument("--root", required=True, help="the node's root (its certificates)")
    parser.add_argument("--port", type=int, required=True, help="the destination's tunnel port")
    parser.add_argument("--server-name", required=True, help="the destination's node name")
    parser.add_argument("--connect-timeout", type=float, default=HANDSHAKE_TIMEOUT)
    parser.add_argument("--io-timeout", type=float, default=IO_TIMEOUT)
    parser.add_argument("host", help="the destination's address (xl's <host>)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="xl migrate-receive ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sender: ``... --root R --port P --server-name N HOST xl migrate-receive ...``.

    Returns:
        The receiver's exit status, or 255 when the tunnel failed (the reason is on stderr);
        2 for bad usage.
    """
    try:
        opts = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    token = os.environ.get(TOKEN_ENV, "")
    sender = _Sender(opts, token)
    if not token:
        return sender.fail(f"no token in ${TOKEN_ENV}")
    return asyncio.run(sender.run())


if __name__ == "__main__":
    sys.exit(main())

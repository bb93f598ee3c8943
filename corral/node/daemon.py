"""``corral-noded``: the node daemon.

::

    corral-noded [--root DIR] [--bind ADDR] [--port N] [--node-name NAME] [--join]
                 [--foreground] [--log-file F] [--log-level LEVEL]

It serves the RPC calls of ``corral/rpc/calls.py`` over HTTPS with mutual TLS (see
``docs/architecture/rpc.md``) and runs each in a worker thread on the node backend.

* Files come from ``--root`` (default ``$CORRAL_ROOT`` or ``/``): the cluster CA, this node's
  certificate and key. Without them it refuses to start ("run corral cluster init first"),
  unless ``--join`` is given.
* ``--join`` (a host that is not a node yet): creates the node's key, a self-signed bootstrap
  certificate and a one-time join token (printed, and kept root-only in ``<data_dir>/join-token``)
  and serves only the join calls (``rpc/calls_nodes.py``), without client authentication.
  Once the master has joined it (``corral node add NAME --join-token TOKEN``) it switches to
  mutual TLS on the same port, and back to join mode (new token) if the master removes it.
  On a host that is a node already, ``--join`` is ignored.
* ``--node-name`` defaults to the common name of the node certificate; ``--bind`` to the first
  IP address in that certificate (``0.0.0.0`` if it has none); ``--port`` to 1811.
* Without ``--foreground`` it starts itself again detached (``common/daemonize.py``): new
  session, output to the log file, and returns once the daemon serves. With ``--foreground``
  it logs to stderr unless ``--log-file`` is given.
* The pid file (``<root>/run/corral/corral-noded.pid``) is written once the port is bound and
  removed on exit. SIGTERM or SIGINT stop it gracefully: no new connections, running calls get
  :data:`STOP_GRACE` seconds to finish.
* The daemon does not own the guests: the hypervisor drivers detach QEMU from it, and it never
  signals its process group, so stopping or killing it leaves running guests running.

Exit codes: 0 stopped normally (or detached successfully), 1 could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import Any

import corral
from corral.common import daemonize
from corral.common.errors import CorralError, ErrorKind
from corral.common.log import setup_logging
from corral.common.paths import DEFAULT_NODED_PORT, Paths
from corral.node.backend import membership
from corral.node.handlers import CallHandlers
from corral.rpc import tls
from corral.rpc.calls_nodes import JOIN_CALLS, NODE_LEAVE
from corral.rpc.server import Dispatcher, Reply, RpcServer

log = logging.getLogger("corral.node.daemon")  # not __main__ under "python -m"

NAME = "corral-noded"
#: Seconds running calls get to finish after SIGTERM.
STOP_GRACE = 30.0
#: Worker threads for backend calls (each call blocks one while it runs).
WORKERS = 32
DEFAULT_BACKEND = "corral.node.backend:NodeBackend"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=NAME, description="Corral node daemon")
    p.add_argument("--root", help="root directory of Corral's files (default $CORRAL_ROOT or /)")
    p.add_argument("--bind", help="address to listen on (default: from the node certificate)")
    p.add_argument("--port", type=int, default=DEFAULT_NODED_PORT, help="TCP port (1811)")
    p.add_argument("--node-name", help="this node's name (default: from the node certificate)")
    p.add_argument("--foreground", action="store_true", help="do not detach")
    p.add_argument("--log-file", help="log file (default: stderr with --foreground)")
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    p.add_argument(
        "--join", action="store_true", help="wait to be added to a cluster (prints a join token)"
    )
    # Testing hook: import path of the backend class, constructed as cls(paths, node_name).
    p.add_argument("--backend", default=DEFAULT_BACKEND, help=argparse.SUPPRESS)
    return p


def _check_certs(paths: Paths) -> None:
    missing = [
        os.path.basename(f)
        for f in (paths.ca_cert, paths.node_cert, paths.node_key)
        if not os.path.exists(f)
    ]
    if missing:
        raise CorralError(
            f"no cluster certificates in {paths.crypto_dir} (missing {', '.join(missing)}): "
            "run corral cluster init first, or start with --join to be added to a cluster",
            kind=ErrorKind.ENVIRONMENT,
            missing=missing,
        )


def _load_backend(spec: str, paths: Paths, node_name: str) -> object:
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name or "NodeBackend")
    except (ImportError, AttributeError) as exc:
        raise CorralError(
            f"cannot load the node backend {spec}: {exc}", kind=ErrorKind.FAULT, backend=spec
        ) from exc
    backend: object = cls(paths, node_name)
    return backend


def _detach(argv: Sequence[str], paths: Paths, pid_file: str, log_file: str) -> int:
    """Run ourselves again with ``--foreground`` in a new session; wait until it serves."""
    running = daemonize.daemon_status(pid_file)
    if running is not None:
        raise CorralError(
            f"{NAME} is already running (pid {running})", kind=ErrorKind.EXISTS, pid=running
        )
    # NOTE: the child runs with cwd "/", so make sure it finds this very package even when
    # it is not installed (running from a source tree).
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(corral.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    child = [sys.executable, "-m", "corral.node.daemon", *argv, "--foreground"]
    child += ["--log-file", log_file, "--root", paths.root]  # the last occurrence wins
    pid = daemonize.start_daemon(child, pid_file, log_file, env=env)
    sys.stdout.write(f"{NAME} started (pid {pid})\n")
    return 0


async def _serve(server: RpcServer, pid_file: str, node_name: str, modes: _Modes) -> int:
    """Serve until SIGTERM/SIGINT; returns the number of calls abandoned at the end."""
    loop = asyncio.get_running_loop()
    modes.loop = loop
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="call")
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        daemonize.claim_pid_file(pid_file, name=NAME)
        log.info(
            "%s %s serving node %s on %s:%d (pid %d)",
            NAME,
            corral.__version__,
            node_name,
            server.host,
            server.port,
            os.getpid(),
        )
        await stop.wait()
        log.info("stopping (signal received)")
    finally:
        abandoned = await server.stop(STOP_GRACE)
        daemonize.release_pid_file(pid_file)
    return abandoned


class _LeaveWatcher:
    """The normal call table; after a successful ``node_leave`` the daemon goes to join mode."""

    def __init__(self, inner: CallHandlers, on_leave: Callable[[], None]) -> None:
        self._inner = inner
        self._on_leave = on_leave

    def get(self, name: str) -> Any:
        """See :class:`~corral.rpc.server.Dispatcher`."""
        return self._inner.get(name)

    def handle(self, name: str, body: bytes) -> Reply:
        """See :class:`~corral.rpc.server.Dispatcher`."""
        reply = self._inner.handle(name, body)
        if name == NODE_LEAVE.name and reply.status == 200:
            self._on_leave()
        return reply


class _Modes:
    """Builds the daemon's two modes (join, member) and switches the server between them."""

    def __init__(self, args: argparse.Namespace, paths: Paths) -> None:
        self.args = args
        self.paths = paths
        self.server: RpcServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def member(self, node_name: str | None) -> tuple[Dispatcher, tls.ReloadingContext, str]:
        """Handlers, TLS context (reloaded when the CRL changes) and name of a member node.

        Raises:
            CorralError: the certificates are missing or invalid, or the backend cannot load.
        """
        paths = self.paths
        _check_certs(paths)
        ctx = tls.ReloadingContext(
            lambda: tls.server_ssl_context(paths), [paths.crl, paths.ca_cert, paths.node_cert]
        )
        cert_name = tls.cert_common_name(paths.node_cert)
        name = node_name or cert_name
        if name != cert_name:
            log.warning(
                "node name %s differs from the certificate's %s: callers will refuse this node",
                name,
                cert_name,
            )
        backend = _load_backend(self.args.backend, paths, name)
        return _LeaveWatcher(CallHandlers(backend), self._left), ctx, name

    def joining(self) -> tuple[Dispatcher, ssl.SSLContext]:
        """Handlers and TLS context of join mode (prepares key, certificate and token).

        Raises:
            CorralError / TlsError: the join files cannot be created.
        """
        membership.prepare_join(self.paths, [self.args.bind] if self.args.bind else [])
        state = membership.JoinState(self.paths, self._joined)
        return CallHandlers(state, JOIN_CALLS), tls.join_server_context(self.paths)

    def _switch(self, handlers: Dispatcher, ctx: Any) -> None:
        assert self.server is not None and self.loop is not None
        source = ctx.get if isinstance(ctx, tls.ReloadingContext) else ctx
        self.loop.call_soon_threadsafe(self.server.switch, handlers, source)

    def _joined(self, node_name: str) -> None:
        # NOTE: runs in the worker thread of node_join_finish, before its answer is sent;
        # the switch is queued on the loop and applies to connections accepted after it.
        try:
            handlers, ctx, _name = self.member(node_name)
        except CorralError as exc:
            log.error("joined as %s but cannot serve as a member (restart me): %s", node_name, exc)
            return
        log.info("joined the cluster as %s; serving with mutual TLS", node_name)
        self._switch(handlers, ctx)

    def _left(self) -> None:
        try:
            handlers, ctx = self.joining()
        except CorralError as exc:
            log.error("left the cluster but cannot enter join mode (restart me): %s", exc)
            return
        log.warning(
            "removed from the cluster: back in join mode (token in %s)", self.paths.join_token
        )
        self._switch(handlers, ctx)


def _run(args: argparse.Namespace, paths: Paths, pid_file: str) -> int:
    daemonize.set_process_name(NAME)
    os.chdir("/")  # do not keep the starter's working directory busy
    setup_logging(log_file=args.log_file, level=args.log_level, name="noded")
    joining = args.join and not membership.is_member(paths)
    if not joining:
        _check_certs(paths)
    running = daemonize.daemon_status(pid_file, name=NAME)
    if running is not None and running != os.getpid():
        raise CorralError(
            f"{NAME} is already running (pid {running})", kind=ErrorKind.EXISTS, pid=running
        )
    modes = _Modes(args, paths)
    handlers: Dispatcher
    ssl_source: Any
    if joining:
        handlers, ssl_source = modes.joining()
        bind = args.bind or "0.0.0.0"
        node_name = "(joining)"
    else:
        handlers, ctx, node_name = modes.member(args.node_name)
        ssl_source = ctx.get
        bind = args.bind or next(iter(tls.cert_addresses(paths.node_cert)), "0.0.0.0")
    server = RpcServer(handlers, ssl_source, host=bind, port=args.port)
    modes.server = server
    abandoned = asyncio.run(_serve(server, pid_file, node_name, modes))
    log.info("%s stopped", NAME)
    if abandoned:
        # NOTE: worker threads cannot be interrupted and the interpreter would wait for them
        # at exit; the master has already seen the connection close and fails those calls.
        logging.shutdown()
        os._exit(0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``corral-noded``; returns the exit code (see the module docstring)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(raw)
    paths = Paths(os.path.abspath(args.root)) if args.root else Paths.from_env()
    if args.log_file:
        args.log_file = os.path.abspath(args.log_file)
    pid_file = paths.pid_file(NAME)
    try:
        if args.join and not membership.is_member(paths):
            token = membership.prepare_join(paths, [args.bind] if args.bind else [])
            if not (args.foreground and args.log_file):  # NOTE: never into a log file
                sys.stdout.write(f"join token: {token}\n")
                sys.stdout.flush()
        if args.foreground:
            return _run(args, paths, pid_file)
        if not args.join:
            _check_certs(paths)
        log_file = args.log_file or os.path.join(paths.log_dir, f"{NAME}.log")
        return _detach(raw, paths, pid_file, log_file)
    except CorralError as exc:
        if args.foreground and args.log_file:
            log.error("cannot start: %s", exc)
        sys.stderr.write(f"{NAME}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

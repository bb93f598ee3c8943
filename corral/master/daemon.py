"""``corral-master``: the master daemon (API + job executor).

::

    corral-master [--root DIR] [--foreground] [--log-file F] [--log-level LEVEL]

* Reads ``<root>/var/lib/corral/cluster.json`` (written by ``cluster init``) for the store URL
  and the RAPI address, opens the store and recovers the jobs a previous master left behind
  (see ``jobs/executor.py``) before serving anything.
* Serves the API app (``corral/api/app.py``) on HTTPS at the RAPI address and port with
  ``paths.rapi_cert``, and on the UNIX socket ``paths.master_socket`` (mode 0600, created
  under a restrictive umask so it is never reachable by others: the file permissions are the
  authentication, as Ganeti's luxi socket).
* Without ``--foreground`` it starts itself again detached (``common/daemonize.py``) and
  returns once the daemon serves. The pid file (``<root>/run/corral/corral-master.pid``) is
  written once both listeners are bound and removed on exit.
* Runs the watcher (``master/watcher.py``: instances whose guest powered itself off are
  recorded "user down") every ``$CORRAL_WATCHER_INTERVAL`` seconds (default 30, 0 = off).
* Leadership (``master/leader.py``, ``docs/architecture/leadership.md``): every master
  candidate runs this daemon and serves the API. With an etcd store the daemon campaigns for
  the leader lease (TTL ``$CORRAL_LEADER_TTL`` seconds, default 3); only while it leads does
  it run the job executor and the watcher and hold the master IP. With SQLite the only master
  always leads. ``--node-name`` (default: the name in this node's certificate) names this
  master; a candidate other than the node the cluster was initialised on serves the RAPI on
  its own primary IP (unless ``rapi_bind`` is a wildcard address).
* SIGTERM/SIGINT: stop accepting requests, give running jobs :data:`STOP_GRACE` seconds, then
  interrupt them (single master: they end in ``error`` saying the master was stopped; with an
  election they are left to the next leader, which resumes or fails them), and resign.

Exit codes: 0 stopped normally (or detached successfully), 1 could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Generator, Sequence

import uvicorn

import corral
from corral.common import daemonize
from corral.common.errors import CorralError, ErrorKind
from corral.common.log import setup_logging
from corral.common.paths import Paths
from corral.master.bootstrap import ClusterConf, load_cluster_conf, open_store
from corral.master.config import ClusterConfig
from corral.master.leader import DEFAULT_TTL, LeaderElection
from corral.master.rpcrunner import RpcNodeRunner
from corral.master.service import MasterService
from corral.master.watcher import Watcher, interval_from_env
from corral.store.base import Store

log = logging.getLogger("corral.master.daemon")  # not __main__ under "python -m"

NAME = "corral-master"
#: Seconds running jobs get to finish after SIGTERM.
STOP_GRACE = 10.0
#: Seconds open HTTP requests (long polls) get after SIGTERM.
HTTP_GRACE = 5


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=NAME, description="Corral master daemon (API + jobs)")
    p.add_argument("--root", help="root directory of Corral's files (default $CORRAL_ROOT or /)")
    p.add_argument("--foreground", action="store_true", help="do not detach")
    p.add_argument("--log-file", help="log file (default: stderr with --foreground)")
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    p.add_argument("--node-name", help="this master's node (default: from its certificate)")
    return p


#: Environment variable overriding the leader lease TTL (seconds, integer).
ENV_LEADER_TTL = "CORRAL_LEADER_TTL"
_WILDCARDS = ("0.0.0.0", "::")


def leader_ttl_from_env() -> int:
    """The leader lease TTL from ``$CORRAL_LEADER_TTL`` (bad values: the default)."""
    raw = os.environ.get(ENV_LEADER_TTL, "")
    try:
        return max(1, int(raw)) if raw else DEFAULT_TTL
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", ENV_LEADER_TTL, raw)
        return DEFAULT_TTL


def node_name_of(paths: Paths, conf: ClusterConf, given: str | None) -> str:
    """This master's node name.

    ``given``, else the CN of the node certificate, else the node the cluster was initialised
    on (when the certificate cannot be read; logged).
    """
    if given:
        return given
    from corral.rpc import tls

    try:
        return tls.cert_common_name(paths.node_cert)
    except CorralError as exc:
        log.warning("cannot read the node name from %s: %s", paths.node_cert, exc)
        return conf.master_node


def _may_lead(store: Store, node: str) -> bool:
    """Whether ``node`` may campaign: a master-capable, online master candidate."""
    found = ClusterConfig(store).read_node(node)
    return bool(
        found is not None and found.master_candidate and found.master_capable and not found.offline
    )


def _rapi_bind(store: Store, conf: ClusterConf, node: str) -> str:
    """Where this master serves the RAPI (see the module docstring)."""
    if conf.rapi_bind in _WILDCARDS or node == conf.master_node:
        return conf.rapi_bind
    found = ClusterConfig(store).read_node(node)
    if found is None:
        raise CorralError(
            f"node {node} is not in the cluster; cannot run a master here",
            kind=ErrorKind.WRONG_STATE,
            node=node,
        )
    return found.primary_ip


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the daemon (two servers share it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Do not install uvicorn's handlers."""
        yield


def _listen_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket.

    Raises:
        CorralError: the address cannot be bound (kind ENVIRONMENT).
    """
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CorralError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            kind=ErrorKind.ENVIRONMENT,
        ) from exc
    sock.setblocking(False)
    return sock


def _listen_unix(path: str) -> socket.socket:
    """A listening UNIX socket at ``path`` with mode 0600 from the start.

    Raises:
        CorralError: the path exists and is not a socket, or it cannot be bound.
    """
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket of a dead master (the pid file check passed)
        else:
            raise CorralError(f"{path} exists and is not a socket", kind=ErrorKind.ENVIRONMENT)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CorralError(
            f"cannot prepare {path}: {exc.strerror or exc}", kind=ErrorKind.ENVIRONMENT
        ) from exc
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # NOTE: the socket is never reachable by others, not even briefly
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CorralError(
            f"cannot listen on {path}: {exc.strerror or exc}", kind=ErrorKind.ENVIRONMENT
        ) from exc
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    return sock


async def _serve(paths: Paths, conf: ClusterConf, pid_file: str, node: str) -> None:
    """Run the service and both listeners until SIGTERM/SIGINT."""
    from corral.api.app import create_app

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = open_store(conf.store)
    election: LeaderElection | None = None
    election_store: Store | None = None
    if conf.store.startswith("etcd://"):
        ttl = leader_ttl_from_env()
        # NOTE: its own connections with short requests, so a stuck API request can never
        # delay a lease refresh (and a stuck refresh self-fences in time).
        election_store = open_store(conf.store, timeout=max(0.5, ttl / 3), retry_for=ttl / 3)
        election = LeaderElection(
            election_store, node, ttl=ttl, eligible=lambda: _may_lead(store, node)
        )
    runner = RpcNodeRunner.from_paths(paths)
    service = MasterService(store, runner, paths, leadership=election, node_name=node)
    watcher = Watcher(service, interval=interval_from_env())
    service.add_leader_task(watcher.run)
    bind = _rapi_bind(store, conf, node)
    tcp_sock = _listen_tcp(bind, conf.rapi_port)
    unix_sock = _listen_unix(paths.master_socket)
    app = create_app(service, users_file=paths.rapi_users)
    # NOTE: the app's lifespan (SIGHUP reload of the users file) runs once, with the TCP server.
    tcp = _Server(
        uvicorn.Config(
            app,
            ssl_certfile=paths.rapi_cert,
            ssl_keyfile=paths.rapi_cert,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(HTTP_GRACE),
        )
    )
    local = _Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(HTTP_GRACE),
        )
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        await service.start()
        tasks = [
            asyncio.create_task(tcp.serve(sockets=[tcp_sock]), name="rapi"),
            asyncio.create_task(local.serve(sockets=[unix_sock]), name="local-api"),
        ]
        while not (tcp.started and local.started):
            if any(t.done() for t in tasks):
                raise CorralError("the API server failed to start", kind=ErrorKind.ENVIRONMENT)
            await asyncio.sleep(0.02)
        daemonize.claim_pid_file(pid_file, name=NAME)
        log.info(
            "%s %s serving cluster %s: RAPI https://%s:%d, local %s (pid %d)",
            NAME,
            corral.__version__,
            conf.cluster_name,
            bind,
            conf.rapi_port,
            paths.master_socket,
            os.getpid(),
        )
        servers = list(tasks)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, *servers], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        log.info("stopping")
    finally:
        tcp.should_exit = local.should_exit = True
        stop.set()  # ends the watcher
        await asyncio.gather(*tasks, return_exceptions=True)
        await service.stop(STOP_GRACE)
        await runner.aclose()
        store.close()
        if election_store is not None:
            election_store.close()
        for sock in (tcp_sock, unix_sock):
            sock.close()
        with contextlib.suppress(OSError):
            os.unlink(paths.master_socket)
        daemonize.release_pid_file(pid_file)


def _run(args: argparse.Namespace, paths: Paths, pid_file: str) -> int:
    daemonize.set_process_name(NAME)
    setup_logging(log_file=args.log_file, level=args.log_level, name="master")
    conf = load_cluster_conf(paths)
    running = daemonize.daemon_status(pid_file, name=NAME)
    if running is not None and running != os.getpid():
        raise CorralError(
            f"{NAME} is already running (pid {running})", kind=ErrorKind.EXISTS, pid=running
        )
    asyncio.run(_serve(paths, conf, pid_file, node_name_of(paths, conf, args.node_name)))
    log.info("%s stopped", NAME)
    return 0


def _detach(argv: Sequence[str], paths: Paths, pid_file: str, log_file: str) -> int:
    """Run ourselves again with ``--foreground`` in a new session; wait until it serves."""
    running = daemonize.daemon_status(pid_file, name=NAME)
    if running is not None:
        raise CorralError(
            f"{NAME} is already running (pid {running})", kind=ErrorKind.EXISTS, pid=running
        )
    # NOTE: the child runs with cwd "/", so it must find this very package even when it is
    # not installed (running from a source tree).
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(corral.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    child = [sys.executable, "-m", "corral.master.daemon", *argv, "--foreground"]
    child += ["--log-file", log_file, "--root", paths.root]  # the last occurrence wins
    pid = daemonize.start_daemon(child, pid_file, log_file, env=env, name=NAME)
    sys.stdout.write(f"{NAME} started (pid {pid})\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``corral-master``; returns the exit code (see the module docstring)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(raw)
    paths = Paths(os.path.abspath(args.root)) if args.root else Paths.from_env()
    pid_file = paths.pid_file(NAME)
    try:
        if args.foreground:
            return _run(args, paths, pid_file)
        load_cluster_conf(paths)
        log_file = args.log_file or os.path.join(paths.log_dir, f"{NAME}.log")
        return _detach(raw, paths, pid_file, log_file)
    except CorralError as exc:
        if args.foreground and args.log_file:
            log.error("cannot start: %s", exc)
        sys.stderr.write(f"{NAME}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

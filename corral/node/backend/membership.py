"""Cluster membership on the node: join mode, cluster files, leaving the cluster.

A host becomes a node in three steps (the protocol is described in
``corral/rpc/calls_nodes.py``):

1. :func:`prepare_join` (``corral-noded --join`` or ``corral node join-prepare``): creates the
   node's key, a self-signed bootstrap certificate and a one-time join token, stored
   root-only in ``paths.join_token`` and shown to the administrator.
2. :class:`JoinState` answers the master's ``node_join_hello`` (version, CSR, MAC) and
   ``node_join_finish`` (checks the MAC and the certificate, installs certificate, CA and
   cluster files, forgets the token). The daemon then switches to mutual TLS.
3. Later the master keeps the cluster files up to date (:func:`write_files`) and, when the
   node is removed, tells it to :func:`leave` (drop its cluster identity, new token).

Cluster files are named logically on the wire (:data:`~corral.rpc.calls_nodes.CLUSTER_FILE_NAMES`);
only those names are accepted, each mapped to a fixed path and mode here, so a master can
never make a node write anywhere else. :func:`cluster_files` tells cluster verify which
files must be identical on all nodes of a role.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable

import corral
from corral.common.errors import CorralError, ErrorKind, ParamError, TlsError
from corral.common.fileio import read_text, remove_file, write_atomic
from corral.common.paths import Paths
from corral.rpc import tls
from corral.rpc.calls_nodes import (
    CLUSTER_FILE_NAMES,
    TEST_VERSION_ENV,
    ClusterFile,
    JoinFinishRequest,
    JoinFinishResponse,
    JoinHelloRequest,
    JoinHelloResponse,
    WriteFilesRequest,
    WriteFilesResponse,
    join_mac,
    mac_ok,
)

log = logging.getLogger(__name__)

#: How many unanswered hellos a joining node remembers.
_MAX_PENDING = 16

#: Roles that get the master candidates' files.
CANDIDATE_ROLES = frozenset({"master", "master-candidate", "candidate"})


def _file_table(paths: Paths) -> dict[str, tuple[str, int]]:
    return {
        "ca_cert": (paths.ca_cert, 0o644),
        "crl": (paths.crl, 0o644),
        "cluster_conf": (paths.cluster_conf, 0o644),
        "ca_key": (paths.ca_key, 0o600),
        "rapi_cert": (paths.rapi_cert, 0o600),
        "rapi_users": (paths.rapi_users, 0o600),
    }


def file_path(paths: Paths, name: str) -> str:
    """The path of the cluster file with logical name ``name``.

    Raises:
        ParamError: not a cluster file name.
    """
    try:
        return _file_table(paths)[name][0]
    except KeyError:
        raise ParamError(
            {"files": f"{name!r} is not a cluster file (known: {', '.join(CLUSTER_FILE_NAMES)})"}
        ) from None


def role_file_names(role: str) -> list[str]:
    """Logical names of the cluster files a node of ``role`` holds.

    ``role`` is a node role (``master``, ``master-candidate``, ``regular``, ``drained``,
    ``offline``); master and candidates also hold the CA key and the RAPI files.
    """
    candidate = role in CANDIDATE_ROLES
    return [
        n for n, only_candidates in CLUSTER_FILE_NAMES.items() if candidate or not only_candidates
    ]


def cluster_files(paths: Paths, role: str) -> list[str]:
    """Paths of the files that must be identical on every node of ``role``.

    See :func:`role_file_names`; ``crl.pem`` may be absent everywhere (no node was ever
    removed).
    """
    return [file_path(paths, n) for n in role_file_names(role)]


def read_cluster_files(paths: Paths, role: str) -> list[ClusterFile]:
    """The master's copies of the files a node of ``role`` gets (those that exist).

    Raises:
        CorralError: a file exists but cannot be read (kind ENVIRONMENT).
    """
    out = []
    for name in role_file_names(role):
        path = file_path(paths, name)
        try:
            with open(path, "rb") as fh:
                out.append(ClusterFile.of(name, fh.read()))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CorralError(
                f"cannot read cluster file {path}: {exc.strerror}",
                kind=ErrorKind.ENVIRONMENT,
                path=path,
            ) from exc
    return out


def _install(paths: Paths, files: list[ClusterFile]) -> list[str]:
    table = _file_table(paths)
    decoded: list[tuple[str, bytes]] = []
    for f in files:
        if f.name not in table:
            file_path(paths, f.name)  # raises ParamError naming it
        try:
            decoded.append((f.name, f.content()))
        except ValueError as exc:
            raise ParamError({f"files.{f.name}": f"not valid base64: {exc}"}) from exc
    for name, content in decoded:
        path, mode = table[name]
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            write_atomic(path, content, mode=mode)
        except OSError as exc:
            raise CorralError(
                f"cannot write {path}: {exc.strerror or exc}", kind=ErrorKind.ENVIRONMENT
            ) from exc
    return [name for name, _ in decoded]


def write_files(paths: Paths, req: WriteFilesRequest) -> WriteFilesResponse:
    """Install and remove cluster files (whitelisted names only; writes are atomic).

    Raises:
        ParamError: an unknown file name or bad content (nothing was written).
        CorralError: a file cannot be written or removed (kind ENVIRONMENT).
    """
    for name in req.remove:
        file_path(paths, name)  # refuse unknown names before writing anything
    written = _install(paths, req.files)
    removed = []
    for name in req.remove:
        try:
            if remove_file(file_path(paths, name)):
                removed.append(name)
        except OSError as exc:
            raise CorralError(
                f"cannot remove {file_path(paths, name)}: {exc.strerror or exc}",
                kind=ErrorKind.ENVIRONMENT,
            ) from exc
    log.info("cluster files written: %s; removed: %s", written or "-", removed or "-")
    return WriteFilesResponse(written=written, removed=removed)


# --- join mode ---------------------------------------------------------------------------------


def is_member(paths: Paths) -> bool:
    """Whether this host holds a cluster identity (CA and node certificate)."""
    return os.path.exists(paths.node_cert) and os.path.exists(paths.ca_cert)


def read_token(paths: Paths) -> str | None:
    """The current join token, or None when the host is not in join mode."""
    try:
        text = read_text(paths.join_token)
    except OSError:
        return None
    return text.strip() if text else None


def prepare_join(paths: Paths, names: list[str], *, new_token: bool = False) -> str:
    """Put this host in join mode: key, bootstrap certificate, one-time token.

    An existing token is kept (so restarting the daemon does not invalidate the token the
    administrator has), unless ``new_token``.

    Args:
        paths: this host's files.
        names: names and addresses for the bootstrap certificate (informative only).
        new_token: replace an existing token.

    Returns:
        The join token.

    Raises:
        CorralError: this host is a cluster node already (kind WRONG_STATE), or a file cannot
            be written (kind ENVIRONMENT).
        TlsError: the existing key is invalid.
    """
    if is_member(paths):
        raise CorralError(
            f"this host is already a node of a cluster ({paths.node_cert} exists); "
            "remove it from its cluster first",
            kind=ErrorKind.WRONG_STATE,
        )
    try:
        os.makedirs(paths.data_dir, exist_ok=True)
        os.makedirs(paths.crypto_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CorralError(
            f"cannot create {paths.crypto_dir}: {exc.strerror}", kind=ErrorKind.ENVIRONMENT
        ) from exc
    if not os.path.exists(paths.join_cert) or not os.path.exists(paths.node_key):
        tls.create_join_identity(paths, names)
    token = None if new_token else read_token(paths)
    if not token:
        token = secrets.token_urlsafe(24)
        try:
            write_atomic(paths.join_token, token + "\n", mode=0o600)
        except OSError as exc:
            raise CorralError(
                f"cannot write {paths.join_token}: {exc.strerror}", kind=ErrorKind.ENVIRONMENT
            ) from exc
    return token


def software_version() -> str:
    """The version this node reports while joining.

    Tests may override it, see :data:`~corral.rpc.calls_nodes.TEST_VERSION_ENV`.
    """
    return os.environ.get(TEST_VERSION_ENV) or corral.__version__


class JoinState:
    """The join calls of a node in join mode (one per daemon; thread-safe).

    Args:
        paths: this host's files (key, bootstrap certificate, token).
        on_joined: called (from the worker thread) after a successful finish, with the
            node's name; the daemon switches to mutual TLS.
    """

    def __init__(self, paths: Paths, on_joined: Callable[[str], None] | None = None) -> None:
        self.paths = paths
        self._on_joined = on_joined
        self._lock = threading.Lock()
        # node_nonce -> (hello request, hello MAC)
        self._pending: OrderedDict[str, tuple[JoinHelloRequest, str]] = OrderedDict()
        self.joined_as: str | None = None

    def _token(self) -> str:
        token = read_token(self.paths)
        if not token or self.joined_as is not None:
            raise CorralError(
                "this node is not waiting to join a cluster (no join token)",
                kind=ErrorKind.WRONG_STATE,
            )
        return token

    def node_join_hello(self, req: JoinHelloRequest) -> JoinHelloResponse:
        """Answer the master's hello: version, bootstrap fingerprint, CSR, MAC.

        Nothing is checked here (the master proves the token in the finish call); the CSR
        is for the name the master asks for, and only the master can get it signed.

        Raises:
            CorralError: not in join mode (kind WRONG_STATE).
            TlsError: the key or bootstrap certificate is unreadable.
        """
        token = self._token()
        with open(self.paths.join_cert, "rb") as fh:
            fingerprint = tls.pem_fingerprint(fh.read())
        answer = JoinHelloResponse(
            software_version=software_version(),
            protocol_version=corral.PROTOCOL_VERSION,
            cert_fingerprint=fingerprint,
            csr_pem=tls.build_csr(self.paths, req.node_name).decode("ascii"),
            node_nonce=secrets.token_hex(16),
            mac="",
        )
        answer.mac = join_mac(token, "hello", req, answer)
        with self._lock:
            self._pending[answer.node_nonce] = (req, answer.mac)
            while len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)
        log.info("join hello from a master for node name %s", req.node_name)
        return answer

    def node_join_finish(self, req: JoinFinishRequest) -> JoinFinishResponse:
        """Check the master's MAC and certificate, install everything, leave join mode.

        Raises:
            CorralError: not in join mode, or an unknown/used nonce (kind WRONG_STATE).
            TlsError: a bad MAC (wrong token), or a certificate not for us (kind INVALID);
                nothing was installed.
            ParamError: an unknown cluster file name.
        """
        token = self._token()
        with self._lock:
            pending = self._pending.pop(req.node_nonce, None)
        if pending is None:
            raise CorralError(
                "join finish without a matching hello (restarted join, or replayed message)",
                kind=ErrorKind.WRONG_STATE,
            )
        hello, hello_mac = pending
        if not mac_ok(join_mac(token, "finish", hello_mac, req), req.mac):
            log.warning("join finish with a bad MAC refused (wrong join token?)")
            raise TlsError(
                "the join request is not authenticated by this node's join token "
                "(wrong token, or a man in the middle)",
                kind=ErrorKind.INVALID,
            )
        if req.node_name != hello.node_name:
            raise TlsError("node name differs between hello and finish", kind=ErrorKind.INVALID)
        cert_pem, ca_pem = req.cert_pem.encode(), req.ca_pem.encode()
        tls.check_node_cert(cert_pem, ca_pem, self.paths.node_key, req.node_name)
        with self._lock:
            if self.joined_as is not None:
                raise CorralError("this node has joined already", kind=ErrorKind.WRONG_STATE)
            _install(self.paths, [ClusterFile.of("ca_cert", ca_pem), *req.files])
            try:
                write_atomic(self.paths.node_cert, cert_pem, mode=0o644)
            except OSError as exc:
                raise CorralError(
                    f"cannot write {self.paths.node_cert}: {exc.strerror}",
                    kind=ErrorKind.ENVIRONMENT,
                ) from exc
            self.joined_as = req.node_name
            self._pending.clear()
            with contextlib.suppress(OSError):
                remove_file(self.paths.join_token)
                remove_file(self.paths.join_cert)
        log.info("joined the cluster as node %s", req.node_name)
        if self._on_joined is not None:
            self._on_joined(req.node_name)
        return JoinFinishResponse(node_name=req.node_name, mac=join_mac(token, "done", req.mac))


def leave(paths: Paths) -> str:
    """Drop this node's cluster identity and go back to join mode (with a new key).

    Removes the node certificate and key, the CA, the CRL and every cluster file, then
    prepares a new join token.

    Returns:
        The new join token.

    Raises:
        CorralError: a file cannot be removed or written (kind ENVIRONMENT).
    """
    table = _file_table(paths)
    try:
        for path in (paths.node_cert, paths.node_key, paths.join_cert):
            remove_file(path)
        for path, _mode in table.values():
            remove_file(path)
    except OSError as exc:
        raise CorralError(
            f"cannot remove the cluster files: {exc.strerror or exc}", kind=ErrorKind.ENVIRONMENT
        ) from exc
    token = prepare_join(paths, [], new_token=True)
    log.warning("left the cluster; back in join mode (new token in %s)", paths.join_token)
    return token

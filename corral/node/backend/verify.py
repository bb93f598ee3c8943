"""Node-side facts for ``cluster verify``: file checksums and the volumes in storage dirs.

Both are read-only and never fail as a whole for one bad file: a file that cannot be read is
reported in the response's ``errors`` (the master turns it into a finding), a missing file has
checksum None.

Paths cross the wire *root-relative* (checksums) or *logical* (volumes): a node daemon started
with ``--root R`` keeps its files under R, and several such daemons share one machine in tests,
so the master compares ``/var/lib/corral/ca.pem`` of each node, never ``R1/...`` with
``R2/...``. The storage directories the master names (the cluster's ``file_storage_dir``...)
map to host paths with ``Paths.host_path`` (identity for root ``/``); shared directories
(``shared_file_storage_dir``, the same path on every node) are used as they are.
"""

from __future__ import annotations

import hashlib
import logging
import os

from corral.common.paths import Paths
from corral.node.backend import membership
from corral.rpc.calls_cluster import (
    FileChecksumsRequest,
    FileChecksumsResponse,
    VolumeListRequest,
    VolumeListResponse,
)

log = logging.getLogger(__name__)

#: At most this many files are listed per call (a storage dir full of junk must not make the
#: answer unbounded); the response says ``truncated``.
MAX_VOLUMES = 100_000
_CHUNK = 1 << 20


def host_path(paths: Paths, logical: str, *, shared: bool = False) -> str:
    """The host path of a cluster-wide absolute path (``Paths.host_path``; shared: as is)."""
    return logical if shared else paths.host_path(logical)


def logical_path(paths: Paths, host: str) -> str:
    """The inverse of :func:`host_path` for a path below the root (root-relative, absolute)."""
    root = os.path.abspath(paths.root)
    if root == "/":
        return host
    rel = os.path.relpath(host, root)
    if rel.startswith(".."):
        return host
    return "/" + rel


def cluster_file_list(paths: Paths, role: str) -> list[str]:
    """Host paths of the files that must be identical on every node of this role.

    The membership module decides (``membership.cluster_files``): the CA certificate and CRL
    everywhere, plus the CA key, RAPI files and ``cluster.json`` on master candidates.
    """
    return list(membership.cluster_files(paths, role))


def sha256_file(path: str) -> str:
    """The hex sha256 of a file.

    Raises:
        OSError: it cannot be read (FileNotFoundError if missing).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksums(paths: Paths, req: FileChecksumsRequest) -> FileChecksumsResponse:
    """Checksum the cluster files of ``req.role`` and ``req.files`` (never raises for a file)."""
    targets = [*cluster_file_list(paths, req.role), *(host_path(paths, f) for f in req.files)]
    checksums: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    for host in targets:
        name = logical_path(paths, host)
        try:
            checksums[name] = sha256_file(host)
        except FileNotFoundError:
            checksums[name] = None
        except OSError as exc:
            checksums[name] = None
            errors[name] = exc.strerror or str(exc)
    return FileChecksumsResponse(checksums=checksums, errors=errors)


def volume_list(paths: Paths, req: VolumeListRequest) -> VolumeListResponse:
    """Regular files below each storage dir, as logical paths (never raises for a dir).

    Symbolic links are listed but not followed; directories deeper than ``req.max_depth``
    are not entered. Listing stops after :data:`MAX_VOLUMES` files in all.
    """
    volumes: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    count = 0
    truncated = False
    shared = set(req.shared_dirs)
    for logical_dir in [*req.dirs, *req.shared_dirs]:
        if not logical_dir or not os.path.isabs(logical_dir):
            errors[logical_dir] = "not an absolute path"
            continue
        base = os.path.normpath(host_path(paths, logical_dir, shared=logical_dir in shared))
        found: list[str] = []
        volumes[logical_dir] = found
        if not os.path.isdir(base):
            if os.path.lexists(base):
                errors[logical_dir] = "not a directory"
            continue
        failures: list[OSError] = []
        depth0 = base.rstrip(os.sep).count(os.sep)
        for dirpath, dirnames, filenames in os.walk(base, onerror=failures.append):
            if dirpath.count(os.sep) - depth0 >= req.max_depth:
                dirnames.clear()
            for fname in sorted(filenames):
                if count >= MAX_VOLUMES:
                    truncated = True
                    break
                host = os.path.join(dirpath, fname)
                rel = os.path.relpath(host, base)
                found.append(os.path.join(os.path.normpath(logical_dir), rel))
                count += 1
        if failures:
            errors[logical_dir] = "; ".join(
                sorted({f"{e.filename}: {e.strerror}" for e in failures})
            )
        found.sort()
    return VolumeListResponse(volumes=volumes, errors=errors, truncated=truncated)

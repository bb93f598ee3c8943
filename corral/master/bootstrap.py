"""Creating and destroying a cluster on its first (master) node.

:func:`init_cluster` lays out everything a single-host cluster needs under ``paths``:

* the cluster CA, this node's certificate (name + address) and the RAPI certificate;
* the store holding the :class:`Cluster` and this :class:`Node`: a SQLite file under the
  data dir by default, or an etcd cluster (``store="etcd://h:p[,h:p...]"``), which must be
  reachable and hold no Corral keys yet (nothing is created otherwise);
* the RAPI users file (Ganeti format) with a generated ``admin`` user with write access,
  whose password is stored as ``{HA1}md5("admin:Ganeti Remote API:<password>")``; the clear
  password goes to ``<data_dir>/rapi/admin-password`` (mode 0600, root only);
* ``cluster.json`` (written last: its presence means "initialised"), telling daemons and the
  CLI where the store is and how to reach the master::

      {"version": 1, "cluster_name": ..., "store": "sqlite:///var/lib/corral/config.db",
       "master_node": ..., "master_address": ..., "rapi_bind": ..., "rapi_port": 5080,
       "noded_port": 1811}

If any step fails, the files created so far are removed. Starting the daemons is the CLI's
job (``corral cluster init``).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from corral.common.errors import CorralError, ErrorKind, OpError, ParamError, StoreError
from corral.common.fileio import read_text, remove_file, write_atomic
from corral.common.paths import DEFAULT_NODED_PORT, DEFAULT_RAPI_PORT, Paths
from corral.common.revert import Reverter
from corral.master.config import (
    CLUSTER_KEY,
    INSTANCES_PREFIX,
    ROOT,
    ClusterConfig,
    encode,
    node_key,
)
from corral.master.ops.common import MAC_PREFIX_RE, check_beparams
from corral.objects.cluster import Cluster
from corral.objects.node import Node
from corral.objects.params.hv import HV_SCHEMAS
from corral.objects.params.schemas import NICPARAMS
from corral.objects.units import check_name
from corral.store.base import Compare, Delete, Put, Store
from corral.store.url import is_etcd, normalize_url, sqlite_url
from corral.store.url import open_store as open_store  # re-exported for daemon/cli

log = logging.getLogger(__name__)

CLUSTER_CONF_VERSION = 1
ADMIN_USER = "admin"
#: Realm of Ganeti's RAPI HA1 password hashes.
RAPI_REALM = "Ganeti Remote API"
SQLITE_SCHEME = "sqlite://"
#: Seconds an etcd that is to receive a new cluster gets to answer before init/move give up.
PROBE_TIMEOUT = 5.0


class ClusterConf(BaseModel):
    """The content of ``cluster.json``."""

    model_config = ConfigDict(extra="forbid")

    version: int = CLUSTER_CONF_VERSION
    cluster_name: str
    store: str
    master_node: str
    master_address: str
    rapi_bind: str
    rapi_port: int = DEFAULT_RAPI_PORT
    noded_port: int = DEFAULT_NODED_PORT


def admin_password_file(paths: Paths) -> str:
    """Where the generated admin password is kept (root only)."""
    return os.path.join(os.path.dirname(paths.rapi_users), "admin-password")


def rapi_ha1(user: str, password: str) -> str:
    """Ganeti's hashed RAPI password: ``{HA1}`` + md5 of ``user:Ganeti Remote API:password``."""
    digest = hashlib.md5(f"{user}:{RAPI_REALM}:{password}".encode(), usedforsecurity=False)
    return "{HA1}" + digest.hexdigest()


def load_cluster_conf(paths: Paths) -> ClusterConf:
    """Read ``cluster.json``.

    Raises:
        CorralError: no cluster was initialised here (kind WRONG_STATE), or the file is
            unreadable or invalid (kind ENVIRONMENT).
    """
    try:
        text = read_text(paths.cluster_conf)
    except OSError as exc:
        raise CorralError(
            f"cannot read {paths.cluster_conf}: {exc.strerror or exc}",
            kind=ErrorKind.ENVIRONMENT,
        ) from exc
    if text is None:
        raise CorralError(
            f"no cluster is initialised here ({paths.cluster_conf} is missing); "
            "run 'corral cluster init'",
            kind=ErrorKind.WRONG_STATE,
        )
    try:
        return ClusterConf.model_validate_json(text)
    except ValidationError as exc:
        raise CorralError(
            f"{paths.cluster_conf} is invalid: {exc.errors()[0].get('msg')}",
            kind=ErrorKind.ENVIRONMENT,
        ) from exc


def store_url(path: str) -> str:
    """The store URL of a SQLite file (see :mod:`corral.store.url`)."""
    return sqlite_url(path)


def cluster_store_url(paths: Paths) -> str | None:
    """The URL of this host's cluster store, or None if there is no cluster here.

    ``cluster.json``'s URL, else the SQLite file's if it exists.

    Raises:
        CorralError: ``cluster.json`` exists but is unreadable or invalid (kind ENVIRONMENT).
    """
    if os.path.exists(paths.cluster_conf):
        return load_cluster_conf(paths).store
    if os.path.exists(paths.store_db):
        return store_url(paths.store_db)
    return None


def describe_corral_keys(store: Store) -> str | None:
    """What Corral state ``store`` holds already, in words, or None.

    None means no key under ``/corral/``; otherwise e.g. "cluster 'prod' (12 keys under ...)".

    Raises:
        StoreError: the store cannot be read (etcd unreachable: kind ENVIRONMENT).
    """
    kvs = store.range(ROOT)
    if not kvs:
        return None
    name = None
    for kv in kvs:
        if kv.key == CLUSTER_KEY:
            try:
                name = Cluster.model_validate_json(kv.value).name
            except ValidationError:
                name = "?"
    what = f"cluster {name!r}" if name else "Corral keys"
    return f"{what} ({len(kvs)} keys under {ROOT})"


def check_etcd_target(url: str, *, action: str) -> None:
    """Make sure the etcd at ``url`` answers and holds no Corral state.

    Raises:
        StoreError: etcd cannot be reached (kind ENVIRONMENT) or already holds Corral keys
            (kind EXISTS, naming the cluster); the message says that nothing was changed.
    """
    store = open_store(url, timeout=PROBE_TIMEOUT, retry_for=PROBE_TIMEOUT)
    try:
        try:
            found = describe_corral_keys(store)
        except StoreError as exc:
            raise StoreError(
                f"{action}: cannot use etcd at {url}: {exc}; nothing was changed",
                kind=exc.kind,
                url=url,
            ) from exc
    finally:
        store.close()
    if found:
        raise StoreError(
            f"{action}: etcd at {url} already holds {found}; use another etcd (or remove "
            f"those keys, e.g. 'etcdctl del --prefix {ROOT}', if that cluster is gone); "
            "nothing was changed",
            kind=ErrorKind.EXISTS,
            url=url,
        )


def _check_inputs(
    *,
    cluster_name: str,
    node_name: str,
    node_address: str,
    enabled_hypervisors: Sequence[str],
    file_storage_dir: str,
    ports: Mapping[str, int],
    rapi_bind: str,
    mac_prefix: str,
) -> None:
    problems: dict[str, str] = {}
    for field, value in (("cluster_name", cluster_name), ("node_name", node_name)):
        why = check_name(value, field.replace("_", " "))
        if why:
            problems[field] = why
    for field, value in (("node_address", node_address), ("rapi_bind", rapi_bind)):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            problems[field] = f"not an IP address: {value!r}"
    if not enabled_hypervisors:
        problems["enabled_hypervisors"] = "at least one hypervisor is needed"
    for hv in enabled_hypervisors:
        if hv not in HV_SCHEMAS:
            problems["enabled_hypervisors"] = (
                f"unknown hypervisor {hv!r} (known: {', '.join(HV_SCHEMAS)})"
            )
    if not os.path.isabs(file_storage_dir) or "\0" in file_storage_dir:
        problems["file_storage_dir"] = f"must be an absolute path, got {file_storage_dir!r}"
    for field, port in ports.items():
        if not 0 < port < 65536:
            problems[field] = f"must be a TCP port (1-65535), got {port}"
    if not MAC_PREFIX_RE.match(mac_prefix):
        problems["mac_prefix"] = f"must be three hex bytes like aa:00:00, got {mac_prefix!r}"
    if problems:
        raise ParamError(problems, context="cluster init")


def init_cluster(
    paths: Paths,
    *,
    cluster_name: str,
    node_name: str,
    node_address: str,
    enabled_hypervisors: Sequence[str] = ("kvm",),
    file_storage_dir: str | None = None,
    rapi_port: int = DEFAULT_RAPI_PORT,
    rapi_bind: str | None = None,
    noded_port: int = DEFAULT_NODED_PORT,
    hvparams: Mapping[str, Mapping[str, Any]] | None = None,
    beparams: Mapping[str, Any] | None = None,
    nicparams: Mapping[str, Any] | None = None,
    enabled_disk_templates: Sequence[str] = ("file", "diskless"),
    mac_prefix: str = "aa:00:00",
    admin_password: str | None = None,
    shared_file_storage_dir: str = "",
    store: str | None = None,
) -> Cluster:
    """Initialise a cluster whose master is this host (see the module docstring).

    Args:
        paths: this host's file layout.
        cluster_name: the cluster's name.
        node_name: this node's name (in its certificate).
        node_address: this node's primary IP (the node daemon listens there).
        enabled_hypervisors: in order; the first is the default.
        file_storage_dir: where ``file`` disks go (default ``paths.file_storage_dir``).
        rapi_port: the RAPI's TCP port.
        rapi_bind: the RAPI's address (default: ``node_address``).
        noded_port: the node daemon's TCP port.
        hvparams: cluster-level hypervisor parameters, per hypervisor.
        beparams: cluster-level backend parameters (``memory`` accepted).
        nicparams: cluster-level NIC parameters.
        enabled_disk_templates: disk templates instances may use.
        mac_prefix: first three bytes of generated MAC addresses.
        admin_password: the RAPI admin password (default: generated).
        shared_file_storage_dir: where ``sharedfile`` disks go, the same path on every node
            ("" = none; checked like ``file_storage_dir``).
        store: the store URL: ``etcd://host:port[,host:port...]`` (the members of one etcd
            cluster) or ``sqlite:///path``; default the SQLite file ``paths.store_db``.

    Returns:
        The new cluster object.

    Raises:
        ParamError: a bad argument, naming it (nothing was created).
        StoreError: the etcd store cannot be reached (kind ENVIRONMENT) or already holds a
            cluster (kind EXISTS, naming it); nothing was created.
        CorralError: a cluster exists here already (kind EXISTS), or a file could not be
            created (everything created so far is removed, keys written to etcd included).
    """
    fsd = os.path.normpath(file_storage_dir or paths.file_storage_dir)
    try:
        url = normalize_url(store) if store else store_url(paths.store_db)
    except StoreError as exc:
        raise ParamError({"store": str(exc)}, context="cluster init") from exc
    bind = rapi_bind or node_address
    _check_inputs(
        cluster_name=cluster_name,
        node_name=node_name,
        node_address=node_address,
        enabled_hypervisors=enabled_hypervisors,
        file_storage_dir=fsd,
        ports={"rapi_port": rapi_port, "noded_port": noded_port},
        rapi_bind=bind,
        mac_prefix=mac_prefix,
    )
    if shared_file_storage_dir and (
        not os.path.isabs(shared_file_storage_dir) or "\0" in shared_file_storage_dir
    ):
        raise ParamError(
            {"shared_file_storage_dir": f"must be absolute, got {shared_file_storage_dir!r}"},
            context="cluster init",
        )
    hv_values: dict[str, dict[str, Any]] = {}
    for hv, values in (hvparams or {}).items():
        if hv not in HV_SCHEMAS:
            raise ParamError({f"hvparams.{hv}": "unknown hypervisor"}, context="cluster init")
        hv_values[hv] = {
            k: v for k, v in HV_SCHEMAS[hv].check_syntax(values).items() if v is not None
        }
    if "kvm" in enabled_hypervisors and os.path.normpath(paths.root) != "/":
        # NOTE: the schema defaults name /var/lib/corral/kernels; a cluster living under
        # another root (tests, several nodes on one host) keeps its kernels under that root.
        kvm = hv_values.setdefault("kvm", {})
        kvm.setdefault("kernel_path", os.path.join(paths.kernels_dir, "vmlinuz-kvmU"))
        kvm.setdefault("initrd_path", os.path.join(paths.kernels_dir, "initrd-kvmU"))
    be_values = {k: v for k, v in check_beparams(beparams or {}).items() if v is not None}
    nic_values = {k: v for k, v in NICPARAMS.check_syntax(nicparams or {}).items() if v is not None}
    if os.path.exists(paths.cluster_conf) or os.path.exists(paths.store_db):
        raise CorralError(
            f"a cluster is already initialised in {paths.data_dir}; "
            "destroy it first ('corral cluster destroy')",
            kind=ErrorKind.EXISTS,
        )
    if is_etcd(url):
        check_etcd_target(url, action="cluster init")
    cluster = Cluster(
        name=cluster_name,
        master_node=node_name,
        enabled_hypervisors=list(enabled_hypervisors),
        hvparams=hv_values,
        beparams=be_values,
        nicparams=nic_values,
        enabled_disk_templates=list(enabled_disk_templates),
        file_storage_dir=fsd,
        shared_file_storage_dir=(
            os.path.normpath(shared_file_storage_dir) if shared_file_storage_dir else ""
        ),
        mac_prefix=mac_prefix,
        rapi_port=rapi_port,
        noded_port=noded_port,
    )
    node = Node(name=node_name, primary_ip=node_address, rpc_port=noded_port)
    from corral.rpc import tls

    try:
        with Reverter() as rv:
            paths.ensure()
            os.makedirs(fsd, mode=0o755, exist_ok=True)
            tls.create_ca(paths, cluster_name)
            # NOTE: registered only now, so a CA that existed before is never removed.
            rv.add(lambda: _remove_crypto(paths), "certificates")
            tls.issue_node_cert(paths, node_name, [node_address])
            rapi_names = [node_address] if bind in ("0.0.0.0", "::") else [bind, node_address]
            tls.create_rapi_cert(paths, list(dict.fromkeys(rapi_names)))
            if not is_etcd(url):
                rv.add(lambda: _remove_store(paths), "store")
            _write_first_keys(rv, url, cluster, node)
            rv.add(lambda: _remove_rapi_files(paths), "RAPI users")
            password = admin_password or secrets.token_urlsafe(18)
            write_atomic(admin_password_file(paths), password + "\n", mode=0o600)
            write_atomic(
                paths.rapi_users,
                "# Corral RAPI users (Ganeti format): user password [read|write]\n"
                f"{ADMIN_USER} {rapi_ha1(ADMIN_USER, password)} write\n",
                mode=0o600,
            )
            conf = ClusterConf(
                cluster_name=cluster_name,
                store=url,
                master_node=node_name,
                master_address=node_address,
                rapi_bind=bind,
                rapi_port=rapi_port,
                noded_port=noded_port,
            )
            write_atomic(paths.cluster_conf, conf.model_dump_json(indent=2) + "\n", mode=0o644)
            rv.success()
    except OSError as exc:
        raise CorralError(
            f"cannot initialise the cluster: {exc.strerror or exc} "
            f"({getattr(exc, 'filename', '')})",
            kind=ErrorKind.ENVIRONMENT,
        ) from exc
    log.info("cluster %s initialised with master node %s, store %s", cluster_name, node_name, url)
    return cluster


def _write_first_keys(rv: Reverter, url: str, cluster: Cluster, node: Node) -> None:
    """Write the cluster and its first node into the store (registering their removal).

    Raises:
        StoreError: the store cannot be written, or already holds a cluster (kind EXISTS).
    """
    keys = (CLUSTER_KEY, node_key(node.name))
    store = open_store(url)
    try:
        result = store.txn(
            [Compare.absent(k) for k in keys],
            [Put(CLUSTER_KEY, encode(cluster)), Put(keys[1], encode(node))],
        )
    finally:
        store.close()
    if not result.succeeded:
        raise StoreError("the store already holds a cluster", kind=ErrorKind.EXISTS, url=url)
    if is_etcd(url):

        def undo() -> None:
            undo_store = open_store(url)
            try:
                undo_store.txn(
                    [Compare(k, "mod_revision", "=", result.revision) for k in keys],
                    [Delete(k) for k in keys],
                )
            finally:
                undo_store.close()

        rv.add(undo, f"keys in {url}")


def destroy_cluster(paths: Paths, *, force: bool = False) -> None:
    """Remove the cluster's state from this host: store, cluster.json, certificates, RAPI users.

    Instance disks and logs are left alone. The daemons must be stopped first. For a cluster
    on etcd, every key under ``/corral/`` is deleted from etcd first (an unreachable etcd
    stops the destruction before any file is removed, unless ``force``: then the keys stay).

    Args:
        paths: this host's file layout.
        force: destroy even if instances remain (their disks stay on the nodes).

    Raises:
        OpError: instances remain and ``force`` is not set, or a daemon still runs
            (kind WRONG_STATE).
        StoreError: the etcd store cannot be reached (without ``force``); nothing removed.
        CorralError: a file cannot be removed (kind ENVIRONMENT).
    """
    from corral.common import daemonize

    for daemon in ("corral-master", "corral-noded"):
        pid = daemonize.daemon_status(paths.pid_file(daemon))
        if pid is not None:
            raise OpError(
                f"{daemon} is still running (pid {pid}); stop the daemons first",
                kind=ErrorKind.WRONG_STATE,
            )
    url = cluster_store_url(paths)
    if url is not None and not force:
        store = open_store(url)
        try:
            names = [kv.key[len(INSTANCES_PREFIX) :] for kv in store.range(INSTANCES_PREFIX)]
            ClusterConfig(store)  # the store opened fine
        finally:
            store.close()
        if names:
            raise OpError(
                f"there are still {len(names)} instance(s) in the cluster "
                f"({', '.join(names[:5])}{'...' if len(names) > 5 else ''}); remove them first",
                kind=ErrorKind.WRONG_STATE,
            )
    if url is not None and is_etcd(url):
        store = open_store(url)
        try:
            store.txn([], [Delete(ROOT, prefix=True)])
        except StoreError as exc:
            if not force:
                raise
            log.warning("cluster keys left in etcd at %s: %s", url, exc)
        finally:
            store.close()
    try:
        remove_file(paths.cluster_conf)
        _remove_store(paths)
        _remove_rapi_files(paths)
        _remove_crypto(paths)
    except OSError as exc:
        raise CorralError(
            f"cannot remove cluster files: {exc.strerror or exc}", kind=ErrorKind.ENVIRONMENT
        ) from exc
    log.info("cluster destroyed in %s", paths.data_dir)


def _remove_store(paths: Paths) -> None:
    for suffix in ("", "-wal", "-shm"):
        remove_file(paths.store_db + suffix)


def _remove_rapi_files(paths: Paths) -> None:
    remove_file(paths.rapi_users)
    remove_file(admin_password_file(paths))


def _remove_crypto(paths: Paths) -> None:
    for path in (paths.rapi_cert, paths.node_cert, paths.node_key, paths.ca_cert, paths.ca_key):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

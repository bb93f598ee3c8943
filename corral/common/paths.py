"""Where Corral keeps its files on a host.

Every path derives from one root directory (``/`` on a real host). Tests and several node
daemons on one machine each use their own root, so nothing is global: code receives a
:class:`Paths` and never hard-codes a location. The environment variable ``CORRAL_ROOT``
selects the root for the command-line tools and daemons.
"""

from __future__ import annotations

import dataclasses
import os

#: Default TCP port of the node daemon (Ganeti's noded uses 1811 too).
DEFAULT_NODED_PORT = 1811
#: Default TCP port of the RAPI (Ganeti: 5080).
DEFAULT_RAPI_PORT = 5080

#: Directories searched for Ganeti-style OS definitions, relative to the root, in order.
#: The built-in OSes shipped with Corral come after these (see ``node/backend/osdef.py``).
OS_SEARCH_PATH = (
    "srv/corral/os",
    "usr/local/lib/ganeti/os",
    "usr/share/ganeti/os",
    "srv/ganeti/os",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Paths:
    """The file layout under one root directory."""

    root: str = "/"

    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @classmethod
    def from_env(cls) -> Paths:
        """Paths under ``$CORRAL_ROOT`` (default ``/``)."""
        return cls(os.environ.get("CORRAL_ROOT", "/"))

    # --- state (master and node) -------------------------------------------------------
    @property
    def data_dir(self) -> str:
        """Persistent state: store database, certificates, RAPI users."""
        return self._p("var/lib/corral")

    @property
    def store_db(self) -> str:
        """The SQLite store of a single-host cluster."""
        return self._p("var/lib/corral/config.db")

    @property
    def cluster_conf(self) -> str:
        """Small JSON file telling daemons and CLI where the store and master are."""
        return self._p("var/lib/corral/cluster.json")

    @property
    def crypto_dir(self) -> str:
        """Cluster CA and this host's certificates."""
        return self._p("var/lib/corral/crypto")

    @property
    def ca_cert(self) -> str:
        """The cluster CA certificate (public)."""
        return self._p("var/lib/corral/crypto/ca.pem")

    @property
    def ca_key(self) -> str:
        """The cluster CA key (master candidates only)."""
        return self._p("var/lib/corral/crypto/ca.key")

    @property
    def node_cert(self) -> str:
        """This host's certificate (signed by the CA), used as server and client cert."""
        return self._p("var/lib/corral/crypto/node.pem")

    @property
    def node_key(self) -> str:
        """This host's private key."""
        return self._p("var/lib/corral/crypto/node.key")

    @property
    def crl(self) -> str:
        """The cluster CA's certificate revocation list (removed nodes' certificates)."""
        return self._p("var/lib/corral/crypto/crl.pem")

    @property
    def join_cert(self) -> str:
        """A joining node's self-signed bootstrap certificate (key: :attr:`node_key`)."""
        return self._p("var/lib/corral/crypto/join.pem")

    @property
    def join_token(self) -> str:
        """A joining node's one-time join token (root only; removed once joined)."""
        return self._p("var/lib/corral/join-token")

    @property
    def rapi_cert(self) -> str:
        """The RAPI server certificate (cert + key in one PEM, as Ganeti's rapi.pem)."""
        return self._p("var/lib/corral/crypto/rapi.pem")

    @property
    def rapi_users(self) -> str:
        """The RAPI users file (Ganeti format)."""
        return self._p("var/lib/corral/rapi/users")

    @property
    def file_storage_dir(self) -> str:
        """Default directory for ``file`` disks."""
        return self._p("srv/corral/disks")

    def host_path(self, path: str) -> str:
        """Where the cluster-wide absolute ``path`` lies on this host: under the root.

        ``R + path`` for root ``R``; the identity for root ``/``. Node-local cluster paths
        (``file_storage_dir``) go through it, so several node daemons on one machine, each in
        its own root, keep their "local" files apart. A path already inside the root is
        returned unchanged (clusters set up with a root-joined directory, as tests did before).
        Paths that are meant to be the same on every node (``shared_file_storage_dir``) must
        not go through it.
        """
        root = os.path.normpath(self.root)
        if root == "/" or not os.path.isabs(path):
            return path
        norm = os.path.normpath(path)
        if norm == root or norm.startswith(root + "/"):
            return path
        return root + norm

    @property
    def kernels_dir(self) -> str:
        """Kernels and initrds for kernel-boot instances (the busybox OS installs here)."""
        return self._p("var/lib/corral/kernels")

    @property
    def cache_dir(self) -> str:
        """Downloaded packages and other re-creatable files."""
        return self._p("var/cache/corral")

    # --- runtime ------------------------------------------------------------------------
    @property
    def run_dir(self) -> str:
        """Sockets, pid files and per-instance runtime directories."""
        return self._p("run/corral")

    @property
    def master_socket(self) -> str:
        """The master API's local UNIX socket (root only), used by the CLI."""
        return self._p("run/corral/master.sock")

    def pid_file(self, daemon: str) -> str:
        """The pid file of a daemon (``corral-master``, ``corral-noded``)."""
        return self._p("run/corral", f"{daemon}.pid")

    def hv_run_dir(self, hypervisor: str) -> str:
        """A hypervisor driver's private run directory."""
        return self._p("run/corral/hv", hypervisor)

    @property
    def sysrq_trigger(self) -> str:
        """The kernel's SysRq trigger (``b`` reboots at once): node powercycle writes here.

        Under a test root this is a plain file, so a test node's powercycle never reaches the
        real host's kernel.
        """
        return self._p("proc/sysrq-trigger")

    # --- logs, hooks, OS definitions ------------------------------------------------------
    @property
    def log_dir(self) -> str:
        """Daemon logs, OS-script logs and console logs."""
        return self._p("var/log/corral")

    @property
    def hooks_dir(self) -> str:
        """Ganeti-compatible hooks: ``<hooks_dir>/<hpath>-{pre,post}.d/``."""
        return self._p("etc/corral/hooks")

    @property
    def ganeti_hooks_dir(self) -> str:
        """Ganeti's hooks directory, run after :attr:`hooks_dir` for compatibility."""
        return self._p("etc/ganeti/hooks")

    @property
    def os_search_path(self) -> tuple[str, ...]:
        """Directories searched for OS definitions, in order."""
        return tuple(self._p(p) for p in OS_SEARCH_PATH)

    def ensure(self) -> None:
        """Create the directories Corral writes to (mode 0700 for secrets).

        Raises:
            OSError: a directory cannot be created.
        """
        for d in (self.data_dir, self.run_dir, self.log_dir, self.cache_dir, self.kernels_dir):
            os.makedirs(d, exist_ok=True)
        os.makedirs(self.crypto_dir, mode=0o700, exist_ok=True)
        os.makedirs(os.path.dirname(self.rapi_users), mode=0o750, exist_ok=True)

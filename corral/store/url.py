"""Store URLs: ``sqlite:///<absolute path>`` and ``etcd://host:port[,host:port...]``.

The one place that turns a URL from ``cluster.json`` (or ``cluster init --store``) into a
:class:`~corral.store.base.Store`.
"""

from __future__ import annotations

import os

from corral.common.errors import ErrorKind, StoreError
from corral.store.base import Store

SQLITE_SCHEME = "sqlite://"
ETCD_SCHEME = "etcd://"


def sqlite_url(path: str) -> str:
    """The store URL of a SQLite file (made absolute)."""
    return f"{SQLITE_SCHEME}/{os.path.abspath(path).lstrip('/')}"


def open_store(url: str) -> Store:
    """Open the store named by ``url``.

    ``sqlite:///<absolute path>`` opens (creating) a SQLite file; ``etcd://h:p[,h:p...]``
    returns an :class:`~corral.store.etcd.EtcdStore` on those endpoints (connected lazily, so
    an unreachable etcd shows at the first call).

    Raises:
        StoreError: an unsupported or malformed URL (kind INVALID); the SQLite file cannot
            be opened.
    """
    if url.startswith(SQLITE_SCHEME + "/"):
        from corral.store.sqlite import SqliteStore

        return SqliteStore(url[len(SQLITE_SCHEME) :])
    if url.startswith(ETCD_SCHEME):
        from corral.store.etcd import EtcdStore, parse_endpoints

        return EtcdStore(parse_endpoints(url[len(ETCD_SCHEME) :]))
    raise StoreError(
        f"unsupported store URL {url!r} (expected sqlite:///<path> or etcd://host:port[,...])",
        kind=ErrorKind.INVALID,
        url=url,
    )

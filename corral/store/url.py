"""Store URLs: ``sqlite:///<absolute path>`` and ``etcd://host:port[,host:port...]``.

The one place that turns a URL from ``cluster.json`` (or ``cluster init --store``) into a
:class:`~corral.store.base.Store`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from corral.common.errors import ErrorKind, StoreError
from corral.store.base import Store

SQLITE_SCHEME = "sqlite://"
ETCD_SCHEME = "etcd://"


def sqlite_url(path: str) -> str:
    """The store URL of a SQLite file (made absolute)."""
    return f"{SQLITE_SCHEME}/{os.path.abspath(path).lstrip('/')}"


def etcd_url(endpoints: Sequence[tuple[str, int]]) -> str:
    """The canonical ``etcd://host:port[,host:port...]`` URL of etcd endpoints."""
    return ETCD_SCHEME + ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in endpoints)


def normalize_url(url: str) -> str:
    """Check a store URL and return its canonical form (what ``cluster.json`` records).

    ``sqlite:///<path>`` keeps its absolute path; ``etcd://`` URLs lose spaces and trailing
    slashes (``etcd://a:1, b:2/`` becomes ``etcd://a:1,b:2``). Key prefixes are not supported:
    Corral's keys always live under ``/corral/``.

    Raises:
        StoreError: an unsupported or malformed URL (kind INVALID).
    """
    url = url.strip()
    if url.startswith(SQLITE_SCHEME + "/"):
        return url
    if url.startswith(ETCD_SCHEME):
        from corral.store.etcd import parse_endpoints

        return etcd_url(parse_endpoints(url[len(ETCD_SCHEME) :]))
    raise StoreError(
        f"unsupported store URL {url!r} (expected sqlite:///<path> or etcd://host:port[,...])",
        kind=ErrorKind.INVALID,
        url=url,
    )


def is_etcd(url: str) -> bool:
    """Whether ``url`` names an etcd store."""
    return url.strip().startswith(ETCD_SCHEME)


def open_store(url: str, *, timeout: float | None = None, retry_for: float | None = None) -> Store:
    """Open the store named by ``url``.

    ``sqlite:///<absolute path>`` opens (creating) a SQLite file; ``etcd://h:p[,h:p...]``
    returns an :class:`~corral.store.etcd.EtcdStore` on those endpoints (connected lazily, so
    an unreachable etcd shows at the first call). ``timeout`` (seconds per request) and
    ``retry_for`` (seconds of failover retries) apply to etcd only (see
    :class:`~corral.store.etcd.EtcdStore`).

    Raises:
        StoreError: an unsupported or malformed URL (kind INVALID); the SQLite file cannot
            be opened.
    """
    if url.startswith(SQLITE_SCHEME + "/"):
        from corral.store.sqlite import SqliteStore

        return SqliteStore(url[len(SQLITE_SCHEME) :])
    if url.startswith(ETCD_SCHEME):
        from corral.store.etcd import EtcdStore, parse_endpoints

        endpoints = parse_endpoints(url[len(ETCD_SCHEME) :])
        if timeout is None:
            return EtcdStore(endpoints, retry_for=retry_for)
        return EtcdStore(endpoints, timeout=timeout, retry_for=retry_for)
    raise StoreError(
        f"unsupported store URL {url!r} (expected sqlite:///<path> or etcd://host:port[,...])",
        kind=ErrorKind.INVALID,
        url=url,
    )

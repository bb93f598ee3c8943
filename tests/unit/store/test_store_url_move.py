"""Store URLs (several etcd endpoints) and the pure parts of the SQLite -> etcd move."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, StoreError
from corral.master.storemove import batches, copied_keys
from corral.store.base import KeyValue
from corral.store.etcd import EtcdStore
from corral.store.sqlite import SqliteStore
from corral.store.url import etcd_url, is_etcd, normalize_url, open_store


def test_normalize_and_open_several_endpoints() -> None:
    url = normalize_url(" etcd://10.0.0.1:2379, 10.0.0.2:2380,[::1]:2381/ ")
    assert url == "etcd://10.0.0.1:2379,10.0.0.2:2380,[::1]:2381"
    assert is_etcd(url) and not is_etcd("sqlite:///x.db")
    store = open_store(url, timeout=3, retry_for=1)
    assert isinstance(store, EtcdStore)
    assert store.endpoints == [("10.0.0.1", 2379), ("10.0.0.2", 2380), ("::1", 2381)]
    assert etcd_url(store.endpoints) == url
    store.close()


@pytest.mark.parametrize(
    "bad", ["etcd://", "etcd://host", "etcd://h:0", "etcd://h:2379/prefix", "http://h:1", "x"]
)
def test_bad_urls_are_invalid(bad: str) -> None:
    with pytest.raises(StoreError) as err:
        normalize_url(bad)
    assert err.value.kind is ErrorKind.INVALID


def kv(key: str, size: int) -> KeyValue:
    return KeyValue(key, b"v" * size, 1, 1, 1)


def test_batches_respect_ops_and_bytes() -> None:
    kvs = [kv(f"/corral/k{i:03d}", 10) for i in range(300)]
    groups = batches(kvs)
    assert [len(g) for g in groups] == [128, 128, 44]
    assert [x for g in groups for x in g] == kvs
    big = [kv("/a", 600), kv("/b", 600), kv("/c", 5000), kv("/d", 1)]
    groups = batches(big, max_ops=10, max_bytes=1000)
    assert [[x.key for x in g] for g in groups] == [["/a"], ["/b"], ["/c"], ["/d"]]
    assert batches([]) == []


def test_leader_keys_are_not_copied(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "c.db"))
    for key in (
        "/corral/cluster",
        "/corral/leader",
        "/corral/leader-handoff",
        "/corral/serial/job",
    ):
        store.put(key, b"x")
    assert [k.key for k in copied_keys(store)] == ["/corral/cluster", "/corral/serial/job"]
    store.close()

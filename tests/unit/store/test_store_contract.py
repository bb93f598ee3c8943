"""The store contract, run against every implementation (SQLite file, real etcd process).

Revisions, transactions with compares, prefix ranges, watch, compaction and error mapping.
"""

from __future__ import annotations

import threading
import time

import pytest

from corral.common.errors import ErrorKind, StoreError
from corral.store.base import Compare, Delete, EventType, Put, Store
from corral.store.etcd import EtcdStore
from corral.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "etcd"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s: Store = SqliteStore(str(tmp_path / "config.db"))
    else:
        s = EtcdStore([request.getfixturevalue("etcd_endpoint")])
        s.txn([], [Delete("", prefix=True)])  # each test starts from an empty keyspace
    yield s
    s.close()


def compact_all_but(store: Store, keep: int) -> None:
    """Drop the history except the last ``keep`` revisions (each store's own compaction)."""
    if isinstance(store, SqliteStore):
        store.compact(keep=keep)
    else:
        assert isinstance(store, EtcdStore)
        store.compact(store.revision - keep)


def test_revisions_and_versions(store):
    r1 = store.put("/a", b"1")
    r2 = store.put("/a", b"2")
    assert r2 == r1 + 1
    kv = store.get("/a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", r1, r2, 2)
    assert store.revision == r2
    assert store.get("/missing") is None


def test_range_is_prefix_only_and_sorted(store):
    for key in ("/i/b", "/i/a", "/ix", "/j/a"):
        store.put(key, key.encode())
    assert [kv.key for kv in store.range("/i/")] == ["/i/a", "/i/b"]
    assert [kv.value for kv in store.range("/i/")] == [b"/i/a", b"/i/b"]


def test_txn_compare_guards_concurrent_update(store):
    store.put("/k", b"v1")
    seen = store.get("/k")
    assert seen is not None
    store.put("/k", b"other-writer")
    res = store.txn([Compare.unchanged(seen)], [Put("/k", b"mine")])
    assert not res.succeeded
    assert store.get("/k").value == b"other-writer"


def test_txn_is_atomic_multi_key(store):
    store.put("/old", b"x")
    res = store.txn([Compare.absent("/new")], [Delete("/old"), Put("/new", b"x")])
    assert res.succeeded
    assert res.revision == store.revision
    assert store.get("/old") is None
    assert store.get("/new").value == b"x"
    # failure branch runs when the compare fails, and nothing of success is applied
    res = store.txn([Compare.absent("/new")], [Put("/other", b"y")], [Put("/flag", b"f")])
    assert not res.succeeded
    assert store.get("/other") is None
    assert store.get("/flag").value == b"f"


def test_create_refuses_existing(store):
    assert store.create("/c", b"1")
    assert not store.create("/c", b"2")
    assert store.get("/c").value == b"1"


def test_delete_prefix(store):
    for key in ("/p/1", "/p/2", "/q"):
        store.put(key, b"")
    store.txn([], [Delete("/p/", prefix=True)])
    assert [kv.key for kv in store.range("/")] == ["/q"]


@pytest.mark.parametrize(
    ("compare", "expected"),
    [
        (Compare("/n", "version", ">", 0), True),
        (Compare("/n", "version", "=", 1), True),
        (Compare("/n", "version", "!=", 1), False),
        (Compare("/n", "version", "<", 1), False),
        (Compare("/n", "value", "=", b"abc"), True),
        (Compare("/n", "value", "!=", b"abc"), False),
        (Compare("/n", "value", "<", b"abd"), True),
        (Compare("/n", "value", ">", b"abd"), False),
        (Compare("/n", "create_revision", ">", 0), True),
        (Compare("/missing", "version", "=", 0), True),
        (Compare("/missing", "mod_revision", "=", 0), True),
        (Compare("/missing", "value", "=", b""), False),  # a missing value is not b""
        (Compare("/missing", "value", "!=", b"x"), False),
    ],
)
def test_compare_ops_in_txn(store, compare, expected):
    store.put("/n", b"abc")
    kv = store.get(compare.key)
    assert compare.holds(kv) is expected  # the local evaluation agrees with the store's
    assert store.txn([compare], [Put("/hit", b"1")]).succeeded is expected
    assert (store.get("/hit") is not None) is expected


def test_mod_revision_compare_against_read(store):
    store.put("/n", b"abc")
    kv = store.get("/n")
    assert store.txn([Compare("/n", "mod_revision", "<", kv.mod_revision + 1)], []).succeeded
    assert store.txn([Compare.unchanged(kv)], [Put("/n", b"new")]).succeeded
    assert not store.txn([Compare.unchanged(kv)], [Put("/n", b"newer")]).succeeded


def test_watch_returns_history_and_waits(store):
    start = store.revision + 1
    store.put("/w/a", b"1")
    store.delete("/w/a")
    store.put("/other", b"x")
    events = store.watch("/w/", start, timeout=0.1)
    assert [(e.type, e.key, e.value) for e in events] == [
        (EventType.PUT, "/w/a", b"1"),
        (EventType.DELETE, "/w/a", b""),
    ]
    assert events[0].revision == start

    later = store.revision + 1
    assert store.watch("/w/", later, timeout=0.05) == []

    def writer():
        time.sleep(0.3)
        store.put("/w/b", b"2")

    t = threading.Thread(target=writer)
    t.start()
    t0 = time.monotonic()
    events = store.watch("/w/", later, timeout=5)
    t.join()
    assert [e.key for e in events] == ["/w/b"]
    assert time.monotonic() - t0 < 2  # woken by the write, not by the timeout


def test_watch_after_compaction_is_refused(store):
    first = store.revision + 1
    for i in range(10):
        store.put("/c", str(i).encode())
    compact_all_but(store, keep=2)
    with pytest.raises(StoreError) as err:
        store.watch("/", first, timeout=0)
    assert err.value.kind is ErrorKind.WRONG_STATE
    assert "compacted" in str(err.value)
    # watching from after the compaction point still works
    assert [e.value for e in store.watch("/c", store.revision, timeout=0.1)] == [b"9"]


def test_leases(store):
    if isinstance(store, SqliteStore):
        with pytest.raises(StoreError) as err:
            store.lease_grant(5)
        assert err.value.kind is ErrorKind.INVALID
        with pytest.raises(StoreError) as err:
            store.txn([], [Put("/l", b"x", lease=1)])  # type: ignore[arg-type]
        assert err.value.kind is ErrorKind.INVALID
        assert store.get("/l") is None
        return
    lease = store.lease_grant(5)
    store.txn([], [Put("/leader", b"me", lease=lease)])
    assert store.lease_refresh(lease) > 0
    assert store.get("/leader").value == b"me"
    store.lease_revoke(lease)
    assert store.get("/leader") is None
    with pytest.raises(StoreError) as err:
        store.lease_refresh(lease)
    assert err.value.kind is ErrorKind.NOT_FOUND
    short = store.lease_grant(1)
    store.txn([], [Put("/short", b"x", lease=short)])
    deadline = time.monotonic() + 10
    while store.get("/short") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.get("/short") is None  # expired without refresh


def test_unreachable_etcd_names_endpoints():
    from tests.unit.store.conftest import free_port

    port = free_port()  # nothing listens there
    s = EtcdStore([("127.0.0.1", port)], timeout=2)
    with pytest.raises(StoreError) as err:
        s.get("/x")
    assert err.value.kind is ErrorKind.ENVIRONMENT
    assert f"127.0.0.1:{port}" in str(err.value)
    s.close()


def test_failover_to_next_endpoint(etcd_endpoint):
    from tests.unit.store.conftest import free_port

    s = EtcdStore([("127.0.0.1", free_port()), etcd_endpoint])
    s.put("/fo", b"1")
    assert s.get("/fo").value == b"1"
    s.close()


def test_open_store_urls(tmp_path, etcd_endpoint):
    from corral.store.url import open_store, sqlite_url

    s = open_store(sqlite_url(str(tmp_path / "db")))
    assert isinstance(s, SqliteStore)
    s.close()
    host, port = etcd_endpoint
    e = open_store(f"etcd://{host}:{port},127.0.0.1:1")
    assert isinstance(e, EtcdStore)
    assert e.endpoints == [(host, port), ("127.0.0.1", 1)]
    e.put("/url", b"ok")
    e.close()
    for bad in ("etcd://somewhere", "etcd://", "etcd://h:x", "mysql://x"):
        with pytest.raises(StoreError) as err:
            open_store(bad)
        assert err.value.kind is ErrorKind.INVALID

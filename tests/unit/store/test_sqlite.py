"""The SQLite store: revisions, transactions with compares, prefix ranges, watch, durability."""

from __future__ import annotations

import threading
import time

import pytest

from corral.common.errors import StoreError
from corral.store.base import Compare, Delete, EventType, Put
from corral.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "config.db"))
    yield s
    s.close()


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


def test_compare_ops(store):
    store.put("/n", b"abc")
    kv = store.get("/n")
    assert Compare("/n", "version", ">", 0).holds(kv)
    assert Compare("/n", "value", "=", b"abc").holds(kv)
    assert Compare("/n", "mod_revision", "<", kv.mod_revision + 1).holds(kv)
    assert not Compare("/n", "version", "!=", 1).holds(kv)
    assert Compare.absent("/n").holds(None)


def test_watch_returns_history_and_waits(store):
    start = store.revision + 1
    store.put("/w/a", b"1")
    store.delete("/w/a")
    store.put("/other", b"x")
    events = store.watch("/w/", start, timeout=0.1)
    assert [(e.type, e.key) for e in events] == [
        (EventType.PUT, "/w/a"),
        (EventType.DELETE, "/w/a"),
    ]

    later = store.revision + 1
    assert store.watch("/w/", later, timeout=0.05) == []

    def writer():
        time.sleep(0.1)
        store.put("/w/b", b"2")

    t = threading.Thread(target=writer)
    t.start()
    t0 = time.monotonic()
    events = store.watch("/w/", later, timeout=5)
    t.join()
    assert [e.key for e in events] == ["/w/b"]
    assert time.monotonic() - t0 < 2  # woken by the write, not by the timeout


def test_watch_after_compaction_is_refused(store):
    for i in range(10):
        store.put("/c", str(i).encode())
    store.compact(keep=2)
    with pytest.raises(StoreError) as err:
        store.watch("/", 1, timeout=0)
    assert "compacted" in str(err.value)


def test_data_survives_reopen(tmp_path):
    path = str(tmp_path / "db")
    s = SqliteStore(path)
    s.put("/persist", b"yes")
    rev = s.revision
    s.close()
    s2 = SqliteStore(path)
    assert s2.get("/persist").value == b"yes"
    assert s2.revision == rev
    s2.close()


def test_unopenable_path_raises_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        SqliteStore(str(blocker / "sub" / "db"))

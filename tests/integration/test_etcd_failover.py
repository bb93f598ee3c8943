"""The etcd store on a real three-member etcd cluster survives the loss of any one member.

Writers and readers keep going while a follower, then the leader, are SIGKILLed; every write
acknowledged is in etcd afterwards, and a killed member rejoins with the data.
"""

from __future__ import annotations

import threading
import time

from corral.common.errors import ErrorKind, StoreError
from corral.store.base import Compare, Put
from corral.store.etcd import EtcdStore
from corral.store.url import open_store
from tests.integration.etcd_cluster import EtcdCluster


def test_fixture_shape(etcd_cluster: EtcdCluster) -> None:
    members = etcd_cluster.members
    assert len(members) == 3
    assert len({m.host for m in members}) == 3
    assert all(m.host.startswith("127.") for m in members)
    assert etcd_cluster.endpoints == [m.client_url for m in members]
    url = etcd_cluster.store_url()
    assert url == "etcd://" + ",".join(f"{m.host}:{m.client_port}" for m in members)
    store = open_store(url)
    assert isinstance(store, EtcdStore)
    assert store.endpoints == [(m.host, m.client_port) for m in members]
    store.put("/probe", b"1")
    assert etcd_cluster.keys("/probe") == {"/probe": b"1"}
    store.close()
    assert etcd_cluster.leader() in {m.name for m in members}


def test_store_survives_loss_of_follower_then_leader(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.leader()
    follower = next(m.name for m in etcd_cluster.members if m.name != leader)
    # put the leader first, so the store talks to it when it dies
    order = [leader] + [m.name for m in etcd_cluster.members if m.name != leader]
    store = open_store(
        etcd_cluster.store_url(order[:1]) + "," + etcd_cluster.store_url(order[1:])[7:]
    )
    acked: list[str] = []
    cas_acked: list[str] = []
    unknown: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def writer(wid: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"/w/{wid}/{n:06d}"
            n += 1
            try:
                store.put(key, key.encode())
                acked.append(key)
                kv = store.get(key)
                assert kv is not None and kv.value == key.encode()
                cas = key.replace("/w/", "/cas/")
                try:
                    if store.txn([Compare.absent(cas)], [Put(cas, b"c")]).succeeded:
                        cas_acked.append(cas)
                except StoreError as exc:
                    if not exc.fields.get("outcome_unknown"):
                        raise
                    unknown.append(cas)
            except BaseException as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.7)
        etcd_cluster.kill(follower)
        time.sleep(1.0)
        etcd_cluster.restart(follower)
        time.sleep(0.5)
        before = len(acked)
        etcd_cluster.kill(leader)
        new_leader = etcd_cluster.leader()
        assert new_leader != leader
        # NOTE: a request a follower had forwarded to the dead leader waits for etcd's own
        # request timeout (5 s + 2 election timeouts) before it is answered and re-sent.
        deadline = time.monotonic() + 20
        while len(acked) <= before + 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(acked) > before + 10, "writes did not continue after the leader died"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures, failures
    # every acknowledged write is there (read through the survivors)
    stored = etcd_cluster.keys("/")
    missing = [k for k in acked if stored.get(k) != k.encode()]
    assert not missing
    assert all(k in stored for k in cas_acked)
    # conditional writes with a lost answer were not re-sent; each is there at most once
    assert set(unknown).isdisjoint(cas_acked)
    # the old leader rejoins and catches up
    etcd_cluster.restart(leader)
    rev = store.revision
    alone = EtcdStore([(etcd_cluster.member(leader).host, etcd_cluster.member(leader).client_port)])
    deadline = time.monotonic() + 10
    while alone.revision < rev and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alone.get(acked[-1]) is not None
    alone.close()
    store.close()


def test_quorum_loss_is_a_clear_error(etcd_cluster: EtcdCluster) -> None:
    store = EtcdStore(
        [(m.host, m.client_port) for m in etcd_cluster.members], timeout=2, retry_for=3
    )
    store.put("/a", b"1")
    etcd_cluster.kill("m1")
    etcd_cluster.kill("m2")
    start = time.monotonic()
    try:
        store.put("/a", b"2")
    except StoreError as exc:
        assert exc.kind is ErrorKind.ENVIRONMENT
    else:  # pragma: no cover - etcd cannot commit without quorum
        raise AssertionError("a write without quorum succeeded")
    assert time.monotonic() - start < 15
    etcd_cluster.restart("m1")
    assert store.get("/a") is not None
    store.close()

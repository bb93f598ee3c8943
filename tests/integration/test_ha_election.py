"""Leader election, self-fencing, fenced writes and handoff on a real three-member etcd.

The electors run in this process (one thread each, each with its own etcd connections), so
the timing and the fencing are those of the real store; the master daemons' use of them is
covered by ``test_ha_masters.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from corral.common.errors import ErrorKind, StoreError
from corral.master.config import ClusterConfig
from corral.master.leader import (
    HANDOFF_KEY,
    LEADER_KEY,
    FencedConfig,
    LeaderElection,
    NotLeaderError,
    read_leader,
    request_handoff,
)
from corral.objects.cluster import Cluster
from corral.store.base import Compare, Store
from corral.store.url import open_store
from tests.integration.etcd_cluster import EtcdCluster

TTL = 2


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def stores(etcd_cluster: EtcdCluster) -> Iterator[Callable[[], Store]]:
    made: list[Store] = []

    def make() -> Store:
        store = open_store(etcd_cluster.store_url(), timeout=1.0, retry_for=1.0)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def electors(stores: Callable[[], Store]) -> Iterator[Callable[..., LeaderElection]]:
    made: list[LeaderElection] = []

    def make(node: str, **kw: object) -> LeaderElection:
        election = LeaderElection(stores(), node, ttl=TTL, **kw)  # type: ignore[arg-type]
        made.append(election)
        election.start()
        return election

    yield make
    for election in made:
        election.stop()


def test_one_leader_and_takeover_after_loss(stores, electors) -> None:
    a = electors("node1")
    _until(a.is_leader, 5, "node1 leads")
    b = electors("node2")
    time.sleep(1.0)
    assert a.is_leader() and not b.is_leader()
    observer = stores()
    leader = read_leader(observer)
    assert leader is not None and leader.node == "node1" and leader.owner == a.owner
    assert b.current() is not None and b.current().node == "node1"  # type: ignore[union-attr]

    # node1's store goes away (as if its host died): it self-fences before its lease can
    # expire, and node2 leads soon after the lease is gone
    a.store.close()
    lost = _until(lambda: not a.is_leader(), TTL + 1, "node1 self-fences")
    assert lost <= TTL
    took = _until(b.is_leader, TTL + 3, "node2 takes over")
    assert not a.is_leader()
    leader = read_leader(observer)
    assert leader is not None and leader.node == "node2"
    assert lost + took < TTL + 3


def test_resign_hands_over_at_once(stores, electors) -> None:
    a = electors("node1")
    _until(a.is_leader, 5, "node1 leads")
    b = electors("node2")
    a.release()  # resign on purpose: the key goes at once, node2 need not wait for a TTL
    _until(b.is_leader, 1.5, "node2 takes over after a resign")


def test_ineligible_node_never_campaigns(stores, electors) -> None:
    c = electors("node3", eligible=lambda: False)
    time.sleep(1.5)
    assert not c.is_leader()
    assert stores().get(LEADER_KEY) is None


def test_deposed_leader_cannot_write(stores, electors) -> None:
    """A write conditioned on an old term fails in the store even if the writer does not
    know it was deposed; and a master that knows refuses locally."""
    store = stores()
    ClusterConfig(store).commit([])  # the store works
    store.put(
        "/corral/cluster",
        Cluster(name="c", master_node="node1", enabled_hypervisors=["fake"])
        .model_dump_json()
        .encode(),
    )
    a = electors("node1")
    _until(a.is_leader, 5, "node1 leads")
    fenced = FencedConfig(store, a)
    fenced.modify_cluster(lambda c: c.tags.append("by-node1"))
    stale = a.fence()  # the comparison of node1's term

    class Unaware:
        """A leadership that still believes it leads (a stopped process that resumed)."""

        node = "node1"

        def is_leader(self) -> bool:
            return True

        def current(self) -> None:
            return None

        def fence(self) -> list[Compare]:
            return stale

    b = electors("node2")
    a.release()
    _until(b.is_leader, 2, "node2 leads")
    before = store.get("/corral/cluster")
    with pytest.raises(NotLeaderError, match=r"deposed.*leader is now node2"):
        FencedConfig(store, Unaware()).modify_cluster(lambda c: c.tags.append("stale"))
    with pytest.raises(NotLeaderError, match="not the leader"):
        fenced.modify_cluster(lambda c: c.tags.append("stale"))
    after = store.get("/corral/cluster")
    assert before is not None and after is not None and after.mod_revision == before.mod_revision
    FencedConfig(store, b).modify_cluster(lambda c: c.tags.append("by-node2"))
    assert ClusterConfig(store).cluster().tags == ["by-node1", "by-node2"]


def test_handoff_moves_the_leadership(stores, electors) -> None:
    a = electors("node1")
    _until(a.is_leader, 5, "node1 leads")
    b = electors("node2")
    c = electors("node3")
    time.sleep(0.5)

    def follow_a() -> None:  # what the master service does when asked to step down
        while True:
            if a.handoff_requested.is_set():
                a.release()
                return
            time.sleep(0.05)

    import threading

    helper = threading.Thread(target=follow_a, daemon=True)
    helper.start()
    start = time.monotonic()
    leader = request_handoff(stores(), "node3", timeout=10)
    assert leader.node == "node3"
    assert time.monotonic() - start < TTL + 2
    assert c.is_leader() and not a.is_leader() and not b.is_leader()
    assert stores().get(HANDOFF_KEY) is None
    helper.join(5)


def test_handoff_to_a_node_that_never_campaigns_times_out(stores, electors) -> None:
    a = electors("node1")
    _until(a.is_leader, 5, "node1 leads")
    with pytest.raises(Exception, match="node9 did not become the master") as info:
        request_handoff(stores(), "node9", timeout=1.5)
    assert getattr(info.value, "kind", None) is ErrorKind.TEMP_NO_RESOURCES


def test_sqlite_has_no_leases(tmp_path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/c.db")
    try:
        with pytest.raises(StoreError) as info:
            request_handoff(store, "node2", timeout=1)
        assert info.value.kind is ErrorKind.INVALID
    finally:
        store.close()

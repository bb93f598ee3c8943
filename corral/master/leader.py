"""Leader election among the master candidates, on the store's leases (etcd).

Every master candidate runs ``corral-master``; exactly one of them, the *leader*, runs the job
executor and the watcher. The leader is whoever holds the key :data:`LEADER_KEY`, written with
an etcd lease so that it vanishes when its holder stops refreshing it::

    /corral/leader           {"node": "node2", "owner": "node2:4711:1712345678", "since": ...}
    /corral/leader-handoff   {"node": "node3", "requested": ...}   (master-failover; leased)

:class:`LeaderElection` (one thread per master process):

* **campaign**: grant a lease of ``ttl`` seconds and create the leader key with it, only if the
  key is absent (one transaction). The value names this node and this process (``owner``) and
  the start of the term (``since``), so every term has a distinct value.
* **keepalive**: refresh the lease every ``ttl / 3`` seconds.
* **self-fencing**: the term is valid locally until ``ttl - margin`` seconds after the start of
  the last refresh that succeeded (the lease cannot expire at etcd before that). Past that
  instant :meth:`LeaderElection.is_leader` is False even if the election thread is stuck (a
  blocked request, a stopped process), so the master stops acting before anybody else can be
  elected.
* **watch**: a follower watches the leader key and campaigns as soon as it disappears.
* **resign**: :meth:`LeaderElection.release` revokes the lease (the key vanishes at once).
* **handoff** (``cluster master-failover``): :func:`request_handoff` writes the handoff key
  naming the wanted node. The leader sees it at its next refresh, stops acting
  (``is_leader()`` False, :attr:`LeaderElection.handoff_requested` set) and, once its owner has
  stopped the executor and turned the master IP down, resigns; every other candidate defers
  while the handoff key names somebody else (it carries a lease, so a handoff that nobody takes
  ends by itself after :data:`HANDOFF_TTL` seconds).

Fencing of writes: :class:`FencedConfig` is a :class:`ClusterConfig` whose commits carry one
more comparison, "the leader key still holds *our* term's value". A deposed leader's write
fails with :class:`NotLeaderError` and changes nothing, even if the deposed process does not
know yet that it was deposed.

With SQLite (one host, no leases) :class:`SoleLeadership` stands in: the only master is always
the leader and nothing is fenced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from corral.common.errors import (
    CorralError,
    ErrorKind,
    OpError,
    RevisionConflict,
    StoreError,
)
from corral.common.paths import Paths
from corral.master.config import Change, ClusterConfig, PutObject, encode
from corral.store.base import Compare, Delete, LeaseId, Put, Store

log = logging.getLogger(__name__)

LEADER_KEY = "/corral/leader"
HANDOFF_KEY = "/corral/leader-handoff"
#: Prefix covering both keys (one watch sees the leader and handoff changes).
LEADERSHIP_PREFIX = "/corral/leader"

#: Lease TTL in seconds: a dead leader's key vanishes at most this long after its last refresh
#: (etcd checks expiries every 0.5 s), so a new leader runs jobs within about ``ttl + 1`` s.
DEFAULT_TTL = 3
#: Seconds a handoff request stays valid (its key has a lease of that length).
HANDOFF_TTL = 20
#: Seconds :func:`request_handoff` waits for the wanted node to become the leader.
HANDOFF_TIMEOUT = 30.0


class NotLeaderError(StoreError):
    """A leader-only write was refused: this master is not (or no longer) the leader.

    Nothing was written.
    """

    default_kind = ErrorKind.WRONG_STATE


@dataclasses.dataclass(frozen=True, slots=True)
class LeaderInfo:
    """The value of the leader key: who leads, which process, since when (epoch seconds)."""

    node: str
    owner: str
    since: float

    def encode(self) -> bytes:
        """The stored form (JSON)."""
        return json.dumps(
            {"node": self.node, "owner": self.owner, "since": self.since}, sort_keys=True
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> LeaderInfo | None:
        """Parse a stored value; None when it is not a leader record."""
        try:
            data = json.loads(raw)
            return cls(str(data["node"]), str(data.get("owner", "")), float(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None


def process_owner(node: str) -> str:
    """An id naming this node and this process (``node:pid:start``), unique per process."""
    return f"{node}:{os.getpid()}:{int(time.time())}"


def owner_node(owner: str) -> str:
    """The node name in an owner id (the whole text when it has no ``:``)."""
    return owner.split(":", 1)[0]


def read_leader(store: Store) -> LeaderInfo | None:
    """The current leader, or None when nobody holds the lease.

    Raises:
        StoreError: the store cannot be read.
    """
    kv = store.get(LEADER_KEY)
    return LeaderInfo.decode(kv.value) if kv is not None else None


def read_handoff(store: Store) -> str | None:
    """The node a pending master-failover hands the leadership to, or None.

    Raises:
        StoreError: the store cannot be read.
    """
    kv = store.get(HANDOFF_KEY)
    if kv is None:
        return None
    try:
        return str(json.loads(kv.value)["node"])
    except (ValueError, KeyError, TypeError):
        return None


class Leadership(Protocol):
    """What the master service needs to know about leadership."""

    node: str

    def is_leader(self) -> bool:
        """Whether this process may act as the leader right now (no I/O)."""

    def current(self) -> LeaderInfo | None:
        """The leader as this process knows it (no I/O)."""

    def fence(self) -> list[Compare]:
        """Comparisons that make a write fail unless this process still leads.

        Raises:
            NotLeaderError: this process is not the leader now (nothing may be written).
        """


class SoleLeadership:
    """Leadership without leases (SQLite): the only master always leads; nothing is fenced."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.info = LeaderInfo(node, process_owner(node), time.time())

    def is_leader(self) -> bool:
        """Always True."""
        return True

    def current(self) -> LeaderInfo | None:
        """This master."""
        return self.info

    def fence(self) -> list[Compare]:
        """No comparison: there is nobody to be fenced against."""
        return []


@dataclasses.dataclass(slots=True)
class _Term:
    info: LeaderInfo
    value: bytes
    lease: LeaseId
    valid_until: float  # monotonic


class LeaderElection:
    """Campaign for, keep and give up the leader lease (see the module docstring).

    Args:
        store: the store (etcd: it needs leases). Use a store whose request timeout is short
            (about ``ttl / 3``) so that a stuck request cannot hold up the keepalive.
        node: this master's node name.
        ttl: the lease TTL in seconds (integer, etcd's unit).
        margin: seconds before the lease's earliest possible expiry at which this process
            stops considering itself the leader (default ``ttl / 3``).
        eligible: asked before each campaign; False (or an exception) skips it (e.g. the
            node is no longer a master candidate).
        clock: monotonic clock (tests).
    """

    def __init__(
        self,
        store: Store,
        node: str,
        *,
        ttl: int = DEFAULT_TTL,
        margin: float | None = None,
        eligible: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 1:
            raise StoreError(f"leader lease TTL must be at least 1 s, not {ttl}")
        self.store = store
        self.node = node
        self.ttl = ttl
        self.margin = ttl / 3 if margin is None else margin
        self.owner = process_owner(node)
        self._eligible = eligible
        self._clock = clock
        self._lock = threading.RLock()
        self._term: _Term | None = None
        self._known: LeaderInfo | None = None
        self._handoff_to: str | None = None
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set when the leader saw a master-failover request for another node; the owner
        #: stops acting, then calls :meth:`release`.
        self.handoff_requested = threading.Event()

    # --- state (no I/O) -----------------------------------------------------------------

    def is_leader(self) -> bool:
        """Whether this process holds a term that is still valid locally (see module doc)."""
        with self._lock:
            term = self._term
        return (
            term is not None
            and not self.handoff_requested.is_set()
            and self._clock() < term.valid_until
        )

    def current(self) -> LeaderInfo | None:
        """The leader as last seen by the election thread (ours while we lead)."""
        with self._lock:
            if self._term is not None and self.is_leader():
                return self._term.info
            return self._known

    def fence(self) -> list[Compare]:
        """See :meth:`Leadership.fence`."""
        with self._lock:
            term = self._term
        if term is None or not self.is_leader():
            raise NotLeaderError(
                f"master {self.node} is not the leader any more; the write was refused",
                node=self.node,
            )
        return [Compare(LEADER_KEY, "value", "=", term.value)]

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the election thread (campaigning at once)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the election thread; the lease is released if we still hold it."""
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl + 15)
        self.release()

    def release(self) -> None:
        """Give up the leadership now: revoke the lease (the key vanishes).

        Failures are logged: an unrevoked lease still ends ``ttl`` seconds later.
        """
        with self._lock:
            term, self._term = self._term, None
        if term is None:
            return
        try:
            self.store.lease_revoke(term.lease)
            log.info("resigned the leadership (node %s)", self.node)
        except StoreError as exc:
            log.warning("could not revoke the leader lease (it expires by itself): %s", exc)
        self.handoff_requested.clear()
        self._poke.set()

    # --- the election thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._holds_term():
                    self._keep_alive()
                else:
                    self._follow()
            except CorralError as exc:
                log.warning("leader election: %s", exc)
                self._stop.wait(min(1.0, self.ttl / 3))
            except Exception:  # the thread must survive anything; the term self-fences
                log.exception("leader election: internal error")
                self._stop.wait(1.0)

    def _holds_term(self) -> bool:
        with self._lock:
            return self._term is not None

    def _follow(self) -> None:
        """One follower round: campaign if nobody leads, else wait for a change."""
        rev = self.store.revision
        leader_kv = self.store.get(LEADER_KEY)
        handoff = read_handoff(self.store)
        with self._lock:
            self._known = LeaderInfo.decode(leader_kv.value) if leader_kv else None
        deferring = handoff is not None and handoff != self.node
        if leader_kv is None and not deferring and self._is_eligible():
            if self._campaign():
                return
            rev = self.store.revision
        # NOTE: short waits so stop() and a changed eligibility take effect promptly.
        self.store.watch(LEADERSHIP_PREFIX, rev + 1, min(1.0, self.ttl / 3))

    def _is_eligible(self) -> bool:
        try:
            return self._eligible()
        except Exception as exc:  # eligibility reads the store: no campaign when unsure
            log.warning("cannot tell whether node %s may lead: %s", self.node, exc)
            return False

    def _campaign(self) -> bool:
        """Try to create the leader key; return whether we won."""
        sent = self._clock()
        lease = self.store.lease_grant(self.ttl)
        info = LeaderInfo(self.node, self.owner, time.time())
        value = info.encode()
        try:
            result = self.store.txn(
                [Compare.absent(LEADER_KEY)], [Put(LEADER_KEY, value, lease=lease)]
            )
        except StoreError:
            self._revoke_quietly(lease)
            raise
        if not result.succeeded:
            self._revoke_quietly(lease)
            return False
        with self._lock:
            self._term = _Term(info, value, lease, sent + self.ttl - self.margin)
            self._known = info
        log.info("node %s is now the leader (lease ttl %d s)", self.node, self.ttl)
        return True

    def _revoke_quietly(self, lease: LeaseId) -> None:
        try:
            self.store.lease_revoke(lease)
        except StoreError as exc:
            log.debug("revoking unused lease %d: %s", lease, exc)

    def _keep_alive(self) -> None:
        """One leader round: wait ``ttl / 3``, refresh, look for a handoff request."""
        self._poke.wait(self.ttl / 3)
        self._poke.clear()
        with self._lock:
            term = self._term
        if term is None or self._stop.is_set():
            return
        if self.handoff_requested.is_set():
            # our owner is stepping down; keep the lease alive until it calls release()
            self._refresh(term)
            return
        if self._clock() >= term.valid_until:
            self._lost(term, "the lease could not be refreshed in time (self-fenced)")
            return
        if not self._refresh(term):
            return
        target = read_handoff(self.store)
        if target is not None and target != self.node:
            log.info("master-failover to node %s requested: stepping down", target)
            self.handoff_requested.set()

    def _refresh(self, term: _Term) -> bool:
        sent = self._clock()
        try:
            self.store.lease_refresh(term.lease)
        except StoreError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                self._lost(term, "the lease expired")
                return False
            log.warning("leader lease refresh failed: %s", exc)
            return False
        with self._lock:
            if self._term is term:
                term.valid_until = sent + self.ttl - self.margin
        return True

    def _lost(self, term: _Term, why: str) -> None:
        log.warning("node %s lost the leadership: %s", self.node, why)
        with self._lock:
            if self._term is term:
                self._term = None
        self._revoke_quietly(term.lease)


def request_handoff(
    store: Store,
    target: str,
    *,
    timeout: float = HANDOFF_TIMEOUT,
    poll: float = 0.2,
) -> LeaderInfo:
    """Make ``target`` the leader (``cluster master-failover``); return the new leader.

    Writes the handoff key (leased), waits until ``target`` holds the leader key, then removes
    the handoff key. The current leader steps down when it sees the request; other candidates
    defer to ``target``.

    Raises:
        OpError: ``target`` did not become the leader within ``timeout`` seconds (kind
            TEMP_NO_RESOURCES; the request expires by itself).
        StoreError: the store has no leases (SQLite: kind INVALID) or cannot be reached.
    """
    lease = store.lease_grant(HANDOFF_TTL)
    value = json.dumps({"node": target, "requested": time.time()}).encode()
    store.txn([], [Put(HANDOFF_KEY, value, lease=lease)])
    try:
        deadline = time.monotonic() + timeout
        while True:
            leader = read_leader(store)
            if leader is not None and leader.node == target:
                return leader
            if time.monotonic() >= deadline:
                holder = leader.node if leader else "nobody"
                raise OpError(
                    f"node {target} did not become the master within {timeout:g}s (the "
                    f"leader is {holder}); is corral-master running on {target}?",
                    kind=ErrorKind.TEMP_NO_RESOURCES,
                    node=target,
                )
            time.sleep(poll)
    finally:
        try:
            store.txn([Compare(HANDOFF_KEY, "value", "=", value)], [Delete(HANDOFF_KEY)])
            store.lease_revoke(lease)
        except StoreError as exc:
            log.debug("handoff cleanup: %s", exc)


def master_failover(paths: Paths, *, timeout: float = HANDOFF_TIMEOUT) -> tuple[str, LeaderInfo]:
    """``cluster master-failover`` run on a master candidate: make this node the leader.

    Returns:
        ``(previous leader's node or "", new leader)``.

    Raises:
        CorralError: no cluster here, or this node's ``corral-master`` is not running (kind
            WRONG_STATE / ENVIRONMENT).
        OpError: this node is not a master candidate (or offline, not master-capable), is
            already the master, or the cluster's store is SQLite (kind WRONG_STATE); the new
            leader did not take over in time (TEMP_NO_RESOURCES).
        StoreError: the store cannot be reached.
    """
    from corral.common import daemonize
    from corral.master.bootstrap import load_cluster_conf
    from corral.rpc import tls
    from corral.store.url import open_store

    conf = load_cluster_conf(paths)
    node = tls.cert_common_name(paths.node_cert)
    store = open_store(conf.store)
    try:
        found = ClusterConfig(store).read_node(node)
        if found is None or not found.master_candidate or not found.master_capable:
            raise OpError(
                f"node {node} is not a master candidate: master-failover must run on a master "
                "candidate (make it one with 'corral node modify --master-candidate yes')",
                kind=ErrorKind.WRONG_STATE,
                node=node,
            )
        if found.offline:
            raise OpError(f"node {node} is offline", kind=ErrorKind.WRONG_STATE, node=node)
        if not conf.store.startswith("etcd://"):
            raise OpError(
                "master-failover needs the etcd store: with SQLite the cluster has a single master",
                kind=ErrorKind.WRONG_STATE,
            )
        current = read_leader(store)
        if current is not None and current.node == node:
            raise OpError(
                f"node {node} is already the master", kind=ErrorKind.WRONG_STATE, node=node
            )
        if daemonize.daemon_status(paths.pid_file("corral-master"), name="corral-master") is None:
            raise CorralError(
                f"corral-master is not running on node {node}; start it first "
                "('corral daemons start')",
                kind=ErrorKind.WRONG_STATE,
                node=node,
            )
        leader = request_handoff(store, node, timeout=timeout)
        return (current.node if current else "", leader)
    finally:
        store.close()


class FencedConfig(ClusterConfig):
    """A :class:`ClusterConfig` whose every commit requires this process to be the leader.

    Used by the job executor (job status updates and the operations' writes). Reads are not
    affected.
    """

    def __init__(self, store: Store, leadership: Leadership) -> None:
        super().__init__(store)
        self.leadership = leadership

    def commit(self, changes: Sequence[Change]) -> int:
        """See :meth:`ClusterConfig.commit`, conditioned on our leadership.

        Raises:
            NotLeaderError: this process is not the leader (checked locally, and by the
                store: the leader key no longer holds our term's value); nothing was written.
            RevisionConflict: a key changed since it was read; nothing was written.
            StoreError: the store cannot be written; nothing was written.
        """
        fence = self.leadership.fence()
        compares: list[Compare] = list(fence)
        ops: list[Put | Delete] = []
        for change in changes:
            if change.expect is not None:
                compares.append(Compare(change.key, "mod_revision", "=", change.expect))
            if isinstance(change, PutObject):
                ops.append(Put(change.key, encode(change.obj)))
            else:
                ops.append(Delete(change.key))
        result = self.store.txn(compares, ops)
        if result.succeeded:
            return result.revision
        if fence:
            leader = self.store.get(LEADER_KEY)
            if leader is None or not fence[0].holds(leader):
                holder = LeaderInfo.decode(leader.value) if leader else None
                raise NotLeaderError(
                    f"master {self.leadership.node} was deposed (the leader is now "
                    f"{holder.node if holder else 'nobody'}); the write was refused",
                    node=self.leadership.node,
                    leader=holder.node if holder else "",
                )
        keys = ", ".join(c.key for c in changes)
        raise RevisionConflict(f"concurrent update of {keys}; retry", keys=keys)


__all__ = [
    "DEFAULT_TTL",
    "HANDOFF_KEY",
    "LEADER_KEY",
    "FencedConfig",
    "LeaderElection",
    "LeaderInfo",
    "Leadership",
    "NotLeaderError",
    "SoleLeadership",
    "master_failover",
    "read_handoff",
    "read_leader",
    "request_handoff",
]

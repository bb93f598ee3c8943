"""The cluster-state store: a small key-value interface with revisions.

It is shaped after etcd's v3 API so that the SQLite implementation (single host) and the etcd
one (several master candidates) are interchangeable:

* every write bumps a store-wide ``revision``; each key remembers the revision that created it
  (``create_revision``), the one that last changed it (``mod_revision``) and how many times it
  was written since creation (``version``);
* :meth:`Store.txn` applies several puts/deletes atomically if all its :class:`Compare`
  conditions hold (optimistic concurrency: compare ``mod_revision`` with what you read);
* :meth:`Store.watch` returns the changes under a prefix since a revision, waiting for the
  first one up to a timeout (a long poll; etcd's watch stream fits behind it).

Keys are ``/``-separated strings; values are bytes (JSON for Corral's objects, see
``master/config.py``).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Sequence
from typing import Literal, NewType

from corral.common.errors import ErrorKind, StoreError


@dataclasses.dataclass(frozen=True, slots=True)
class KeyValue:
    """A key with its value and revision metadata."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


#: An etcd lease (keys written with it vanish when it expires or is revoked).
LeaseId = NewType("LeaseId", int)

CompareTarget = Literal["version", "mod_revision", "create_revision", "value"]
CompareOp = Literal["=", "!=", "<", ">"]


@dataclasses.dataclass(frozen=True, slots=True)
class Compare:
    """A condition of a transaction on one key.

    A missing key has version 0 and revisions 0; a ``value`` comparison on a missing key never
    holds (etcd's rule: a missing value is not the empty value).
    """

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes

    @classmethod
    def absent(cls, key: str) -> Compare:
        """The key does not exist."""
        return cls(key, "version", "=", 0)

    @classmethod
    def unchanged(cls, kv: KeyValue) -> Compare:
        """The key was not written since ``kv`` was read."""
        return cls(kv.key, "mod_revision", "=", kv.mod_revision)

    def holds(self, kv: KeyValue | None) -> bool:
        """Evaluate the condition against the key's current state."""
        actual: int | bytes
        if self.target == "value":
            if kv is None:
                return False
            actual = kv.value
        elif kv is None:
            actual = 0
        else:
            actual = getattr(kv, self.target)
        expected = self.value
        if self.op == "=":
            return actual == expected
        if self.op == "!=":
            return actual != expected
        if type(actual) is not type(expected):
            return False
        if self.op == "<":
            return actual < expected  # type: ignore[operator]
        return actual > expected  # type: ignore[operator]


@dataclasses.dataclass(frozen=True, slots=True)
class Put:
    """Set a key (with ``lease``, the key is deleted when the lease ends; etcd only)."""

    key: str
    value: bytes
    lease: LeaseId | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Delete:
    """Remove a key (or, with ``prefix``, every key under it)."""

    key: str
    prefix: bool = False


Op = Put | Delete


@dataclasses.dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether the comparisons held (and so which branch ran), and the revision after it."""

    succeeded: bool
    revision: int


class EventType(enum.StrEnum):
    """Kind of change reported by a watch."""

    PUT = "put"
    DELETE = "delete"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One change of one key."""

    type: EventType
    key: str
    value: bytes
    revision: int


class Store(abc.ABC):
    """The store interface (see module docstring). Implementations are thread-safe."""

    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None:
        """Return the key, or None if it does not exist.

        Raises:
            StoreError: the store cannot be read.
        """

    @abc.abstractmethod
    def range(self, prefix: str) -> list[KeyValue]:
        """Return every key starting with ``prefix``, sorted by key.

        Raises:
            StoreError: the store cannot be read.
        """

    @abc.abstractmethod
    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Atomically apply ``success`` if every comparison holds, else ``failure``.

        Raises:
            StoreError: the store cannot be written (nothing was applied).
        """

    @property
    @abc.abstractmethod
    def revision(self) -> int:
        """The store's current revision."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int, timeout: float) -> list[Event]:
        """Changes under ``prefix`` with revision >= ``start_revision``.

        Waits up to ``timeout`` seconds for the first change; returns [] on timeout.

        Raises:
            StoreError: the history before ``start_revision`` was compacted away (kind
                WRONG_STATE; re-read the keys and watch from the current revision) or the
                store cannot be read.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files."""

    # --- leases (etcd only; the defaults refuse) -------------------------------------------

    def lease_grant(self, ttl: int) -> LeaseId:
        """Create a lease that ends ``ttl`` seconds after its last refresh.

        Raises:
            StoreError: the store has no leases (kind INVALID; SQLite) or cannot be written.
        """
        raise StoreError(f"leases need etcd ({type(self).__name__})", kind=ErrorKind.INVALID)

    def lease_refresh(self, lease: LeaseId) -> int:
        """Keep ``lease`` alive; return its renewed TTL in seconds.

        Raises:
            StoreError: the lease expired or is unknown (kind NOT_FOUND), the store has no
                leases (INVALID) or cannot be reached.
        """
        raise StoreError(f"leases need etcd ({type(self).__name__})", kind=ErrorKind.INVALID)

    def lease_revoke(self, lease: LeaseId) -> None:
        """End ``lease`` now, deleting its keys.

        Raises:
            StoreError: the lease is unknown (kind NOT_FOUND), the store has no leases
                (INVALID) or cannot be written.
        """
        raise StoreError(f"leases need etcd ({type(self).__name__})", kind=ErrorKind.INVALID)

    # --- conveniences built on the primitives ---------------------------------------------

    def put(self, key: str, value: bytes) -> int:
        """Set ``key`` unconditionally; return the new revision.

        Raises:
            StoreError: the store cannot be written.
        """
        return self.txn([], [Put(key, value)]).revision

    def create(self, key: str, value: bytes) -> bool:
        """Set ``key`` only if it does not exist; return whether it was created.

        Raises:
            StoreError: the store cannot be written.
        """
        return self.txn([Compare.absent(key)], [Put(key, value)]).succeeded

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if missing).

        Raises:
            StoreError: the store cannot be written.
        """
        self.txn([], [Delete(key)])


__all__ = [
    "Compare",
    "Delete",
    "Event",
    "EventType",
    "KeyValue",
    "LeaseId",
    "Op",
    "Put",
    "Store",
    "StoreError",
    "TxnResult",
]

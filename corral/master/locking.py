"""Shared/exclusive locks on named cluster objects, for the job executor (asyncio).

Names are ``cluster``, ``instance/<name>`` and ``node/<name>``. An operation declares every
lock it needs up front (:meth:`Operation.declare_locks`) and :meth:`LockManager.acquire` takes
them all, in one global order, so two jobs can never wait for each other (no deadlock)::

    cluster  <  instance/*  <  node/*        (then by name)

Ganeti uses the same levels (cluster, instance, node). Each lock grants in FIFO order: a
shared request queued behind an exclusive one waits, so writers are not starved by readers.

Cancellation: if the task waiting in :meth:`LockManager.acquire` is cancelled (job canceled,
master shutting down), the locks it already holds are released and its queued request is
withdrawn before :class:`asyncio.CancelledError` propagates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

CLUSTER_LOCK = "cluster"

_LEVELS = {"cluster": 0, "instance": 1, "node": 2}


class LockMode(enum.StrEnum):
    """How a lock is held."""

    SHARED = "shared"
    EXCLUSIVE = "exclusive"


def instance_lock(name: str) -> str:
    """The lock name of an instance."""
    return f"instance/{name}"


def node_lock(name: str) -> str:
    """The lock name of a node."""
    return f"node/{name}"


def lock_order(name: str) -> tuple[int, str]:
    """Sort key giving the global acquisition order.

    Raises:
        ValueError: the name is not ``cluster``, ``instance/<x>`` or ``node/<x>``.
    """
    level = name.split("/", 1)[0]
    if level not in _LEVELS or (level != "cluster" and "/" not in name):
        raise ValueError(f"invalid lock name {name!r}")
    return (_LEVELS[level], name)


@dataclasses.dataclass(slots=True)
class _Waiter:
    owner: str
    mode: LockMode
    future: asyncio.Future[None]


@dataclasses.dataclass(slots=True)
class _Lock:
    name: str
    exclusive: str | None = None
    shared: set[str] = dataclasses.field(default_factory=set)
    waiters: collections.deque[_Waiter] = dataclasses.field(default_factory=collections.deque)

    def free(self) -> bool:
        return self.exclusive is None and not self.shared and not self.waiters

    def grantable(self, mode: LockMode) -> bool:
        if mode is LockMode.EXCLUSIVE:
            return self.exclusive is None and not self.shared
        return self.exclusive is None

    def grant(self, owner: str, mode: LockMode) -> None:
        if mode is LockMode.EXCLUSIVE:
            self.exclusive = owner
        else:
            self.shared.add(owner)


class LockManager:
    """All locks of one master process (they are not persisted: a restarted master has none).

    Not thread-safe: use it from the event loop only.
    """

    def __init__(self) -> None:
        self._locks: dict[str, _Lock] = {}

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        owner: str,
        wanted: Mapping[str, LockMode],
        *,
        on_wait: Callable[[str], Any] | None = None,
    ) -> AsyncIterator[None]:
        """Hold every lock in ``wanted`` for the body of the ``async with``.

        Args:
            owner: who holds them (e.g. ``job/12``), shown by :meth:`snapshot`.
            wanted: lock name -> mode.
            on_wait: called once, with the name of the lock it waits for, the first time the
                request has to wait (the executor marks the job ``waiting``).

        Raises:
            ValueError: an invalid lock name.
            asyncio.CancelledError: the waiting task was cancelled; nothing is held then.
        """
        order = sorted(wanted, key=lock_order)
        held: list[str] = []
        waited = False
        try:
            for name in order:
                lock = self._locks.setdefault(name, _Lock(name))
                mode = wanted[name]
                if not lock.waiters and lock.grantable(mode):
                    lock.grant(owner, mode)
                    held.append(name)
                    continue
                if not waited and on_wait is not None:
                    waited = True
                    on_wait(name)
                waiter = _Waiter(owner, mode, asyncio.get_running_loop().create_future())
                lock.waiters.append(waiter)
                try:
                    await waiter.future
                except BaseException:
                    if waiter.future.done() and not waiter.future.cancelled():
                        # Granted just as we were cancelled: we hold it, release below.
                        held.append(name)
                    else:
                        with contextlib.suppress(ValueError):
                            lock.waiters.remove(waiter)
                        self._wake(lock)
                        if lock.free():
                            self._locks.pop(name, None)
                    raise
                held.append(name)
            yield
        finally:
            for name in reversed(held):
                self._release(name, owner)

    def _release(self, name: str, owner: str) -> None:
        lock = self._locks[name]
        if lock.exclusive == owner:
            lock.exclusive = None
        else:
            lock.shared.discard(owner)
        self._wake(lock)
        if lock.free():
            del self._locks[name]

    def _wake(self, lock: _Lock) -> None:
        """Grant queued requests from the head of the queue while they fit (FIFO)."""
        while lock.waiters:
            head = lock.waiters[0]
            if head.future.done():  # cancelled while queued
                lock.waiters.popleft()
                continue
            if not lock.grantable(head.mode):
                break
            lock.waiters.popleft()
            lock.grant(head.owner, head.mode)
            head.future.set_result(None)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every lock in use: name, mode, owners and pending requests (for debugging)."""
        out = []
        for name in sorted(self._locks, key=lock_order):
            lock = self._locks[name]
            if lock.exclusive is not None:
                mode, owners = LockMode.EXCLUSIVE.value, [lock.exclusive]
            elif lock.shared:
                mode, owners = LockMode.SHARED.value, sorted(lock.shared)
            else:
                mode, owners = None, []
            out.append(
                {
                    "name": name,
                    "mode": mode,
                    "owners": owners,
                    "pending": [[w.mode.value, w.owner] for w in lock.waiters],
                }
            )
        return out

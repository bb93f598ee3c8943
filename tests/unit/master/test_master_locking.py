"""The lock manager: shared/exclusive, FIFO, global order, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from corral.master.locking import LockManager, LockMode, instance_lock, lock_order, node_lock

S, X = LockMode.SHARED, LockMode.EXCLUSIVE


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_shared_locks_coexist():
    locks = LockManager()
    async with locks.acquire("a", {"cluster": S}), locks.acquire("b", {"cluster": S}):
        snap = locks.snapshot()
        assert snap == [{"name": "cluster", "mode": "shared", "owners": ["a", "b"], "pending": []}]
    assert locks.snapshot() == []


async def test_exclusive_waits_and_reports_waiting():
    locks = LockManager()
    events: list[str] = []
    waited: list[str] = []

    async def writer() -> None:
        async with locks.acquire("w", {instance_lock("vm1"): X}, on_wait=waited.append):
            events.append("w")

    async with locks.acquire("r", {instance_lock("vm1"): S}):
        task = asyncio.create_task(writer())
        await _settle()
        assert events == [] and waited == ["instance/vm1"]
        assert locks.snapshot()[0]["pending"] == [["exclusive", "w"]]
        events.append("r-done")
    await task
    assert events == ["r-done", "w"]


async def test_fifo_shared_behind_exclusive_waits():
    """A reader arriving after a queued writer does not overtake it (no writer starvation)."""
    locks = LockManager()
    order: list[str] = []

    async def take(owner: str, mode: LockMode) -> None:
        async with locks.acquire(owner, {"cluster": mode}):
            order.append(owner)
            await asyncio.sleep(0.01)

    async with locks.acquire("r1", {"cluster": S}):
        w = asyncio.create_task(take("w", X))
        await _settle()
        r2 = asyncio.create_task(take("r2", S))
        await _settle()
        assert order == []
    await asyncio.gather(w, r2)
    assert order == ["w", "r2"]


async def test_global_order_prevents_deadlock():
    """Two jobs naming the same locks in opposite orders both finish."""
    locks = LockManager()
    done: list[str] = []

    async def job(owner: str, wanted: dict[str, LockMode]) -> None:
        async with locks.acquire(owner, wanted):
            await asyncio.sleep(0.01)
            done.append(owner)

    a = {node_lock("n1"): X, instance_lock("vm1"): X}
    b = {instance_lock("vm1"): X, node_lock("n1"): X}
    await asyncio.wait_for(asyncio.gather(*(job(f"j{i}", a if i % 2 else b) for i in range(10))), 5)
    assert len(done) == 10


def test_lock_order_levels():
    names = [node_lock("a"), instance_lock("z"), "cluster", instance_lock("b")]
    assert sorted(names, key=lock_order) == ["cluster", "instance/b", "instance/z", "node/a"]
    with pytest.raises(ValueError):
        lock_order("bogus/x")
    with pytest.raises(ValueError):
        lock_order("instance")


async def test_cancelled_waiter_releases_what_it_holds():
    locks = LockManager()
    async with locks.acquire("holder", {node_lock("n1"): X}):
        task = asyncio.create_task(
            locks.acquire("job", {"cluster": S, node_lock("n1"): X}).__aenter__()
        )
        await _settle()
        snap = {e["name"]: e for e in locks.snapshot()}
        assert snap["cluster"]["owners"] == ["job"]  # took the first lock, waits for the second
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        snap = {e["name"]: e for e in locks.snapshot()}
        assert "cluster" not in snap
        assert snap["node/n1"]["pending"] == []
    assert locks.snapshot() == []


async def test_body_exception_releases_locks():
    locks = LockManager()
    with pytest.raises(RuntimeError):
        async with locks.acquire("a", {"cluster": X, instance_lock("i"): X}):
            raise RuntimeError("boom")
    async with locks.acquire("b", {"cluster": X}):
        pass
    assert locks.snapshot() == []

"""The executor: scheduling, priorities, concurrency, cancel, failures, restart recovery."""

from __future__ import annotations

import asyncio
import time

import pytest
from master_fakes import UnusedRunner, run_ops, wait_job

from corral.common.errors import ErrorKind, ParamError
from corral.common.paths import Paths
from corral.master.jobs.executor import (
    RESTART_MESSAGE,
    SHUTDOWN_MESSAGE,
    lost_master_message,
    resumed_message,
)
from corral.master.jobs.queue import JobQueue
from corral.master.locking import LockMode
from corral.master.service import MasterService
from corral.objects.job import JobStatus, OpStatus
from corral.objects.opcodes import OpTagsDel, OpTagsSet, OpTestDelay


@pytest.fixture
async def service(config, tmp_path):
    svc = MasterService(config.store, UnusedRunner(), Paths(str(tmp_path)), watch_interval=0.2)
    await svc.start()
    yield svc
    await svc.stop(grace=1)


async def _until(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_noop_job_succeeds(service):
    job = await run_ops(service, OpTestDelay())
    assert job.status is JobStatus.SUCCESS
    assert job.ops[0].status is OpStatus.SUCCESS
    assert job.ops[0].result is None
    assert job.start_timestamp <= job.end_timestamp


async def test_jobs_run_concurrently(service):
    start = time.monotonic()
    ids = [await service.submit_job([OpTestDelay(duration=0.5)]) for _ in range(6)]
    for job_id in ids:
        assert (await wait_job(service, job_id)).status is JobStatus.SUCCESS
    assert time.monotonic() - start < 2.5  # not 6 x 0.5 s


async def test_priority_then_id(config, tmp_path):
    svc = MasterService(
        config.store, UnusedRunner(), Paths(str(tmp_path)), max_jobs=1, watch_interval=0
    )
    await svc.start()
    try:
        blocker = await svc.submit_job([OpTestDelay(duration=0.3)])
        await _until(lambda: svc.get_job(blocker).status is JobStatus.RUNNING)
        low = await svc.submit_job([OpTestDelay(priority=5)])
        normal = await svc.submit_job([OpTestDelay()])
        high = await svc.submit_job([OpTestDelay(priority=-10)])
        normal2 = await svc.submit_job([OpTestDelay()])
        jobs = [await wait_job(svc, j) for j in (low, normal, high, normal2)]
        order = sorted(jobs, key=lambda j: j.start_timestamp)
        assert [j.id for j in order] == [high, normal, normal2, low]
    finally:
        await svc.stop(grace=1)


async def test_cancel_running_job_at_cancellation_point(service):
    job_id = await service.submit_job([OpTestDelay(duration=30), OpTestDelay()])
    await _until(lambda: service.get_job(job_id).status is JobStatus.RUNNING)
    ok, msg = await service.cancel_job(job_id)
    assert ok and "will be canceled" in msg
    start = time.monotonic()
    job = await wait_job(service, job_id, timeout=5)
    assert time.monotonic() - start < 2
    assert job.status is JobStatus.CANCELED
    assert [op.status for op in job.ops] == [OpStatus.CANCELED, OpStatus.CANCELED]


async def test_cancel_queued_job(config, tmp_path):
    svc = MasterService(
        config.store, UnusedRunner(), Paths(str(tmp_path)), max_jobs=1, watch_interval=0
    )
    await svc.start()
    try:
        first = await svc.submit_job([OpTestDelay(duration=0.3)])
        second = await svc.submit_job([OpTestDelay()])
        assert await svc.cancel_job(second) == (True, f"Job {second} canceled")
        assert (await wait_job(svc, first)).status is JobStatus.SUCCESS
        job = await wait_job(svc, second)
        assert job.status is JobStatus.CANCELED and job.start_timestamp is None
    finally:
        await svc.stop(grace=1)


async def test_waiting_job_and_cancel_while_waiting(service):
    """A job blocked on a lock is 'waiting'; canceling it ends it at once, untouched."""
    async with service.locks.acquire("test", {"cluster": LockMode.SHARED}):
        job_id = await service.submit_job([OpTagsSet(kind="cluster", tags=["t1"])])
        await _until(lambda: service.get_job(job_id).status is JobStatus.WAITING)
        assert service.get_job(job_id).ops[0].status is OpStatus.WAITING
        ok, _ = await service.cancel_job(job_id)
        assert ok
        job = await wait_job(service, job_id, timeout=3)
        assert job.status is JobStatus.CANCELED
        await _until(lambda: job_id not in service.executor.running_jobs())
    assert service.cluster().tags == []
    assert service.lock_status() == []


async def test_waiting_job_runs_when_lock_frees(service):
    async with service.locks.acquire("test", {"cluster": LockMode.SHARED}):
        job_id = await service.submit_job([OpTagsSet(kind="cluster", tags=["t1"])])
        await _until(lambda: service.get_job(job_id).status is JobStatus.WAITING)
    job = await wait_job(service, job_id)
    assert job.status is JobStatus.SUCCESS
    assert service.cluster().tags == ["t1"]


async def test_failure_is_recorded_once_with_result(service, caplog):
    caplog.set_level("INFO")
    job = await run_ops(service, OpTagsDel(kind="cluster", tags=["missing"]), OpTestDelay())
    assert job.status is JobStatus.ERROR
    assert job.ops[0].result == ["OpPrereqError", ["tag(s) not found: missing", "unknown_entity"]]
    assert job.ops[1].status is OpStatus.ERROR
    assert [e.message for e in job.all_log()] == ["error: tag(s) not found: missing"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and f"job {job.id}" in errors[0].getMessage()


async def test_bad_arguments_refused_at_submission(service):
    with pytest.raises(ParamError) as err:
        await service.submit_job([OpTestDelay(duration=-1)])
    assert "duration" in str(err.value)
    with pytest.raises(ParamError):
        await service.submit_job([])
    assert service.list_jobs() == []


async def test_dry_run_changes_nothing(service):
    job = await run_ops(service, OpTagsSet(kind="cluster", tags=["x"], dry_run=True))
    assert job.status is JobStatus.SUCCESS
    assert service.cluster().tags == []


async def test_job_submitted_by_another_process_is_picked_up(service, config):
    other = JobQueue(config)  # same store, another writer: what another process does
    job = other.submit([OpTestDelay()])
    other.close()
    assert (await wait_job(service, job.id, timeout=5)).status is JobStatus.SUCCESS


async def test_restart_recovery(config, tmp_path):
    """Jobs a dead master left behind: running a non-idempotent opcode -> error (naming the
    lost master), running an idempotent one -> run again, between opcodes -> continued,
    waiting -> queued again, queued -> run."""
    queue = JobQueue(config)
    running = queue.submit([OpTagsSet(kind="cluster", tags=["r"]), OpTestDelay()])
    queue.mark_running(running.id, 0, owner="node9:123:456")
    queue.append_log(running.id, 0, "setting tags")
    anonymous = queue.submit([OpTagsSet(kind="cluster", tags=["a"])])
    queue.mark_running(anonymous.id, 0)
    resumable = queue.submit([OpTestDelay(), OpTestDelay(duration=0.1)])
    queue.mark_running(resumable.id, 0, owner="node9:123:456")
    queue.mark_op_success(resumable.id, 0, None)
    queue.mark_running(resumable.id, 1, owner="node9:123:456")
    between = queue.submit([OpTestDelay(), OpTagsSet(kind="cluster", tags=["b"])])
    queue.mark_running(between.id, 0, owner="node9:123:456")
    queue.mark_op_success(between.id, 0, None)
    waiting = queue.submit([OpTagsSet(kind="cluster", tags=["w"])])
    queue.mark_waiting(waiting.id, 0)
    queued = queue.submit([OpTestDelay()])
    queue.close()
    first_exec = queue.get(resumable.id).ops[1].exec_timestamp

    svc = MasterService(config.store, UnusedRunner(), Paths(str(tmp_path)), watch_interval=0)
    await svc.start()
    try:
        failed = svc.get_job(running.id)
        assert failed.status is JobStatus.ERROR
        assert [op.status for op in failed.ops] == [OpStatus.ERROR, OpStatus.ERROR]
        message = lost_master_message("node9", "OP_TAGS_SET")
        assert failed.ops[0].result == ["OpExecError", [message, ErrorKind.FAULT.value]]
        assert failed.all_log()[-1].message == message
        assert "master node9 was lost" in message and "may have been applied partly" in message
        # a job whose owner is unknown gets the generic message
        unknown = svc.get_job(anonymous.id)
        assert unknown.ops[0].result == ["OpExecError", [RESTART_MESSAGE, ErrorKind.FAULT.value]]
        # the idempotent opcode runs again (once more, by the new master) and the job ends
        done = await wait_job(svc, resumable.id)
        assert done.status is JobStatus.SUCCESS
        assert done.ops[1].exec_timestamp > first_exec
        assert resumed_message("node9", "OP_TEST_DELAY") in [e.message for e in done.all_log()]
        assert (await wait_job(svc, between.id)).status is JobStatus.SUCCESS
        assert (await wait_job(svc, waiting.id)).status is JobStatus.SUCCESS
        assert (await wait_job(svc, queued.id)).status is JobStatus.SUCCESS
        assert sorted(svc.cluster().tags) == ["b", "w"]
    finally:
        await svc.stop(grace=1)


async def test_stop_interrupts_running_jobs(config, tmp_path):
    svc = MasterService(config.store, UnusedRunner(), Paths(str(tmp_path)), watch_interval=0)
    await svc.start()
    job_id = await svc.submit_job([OpTestDelay(duration=60)])
    await _until(lambda: svc.get_job(job_id).status is JobStatus.RUNNING)
    await svc.stop(grace=0.2)
    job = svc.get_job(job_id)
    assert job.status is JobStatus.ERROR
    assert job.ops[0].result[1][0] == SHUTDOWN_MESSAGE

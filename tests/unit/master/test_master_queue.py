"""The job queue: id allocation, state machine, log serials, cancel, long poll."""

from __future__ import annotations

import asyncio
import threading

import pytest

from corral.common.errors import ErrorKind, JobCanceled, JobError, ParamError
from corral.master.jobs.queue import CANCELED_RESULT, JobQueue, job_fields
from corral.objects.job import JobStatus, OpStatus
from corral.objects.opcodes import OpTestDelay


@pytest.fixture
def queue(config):
    q = JobQueue(config)
    yield q
    q.close()


def test_submit_allocates_increasing_ids(queue):
    a = queue.submit([OpTestDelay()])
    b = queue.submit([OpTestDelay(), OpTestDelay(priority=-5)])
    assert (a.id, b.id) == (1, 2)
    stored = queue.get(2)
    assert stored.status is JobStatus.QUEUED
    assert [op.status for op in stored.ops] == [OpStatus.QUEUED] * 2
    assert stored.priority == -5
    assert stored.summary == ["TEST_DELAY", "TEST_DELAY"]
    assert stored.ops[0].input["OP_ID"] == "OP_TEST_DELAY"


def test_concurrent_submitters_get_unique_ids(queue, config):
    other = JobQueue(config)
    ids: list[int] = []
    lock = threading.Lock()

    def submit(q: JobQueue) -> None:
        for _ in range(25):
            job = q.submit([OpTestDelay()])
            with lock:
                ids.append(job.id)

    threads = [threading.Thread(target=submit, args=(q,)) for q in (queue, other, queue)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert sorted(ids) == list(range(1, 76))
    assert [j.id for j in queue.list_jobs()] == list(range(1, 76))


def test_empty_job_refused(queue):
    with pytest.raises(ParamError):
        queue.submit([])


def test_unknown_job_is_not_found(queue):
    with pytest.raises(JobError) as err:
        queue.get(42)
    assert err.value.kind is ErrorKind.NOT_FOUND


def test_state_machine_and_log_serials(queue):
    job = queue.submit([OpTestDelay(), OpTestDelay()])
    queue.mark_waiting(job.id, 0)
    assert queue.get(job.id).status is JobStatus.WAITING
    queue.mark_running(job.id, 0, owner="me")
    assert queue.append_log(job.id, 0, "first") == 1
    assert queue.append_log(job.id, 0, "second") == 2
    queue.mark_op_success(job.id, 0, {"x": 1})
    current = queue.get(job.id)
    assert current.status is JobStatus.RUNNING  # more opcodes to go
    queue.mark_running(job.id, 1)
    assert queue.append_log(job.id, 1, "third") == 3  # serials are job-wide
    queue.mark_op_success(job.id, 1, None)
    done = queue.get(job.id)
    assert done.status is JobStatus.SUCCESS and done.finalized
    assert [e.serial for e in done.all_log()] == [1, 2, 3]
    assert [op.result for op in done.ops] == [{"x": 1}, None]
    assert done.owner == "me"
    assert done.start_timestamp and done.end_timestamp


def test_failure_marks_rest_as_error(queue):
    job = queue.submit([OpTestDelay(), OpTestDelay(), OpTestDelay()])
    queue.mark_running(job.id, 0)
    queue.mark_op_success(job.id, 0, None)
    queue.mark_running(job.id, 1)
    result = ["OpExecError", ["boom", "internal_error"]]
    queue.mark_failed(job.id, 1, result)
    failed = queue.get(job.id)
    assert failed.status is JobStatus.ERROR
    assert [op.status for op in failed.ops] == [OpStatus.SUCCESS, OpStatus.ERROR, OpStatus.ERROR]
    assert failed.ops[2].result == result


def test_cancel_queued_is_immediate(queue):
    job = queue.submit([OpTestDelay(), OpTestDelay()])
    ok, msg = queue.cancel(job.id)
    assert ok and "canceled" in msg
    canceled = queue.get(job.id)
    assert canceled.status is JobStatus.CANCELED
    assert [op.status for op in canceled.ops] == [OpStatus.CANCELED] * 2
    assert canceled.ops[0].result == CANCELED_RESULT
    again = queue.cancel(job.id)
    assert again[0] is False and "already finished" in again[1]
    with pytest.raises(JobCanceled):
        queue.mark_running(job.id, 0)


def test_cancel_running_becomes_canceling(queue):
    job = queue.submit([OpTestDelay(), OpTestDelay()])
    queue.mark_running(job.id, 0)
    ok, msg = queue.cancel(job.id)
    assert ok and "will be canceled" in msg
    assert queue.get(job.id).status is JobStatus.CANCELING
    assert queue.cancel_requested(job.id)
    assert queue.cancel(job.id) == (True, f"Job {job.id} is already being canceled")
    # the next cancellation point refuses to go on
    with pytest.raises(JobCanceled):
        queue.mark_running(job.id, 1)
    queue.mark_canceled(job.id)
    final = queue.get(job.id)
    assert final.status is JobStatus.CANCELED
    assert [op.status for op in final.ops] == [OpStatus.CANCELED] * 2


def test_job_fields(queue):
    job = queue.submit([OpTestDelay(duration=1)])
    queue.mark_running(job.id, 0)
    queue.append_log(job.id, 0, "hello")
    values = job_fields(
        queue.get(job.id),
        [
            "id",
            "status",
            "opstatus",
            "oplog",
            "summary",
            "received_ts",
            "end_ts",
            "priority",
            "ops",
        ],
    )
    assert values[0] == job.id and values[1] == "running" and values[2] == ["running"]
    assert values[3][0][0][0] == 1 and values[3][0][0][2] == "message"
    assert values[3][0][0][3] == "hello"
    assert values[4] == ["TEST_DELAY"]
    assert isinstance(values[5], list) and len(values[5]) == 2
    assert values[6] is None and values[7] == 0
    assert values[8][0]["duration"] == 1
    with pytest.raises(ParamError) as err:
        job_fields(queue.get(job.id), ["status", "nonsense"])
    assert "nonsense" in str(err.value)


async def test_wait_returns_at_once_without_previous_info(queue):
    job = queue.submit([OpTestDelay()])
    res = await queue.wait_for_change(job.id, ["status"], None, None, 5)
    assert res == {"job_info": ["queued"], "log_entries": []}


async def test_wait_returns_on_change(queue):
    job = queue.submit([OpTestDelay()])

    async def later() -> None:
        await asyncio.sleep(0.2)
        queue.mark_running(job.id, 0)
        queue.append_log(job.id, 0, "working")

    loop = asyncio.get_running_loop()
    start = loop.time()
    task = asyncio.create_task(later())
    res = await queue.wait_for_change(job.id, ["status"], ["queued"], 0, 10)
    await task
    assert loop.time() - start < 5
    assert res is not None and res["job_info"] == ["running"]
    # the log entry may come with this answer or the next one
    if not res["log_entries"]:
        res = await queue.wait_for_change(job.id, ["status"], ["running"], 0, 10)
        assert res is not None
    assert res["log_entries"][0][3] == "working"
    nothing_new = await queue.wait_for_change(job.id, ["status"], ["running"], 1, 0.3)
    assert nothing_new is None


async def test_wait_times_out_with_none(queue):
    job = queue.submit([OpTestDelay()])
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await queue.wait_for_change(job.id, ["status"], ["queued"], None, 0.4) is None
    assert 0.35 <= loop.time() - start < 3


async def test_wait_on_finished_job_answers_at_once(queue):
    job = queue.submit([OpTestDelay()])
    queue.cancel(job.id)
    res = await queue.wait_for_change(job.id, ["status"], ["canceled"], None, 30)
    assert res == {"job_info": ["canceled"], "log_entries": []}


async def test_wait_unknown_job(queue):
    with pytest.raises(JobError):
        await queue.wait_for_change(99, ["status"], None, None, 1)


def test_cancel_refused_when_the_running_job_has_no_cancellation_point_left(queue):
    from corral.master.service import _reaches_cancellation_point
    from corral.objects.opcodes import OpInstanceStartup

    job = queue.submit([OpTestDelay(), OpInstanceStartup(instance_name="vm1")])
    queue.mark_running(job.id, 0)
    # a running test-delay checks for cancellation; an op followed by another stops between
    assert _reaches_cancellation_point(queue.get(job.id))
    queue.mark_op_success(job.id, 0, None)
    queue.mark_running(job.id, 1)
    running_last = queue.get(job.id)
    # the last operation is an instance start: it cannot be cut short
    assert not _reaches_cancellation_point(running_last)
    ok, msg = queue.cancel(job.id, interruptible=_reaches_cancellation_point)
    assert not ok and "cannot be interrupted" in msg
    assert queue.get(job.id).status is JobStatus.RUNNING
    assert not queue.cancel_requested(job.id)

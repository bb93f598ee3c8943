"""No-op job latency and throughput through the real master.

Setup: real ``corral-noded`` + ``corral-master`` (fake hypervisor) in a temporary root. Every
job is one ``OP_TEST_DELAY`` with ``duration=0`` (runs on the master only), submitted with
:class:`~corral.client.CorralClient` over the master's UNIX socket (``POST /2/jobs``, the
local-socket-only raw-opcode submission, like Ganeti's luxi ``SubmitJob``).

(a) latency: jobs one after another. Each sample is the wall time from just before the submit
    request until the client *observes* the job ``success`` through the long poll
    ``/2/jobs/[id]/wait`` (which the server answers as soon as the job changes, so no client
    poll interval is in the figure). Reported: p50/p99 of that, of the submit request alone,
    and of the server's own ``received_ts -> end_ts``.
(b) throughput: 50 client threads, each with its own client, each submitting a job and
    waiting for it (long poll) before submitting the next, until ~1,000 jobs are done: a
    closed loop that keeps 50 jobs submitted-but-unfinished. Reported: jobs/s over the wall
    time from the first submit to the last observed end, and the per-job latency under load.

CPU seconds used by the master and by this client process during each phase are reported
too, since the 2 cores are shared: a client-bound figure would say little about the master.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench.harness import (
    MASTER,
    BenchCluster,
    ms,
    print_table,
    read_pid,
    summary,
    write_results,
)
from corral.client import FINAL_STATUSES, CorralClient

NAME = "job_latency"
DELAY_OP = {"OP_ID": "OP_TEST_DELAY", "duration": 0}
WARMUP = 20
IN_FLIGHT = 50


def submit_delay(client: CorralClient) -> int:
    """Submit one no-op job; its id.

    Raises:
        CorralError: the master refused it.
    """
    return int(client.request("POST", "/2/jobs", body={"ops": [DELAY_OP]}))


def wait_final(client: CorralClient, job_id: int) -> str:
    """Long-poll until the job reaches a final status; return it.

    Raises:
        CorralError: the API failed.
    """
    prev_info: list[Any] | None = None
    prev_serial: int | None = None
    while True:
        change = client.wait_for_job_change(job_id, ["status"], prev_info, prev_serial)
        if change is None:
            continue
        prev_info = change["job_info"]
        for entry in change["log_entries"]:
            prev_serial = max(prev_serial or 0, int(entry[0]))
        if prev_info and prev_info[0] in FINAL_STATUSES:
            return str(prev_info[0])


def _ts(value: Any) -> float:
    return float(value[0]) + float(value[1]) / 1e6


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` (0.0 if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def sequential(cluster: BenchCluster, count: int) -> dict[str, Any]:
    """Phase (a): ``count`` jobs one after another (after a short warm-up)."""
    master_pid = read_pid(cluster.paths.pid_file(MASTER)) or 0
    totals: list[float] = []
    submits: list[float] = []
    ids: list[int] = []
    with cluster.client() as client:
        for _ in range(WARMUP):
            if wait_final(client, submit_delay(client)) != "success":
                raise RuntimeError("a warm-up job did not succeed")
        cpu0, mcpu0 = _self_cpu(), proc_cpu(master_pid)
        wall0 = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            job_id = submit_delay(client)
            t1 = time.perf_counter()
            status = wait_final(client, job_id)
            t2 = time.perf_counter()
            if status != "success":
                raise RuntimeError(f"job {job_id} ended {status}: {client.job(job_id)}")
            submits.append(t1 - t0)
            totals.append(t2 - t0)
            ids.append(job_id)
        wall = time.perf_counter() - wall0
        cpu, mcpu = _self_cpu() - cpu0, proc_cpu(master_pid) - mcpu0
        wanted = set(ids)
        server = [
            _ts(j["end_ts"]) - _ts(j["received_ts"])
            for j in client.request("GET", "/2/jobs", params=[("bulk", True)])
            if int(j["id"]) in wanted
        ]
    return {
        "jobs": count,
        "warmup_jobs": WARMUP,
        "submit_to_success_s": summary(totals),
        "submit_request_s": summary(submits),
        "server_received_to_end_s": summary(server),
        "wall_s": wall,
        "client_cpu_s": cpu,
        "master_cpu_s": mcpu,
    }


def concurrent(cluster: BenchCluster, count: int, in_flight: int) -> dict[str, Any]:
    """Phase (b): ``count`` jobs with ``in_flight`` submitted-but-unfinished at all times."""
    master_pid = read_pid(cluster.paths.pid_file(MASTER)) or 0
    lock = threading.Lock()
    remaining = [count]
    latencies: list[float] = []
    errors: list[str] = []
    ends: list[float] = []
    start = threading.Barrier(in_flight + 1)

    def worker() -> None:
        try:
            with cluster.client(timeout=120.0) as client:
                client.version()  # connect before the clock starts
                start.wait()
                while True:
                    with lock:
                        if remaining[0] <= 0 or errors:
                            return
                        remaining[0] -= 1
                    t0 = time.perf_counter()
                    job_id = submit_delay(client)
                    status = wait_final(client, job_id)
                    t1 = time.perf_counter()
                    with lock:
                        latencies.append(t1 - t0)
                        ends.append(t1)
                        if status != "success":
                            errors.append(f"job {job_id} ended {status}")
        except Exception as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
            start.abort()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(in_flight)]
    for t in threads:
        t.start()
    try:
        start.wait(timeout=60)
    except threading.BrokenBarrierError:
        for t in threads:
            t.join(timeout=60)
        raise RuntimeError(f"a client thread failed to start: {errors[:1]}") from None
    cpu0, mcpu0 = _self_cpu(), proc_cpu(master_pid)
    t_start = time.perf_counter()
    for t in threads:
        t.join()
    cpu, mcpu = _self_cpu() - cpu0, proc_cpu(master_pid) - mcpu0
    if errors:
        raise RuntimeError(f"{len(errors)} job(s) failed under load; first: {errors[0]}")
    wall = max(ends) - t_start
    return {
        "jobs": len(latencies),
        "in_flight": in_flight,
        "wall_s": wall,
        "jobs_per_s": len(latencies) / wall,
        "submit_to_success_s": summary(latencies),
        "client_cpu_s": cpu,
        "master_cpu_s": mcpu,
    }


def run(quick: bool) -> dict[str, Any]:
    """Run both phases; print the table; write ``bench/results/job_latency.json``."""
    count = 100 if quick else 1000
    load_jobs = 200 if quick else 1000
    with BenchCluster.create(hypervisors=["fake"]) as cluster:
        seq = sequential(cluster, count)
        conc = concurrent(cluster, load_jobs, IN_FLIGHT)
    lat, sub, srv = (
        seq["submit_to_success_s"],
        seq["submit_request_s"],
        seq["server_received_to_end_s"],
    )
    load = conc["submit_to_success_s"]
    rows = [
        ["(a) submit -> observed success, sequential", lat["n"], ms(lat["p50"]), ms(lat["p99"]),
         ms(lat["max"])],
        ["    of which: submit request (POST /2/jobs)", sub["n"], ms(sub["p50"]), ms(sub["p99"]),
         ms(sub["max"])],
        ["    server: received_ts -> end_ts", srv["n"], ms(srv["p50"]), ms(srv["p99"]),
         ms(srv["max"])],
        [f"(b) submit -> observed success, {IN_FLIGHT} in flight", load["n"], ms(load["p50"]),
         ms(load["p99"]), ms(load["max"])],
    ]  # fmt: skip
    print_table(
        "job_latency: no-op OP_TEST_DELAY(duration=0) jobs, real master + node daemon, "
        "CorralClient over the UNIX socket, long-poll wait",
        ["measure", "N", "p50", "p99", "max"],
        rows,
    )
    print(
        f"(a) {seq['jobs']} jobs in {seq['wall_s']:.2f} s "
        f"(client CPU {seq['client_cpu_s']:.2f} s, master CPU {seq['master_cpu_s']:.2f} s)"
    )
    print(
        f"(b) throughput: {conc['jobs_per_s']:.1f} jobs/s ({conc['jobs']} jobs, "
        f"{IN_FLIGHT} in flight, {conc['wall_s']:.2f} s; client CPU {conc['client_cpu_s']:.2f} s, "
        f"master CPU {conc['master_cpu_s']:.2f} s)"
    )
    result = {"quick": quick, "sequential": seq, "concurrent": conc}
    print(f"results: {write_results(NAME, result)}")
    return result

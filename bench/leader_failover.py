"""Leader loss -> new leader executing jobs (goal: < 5 s).

Setup, all real and on loopback: a three-member etcd cluster, a cluster initialised on it
(``init_cluster(store="etcd://...")``) and three master candidates, each a ``corral-master``
in its own root with its own node certificate (signed by the cluster CA) and its own
127.0.x.y address. No node daemon is needed: the jobs are ``OP_TEST_DELAY`` (master only).
The leader lease has the default TTL (:data:`corral.master.leader.DEFAULT_TTL`).

Each round: find the leader, SIGKILL its master (t0), at once submit a no-op job through a
surviving master's API (any master stores jobs), then measure

* ``elected``: t0 -> the leader key names another node (polled every 20 ms);
* ``first job``: t0 -> the job's ``exec_timestamp`` written by the new leader's executor
  (wall clock of the same host), i.e. leader loss -> new leader executing jobs.

The killed master is started again (it rejoins as a follower) before the next round.
Reported: every round, median and max.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.harness import (
    MASTER,
    Reaper,
    _daemon_env,
    _free_port,
    print_table,
    write_results,
)
from corral.client import CorralClient
from corral.common import daemonize
from corral.common.paths import Paths
from corral.master.bootstrap import init_cluster
from corral.master.config import ClusterConfig
from corral.master.jobs.queue import JobQueue
from corral.master.leader import DEFAULT_TTL, read_leader
from corral.objects.node import Node
from corral.rpc import tls
from corral.store.url import open_store

NAME = "leader_failover"
NODES = ("node1", "node2", "node3")
DELAY_OP = {"OP_ID": "OP_TEST_DELAY", "duration": 0}


def _wait(predicate: Any, timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout}s")
        time.sleep(step)


class Setup:
    """The etcd members and the three masters of the benchmark (see the module docstring)."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="crlb-ha-", dir="/tmp")
        self.reaper = Reaper(self.root)
        self.net = f"127.0.{random.randint(1, 250)}"
        self.etcd: list[subprocess.Popen[bytes]] = []
        self.paths = {n: Paths(os.path.join(self.root, n)) for n in NODES}
        self.address = {n: f"{self.net}.{10 + i}" for i, n in enumerate(NODES)}
        self.url = ""

    def start_etcd(self) -> None:
        """Three members on ``net.2-4``; waits until they answer.

        Raises:
            RuntimeError: etcd is missing or did not start.
        """
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd is not installed (Debian package etcd-server)")
        hosts = [f"{self.net}.{2 + i}" for i in range(3)]
        peers = [_free_port(h) for h in hosts]
        clients = [_free_port(h) for h in hosts]
        initial = ",".join(
            f"e{i}=http://{h}:{p}" for i, (h, p) in enumerate(zip(hosts, peers, strict=True))
        )
        for i, host in enumerate(hosts):
            data = os.path.join(self.root, f"etcd{i}")
            argv = [
                "etcd", "--name", f"e{i}", "--data-dir", data,
                "--listen-client-urls", f"http://{host}:{clients[i]}",
                "--advertise-client-urls", f"http://{host}:{clients[i]}",
                "--listen-peer-urls", f"http://{host}:{peers[i]}",
                "--initial-advertise-peer-urls", f"http://{host}:{peers[i]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
            ]  # fmt: skip
            with open(data + ".log", "wb") as log:
                # NOTE: long-lived helper processes owned here (STYLE §5).
                proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            self.etcd.append(proc)
            self.reaper.add(proc.pid)
        self.url = "etcd://" + ",".join(f"{h}:{p}" for h, p in zip(hosts, clients, strict=True))
        store = open_store(self.url, timeout=1.0, retry_for=1.0)
        try:

            def up() -> bool:
                try:
                    store.put("/bench/ping", b"1")
                    store.delete("/bench/ping")
                    return True
                except Exception:
                    return False

            _wait(up, 30, "etcd cluster healthy", step=0.2)
        finally:
            store.close()

    def init(self) -> None:
        """The cluster on etcd with node1, then node2/node3 as master candidates."""
        first = self.paths["node1"]
        init_cluster(
            first,
            cluster_name="bench",
            node_name="node1",
            node_address=self.address["node1"],
            enabled_hypervisors=["fake"],
            rapi_port=_free_port(self.address["node1"]),
            store=self.url,
        )
        store = open_store(self.url)
        try:
            config = ClusterConfig(store)
            for node in NODES[1:]:
                paths = self.paths[node]
                paths.ensure()
                for path in (first.ca_cert, first.cluster_conf, first.rapi_cert, first.rapi_users):
                    dest = path.replace(first.root, paths.root, 1)
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    shutil.copy2(path, dest)
                tls.issue_node_cert(paths, node, [self.address[node]], ca=first)
                config.add_node(
                    Node(name=node, primary_ip=self.address[node], master_candidate=True)
                )
        finally:
            store.close()

    def start_master(self, node: str) -> None:
        paths = self.paths[node]
        log = os.path.join(paths.log_dir, f"{MASTER}.log")
        argv = [sys.executable, "-m", "corral.master.daemon", "--root", paths.root]
        argv += ["--foreground", "--log-file", log]
        pid = daemonize.start_daemon(
            argv, paths.pid_file(MASTER), log + ".out", env=_daemon_env(), name=MASTER
        )
        self.reaper.add(pid)

    def master_pid(self, node: str) -> int | None:
        return daemonize.daemon_status(self.paths[node].pid_file(MASTER), name=MASTER)

    def close(self) -> None:
        for node in NODES:
            try:
                daemonize.stop_daemon(self.paths[node].pid_file(MASTER), 10.0, name=MASTER)
            except Exception as exc:  # keep cleaning up
                print(f"stopping {node}: {exc}")
        for proc in self.etcd:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.reaper.close()
        shutil.rmtree(self.root, ignore_errors=True)


def one_round(setup: Setup, store: Any) -> dict[str, Any]:
    """Kill the leader, submit a job elsewhere, time the takeover (see module docstring)."""
    leader = read_leader(store)
    assert leader is not None
    survivor = next(n for n in NODES if n != leader.node)
    pid = setup.master_pid(leader.node)
    assert pid is not None
    with CorralClient.for_paths(setup.paths[survivor], timeout=30) as client:
        t0_wall, t0 = time.time(), time.monotonic()
        os.kill(pid, signal.SIGKILL)
        job_id = int(client.request("POST", "/2/jobs", body={"ops": [DELAY_OP]}))
    elected: list[float] = []

    def new_leader() -> bool:
        info = read_leader(store)
        if info is not None and info.node != leader.node:
            elected.append(time.monotonic() - t0)
            return True
        return False

    _wait(new_leader, 30, "a new leader")
    queue = JobQueue(ClusterConfig(store))
    try:
        _wait(lambda: queue.get(job_id).status.value == "success", 30, "the job ran", step=0.05)
        exec_ts = queue.get(job_id).ops[0].exec_timestamp or 0.0
    finally:
        queue.close()
    now = read_leader(store)
    setup.start_master(leader.node)  # back as a follower
    return {
        "killed": leader.node,
        "new_leader": now.node if now else "",
        "elected_s": round(elected[0], 3),
        "first_job_s": round(exec_ts - t0_wall, 3),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; print and write the results.

    Raises:
        RuntimeError: etcd missing, or a step did not happen in time.
    """
    rounds = 3 if quick else 7
    setup = Setup()
    try:
        setup.start_etcd()
        setup.init()
        for node in NODES:
            setup.start_master(node)
        store = open_store(setup.url, timeout=2.0, retry_for=2.0)
        try:
            _wait(lambda: read_leader(store) is not None, 20, "a first leader")
            time.sleep(1.0)
            rows = []
            for _ in range(rounds):
                rows.append(one_round(setup, store))
                time.sleep(DEFAULT_TTL + 1)  # the restarted master is a follower again
        finally:
            store.close()
    finally:
        setup.close()
    elected = [r["elected_s"] for r in rows]
    first = [r["first_job_s"] for r in rows]
    print_table(
        f"Leader loss -> new leader (lease TTL {DEFAULT_TTL} s, 3 masters, 3-member etcd)",
        ["round", "killed", "new leader", "elected (s)", "first job executed (s)"],
        [
            [
                i + 1,
                r["killed"],
                r["new_leader"],
                f"{r['elected_s']:.2f}",
                f"{r['first_job_s']:.2f}",
            ]
            for i, r in enumerate(rows)
        ],
    )
    summary = {
        "elected_median_s": round(statistics.median(elected), 3),
        "elected_max_s": round(max(elected), 3),
        "first_job_median_s": round(statistics.median(first), 3),
        "first_job_max_s": round(max(first), 3),
    }
    print(
        f"\nfirst job executed by the new leader: median {summary['first_job_median_s']:.2f} s, "
        f"max {summary['first_job_max_s']:.2f} s (goal < 5 s)"
    )
    data = {"ttl_s": DEFAULT_TTL, "rounds": rows, "summary": summary}
    write_results(NAME, data)
    return data


if __name__ == "__main__":
    run("--quick" in sys.argv)

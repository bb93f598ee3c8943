"""``cluster verify`` on 3 real node daemons, and on 200 simulated nodes.

**Real (3 nodes).** A real cluster from ``tests/integration/harness.py``: ``corral-master``
and three ``corral-noded`` (node2 and node3 joined with the real ``corral node add``), each
with its own root and 127.x address, mutual TLS; fake hypervisor; three running instances per
node (``noop`` OS, one 16 MiB ``file`` disk), made through real jobs. Measured, median of 5
after one warm-up: ``corral cluster verify`` as a subprocess (wall time, with the CLI's Python
start-up) and the verify opcode's own run time (``exec_ts`` to ``end_ts`` of the job).

**Simulated (200 nodes).** Not daemons: 200 real ``NodeBackend`` objects, each with its own
root directory (cluster files, a fake-hypervisor run dir, disk image files), served *in this
process* by a runner that sends every call through the real wire codec and call handlers
(the transport of ``tests/unit/master/master_fakes.py``: JSON encode -> handler -> decode, in
a worker thread) instead of HTTPS. 3 running instances per node (600 in all), written to the
store directly and started with the fake driver itself. A real ``MasterService`` runs the
verify job. What this measures is the master's side (locks on 800 objects, 6 x 200 calls at
once, the checks) plus the node-side work on 2 shared cores; a real cluster adds the network
and gains the nodes' own CPUs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

from bench.harness import ms, print_table, secs, summary, write_results
from corral.common.errors import CorralError
from corral.common.paths import Paths
from corral.hypervisor.fake import FakeHypervisor
from corral.master.config import ClusterConfig, PutObject, instance_key, node_key
from corral.master.ops.common import instance_spec
from corral.master.service import MasterService
from corral.node.backend import NodeBackend
from corral.node.backend.membership import cluster_files
from corral.node.handlers import CallHandlers
from corral.objects.cluster import Cluster
from corral.objects.instance import NIC, AdminState, Disk, Instance
from corral.objects.node import Node
from corral.objects.opcodes_cluster import OpClusterVerify
from corral.rpc import codec
from corral.rpc.calls import Call, Msg
from corral.store.sqlite import SqliteStore

NAME = "cluster_verify"
RUNS = 5
SIM_NODES = 200
PER_NODE = 3
STORAGE = "/srv/corral/disks"
REPO = Path(__file__).resolve().parents[1]

Req = TypeVar("Req", bound=Msg)
Resp = TypeVar("Resp", bound=Msg)


# --- simulated nodes ----------------------------------------------------------------------------


class InProcessRunner:
    """Runs node calls on in-process NodeBackends through the wire codec (no network)."""

    def __init__(self, backends: dict[str, NodeBackend]) -> None:
        self.handlers = {name: CallHandlers(b) for name, b in backends.items()}
        self.calls = 0

    async def call(
        self, node: Node, call: Call[Req, Resp], request: Req, *, timeout: float | None = None
    ) -> Resp:
        """Encode, handle in a worker thread, decode (errors come back rebuilt)."""
        self.calls += 1
        body = codec.encode_request(call, request)
        reply = await asyncio.to_thread(self.handlers[node.name].handle, call.name, body)
        answer = codec.decode_answer(call, reply.body)
        if isinstance(answer, CorralError):
            raise answer
        return answer

    async def aclose(self) -> None:
        """Nothing to release."""


def _write_files(paths: Paths, role: str) -> None:
    for path in cluster_files(paths, role):
        if path.endswith("crl.pem"):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(b"-----BEGIN CERTIFICATE-----\n" + os.path.basename(path).encode() * 40)


def _build_simulated(base: str, n_nodes: int) -> tuple[SqliteStore, dict[str, NodeBackend]]:
    names = [f"node{i:03d}" for i in range(1, n_nodes + 1)]
    master = names[0]
    roots = {n: Paths(os.path.join(base, n)) for n in names}
    cluster = Cluster(
        name="sim", master_node=master, enabled_hypervisors=["fake"], file_storage_dir=STORAGE
    )
    roots[master].ensure()
    store = SqliteStore(roots[master].store_db)
    config = ClusterConfig(store)
    changes: list[PutObject] = [PutObject("/corral/cluster", cluster, None)]
    backends = {}
    serial = 0
    for i, name in enumerate(names):
        paths = roots[name]
        paths.ensure()
        _write_files(paths, "master" if name == master else "regular")
        changes.append(
            PutObject(
                node_key(name),
                Node(
                    name=name,
                    primary_ip=f"10.0.{i // 250}.{i % 250 + 1}",
                    master_candidate=name == master,
                ),
                None,
            )
        )
        fake = FakeHypervisor.from_paths(paths)
        for _ in range(PER_NODE):
            serial += 1
            inst_name = f"inst{serial:04d}"
            disk_path = f"{STORAGE}/{inst_name}/disk0"
            inst = Instance(
                name=inst_name,
                primary_node=name,
                os="noop",
                hypervisor="fake",
                disk_template="file",
                disks=[Disk(size=16, dev_type="file", logical_id=disk_path)],
                nics=[
                    NIC(
                        mac=f"aa:00:00:{serial >> 16 & 255:02x}:{serial >> 8 & 255:02x}:"
                        f"{serial & 255:02x}"
                    )
                ],
                admin_state=AdminState.UP,
                beparams={"maxmem": 64, "minmem": 64, "vcpus": 1},
            )
            host = paths.host_path(disk_path)
            os.makedirs(os.path.dirname(host), exist_ok=True)
            with open(host, "wb") as fh:
                fh.truncate(16 * 1024 * 1024)
            fake.start(instance_spec(cluster, inst), [])
            changes.append(PutObject(instance_key(inst_name), inst, None))
        backends[name] = NodeBackend(paths, name)
    config.commit(changes)
    return store, backends


async def _verify_sim(store: SqliteStore, runner: InProcessRunner, paths: Paths) -> list[float]:
    service = MasterService(store, runner, paths, watch_interval=0)
    await service.start()
    times: list[float] = []
    try:
        for i in range(RUNS + 1):
            t0 = time.perf_counter()
            job_id = await service.submit_job([OpClusterVerify()])
            while not service.get_job(job_id).finalized:
                await service.wait_for_job_change(job_id, ["status"], None, None, 1.0)
            elapsed = time.perf_counter() - t0
            job = service.get_job(job_id)
            result = job.ops[0].result
            if not isinstance(result, dict) or not result.get("ok") or result["findings"]:
                raise RuntimeError(f"simulated verify not clean: {job.status} {result!r:.2000}")
            if i > 0:
                times.append(elapsed)
    finally:
        await service.stop(grace=5)
    return times


def run_simulated(n_nodes: int) -> dict[str, Any]:
    """Verify on ``n_nodes`` simulated nodes; timings in seconds."""
    base = tempfile.mkdtemp(prefix="corral-bench-verify-")
    try:
        t0 = time.perf_counter()
        store, backends = _build_simulated(base, n_nodes)
        setup = time.perf_counter() - t0
        runner = InProcessRunner(backends)
        master_paths = backends["node001"].paths
        try:
            times = asyncio.run(_verify_sim(store, runner, master_paths))
        finally:
            store.close()
        return {
            "nodes": n_nodes,
            "instances": n_nodes * PER_NODE,
            "setup_s": setup,
            "calls": runner.calls,
            "verify_s": summary(times),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- real daemons -------------------------------------------------------------------------------


def _ts(value: Any) -> float:
    """A Ganeti timestamp ``[sec, usec]`` (or plain seconds) as seconds."""
    if isinstance(value, list | tuple):
        return float(value[0]) + float(value[1]) / 1e6
    return float(value)


def run_real(runs: int) -> dict[str, Any]:
    """Verify on 3 real node daemons (see the module docstring)."""
    sys.path.insert(0, str(REPO))
    from tests.integration.harness import LocalCluster

    base = Path(tempfile.mkdtemp(prefix="corral-bench-verify3-"))
    cluster = LocalCluster(base / "node1", hypervisors=["fake"], cluster_name="benchverify")
    try:
        cluster.add_node("node2")
        cluster.add_node("node3")
        for node in ("node1", "node2", "node3"):
            for k in range(PER_NODE):
                cluster.corral("instance", "add", "-t", "file", "--disk", "0:size=16M",
                               "-o", "noop", "-H", "fake", "-n", node, f"{node}-vm{k}")  # fmt: skip
        cli: list[float] = []
        op: list[float] = []
        findings: list[str] = []
        for i in range(runs + 1):
            t0 = time.perf_counter()
            proc = cluster.run("corral", "cluster", "verify", check=False)
            elapsed = time.perf_counter() - t0
            findings = proc.stdout.splitlines()[:-1]
            job = cluster.corral_json("job", "list", "-o", "id,start_ts,end_ts")[-1]
            if i == 0:
                continue
            cli.append(elapsed)
            if job.get("start_ts") and job.get("end_ts"):
                op.append(_ts(job["end_ts"]) - _ts(job["start_ts"]))
        return {
            "nodes": 3,
            "instances": 3 * PER_NODE,
            "findings": findings,
            "cli_s": summary(cli),
            "op_s": summary(op) if op else None,
        }
    finally:
        cluster.close(show_logs=False)
        shutil.rmtree(base, ignore_errors=True)


def run(quick: bool) -> dict[str, Any]:
    """Both measurements; prints the table, writes ``bench/results/cluster_verify.json``."""
    runs = 2 if quick else RUNS
    real = run_real(runs)
    sim = run_simulated(20 if quick else SIM_NODES)
    rows = [
        [
            "3 real node daemons (mTLS, 9 instances)",
            secs(real["cli_s"]["p50"]),
            ms(real["op_s"]["p50"]) if real["op_s"] else "n/a",
        ],
        [
            f"{sim['nodes']} simulated nodes in-process ({sim['instances']} instances)",
            "-",
            ms(sim["verify_s"]["p50"]),
        ],
    ]
    print_table(
        "cluster verify (median)", ["cluster", "corral cluster verify (CLI)", "verify job"], rows
    )
    print(
        "simulated = NodeBackend objects with their own roots, called in this process through "
        "the wire codec (no network, no daemons); "
        f"{sim['calls']} calls; min/max {ms(sim['verify_s']['min'])}/{ms(sim['verify_s']['max'])}"
    )
    if real["findings"]:
        print(f"NOTE: the real cluster's verify reported: {real['findings']}")
    data = {
        "real": real,
        "simulated": sim,
        "simulated_note": "in-process NodeBackends through the wire codec, no daemons",
        "cpu_count": os.cpu_count(),
    }
    write_results(NAME, data)
    return data


if __name__ == "__main__":
    run("--quick" in sys.argv)

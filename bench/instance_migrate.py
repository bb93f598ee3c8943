"""``corral instance migrate`` end to end against the node-level migration it drives.

Setup: a real two-node cluster on this machine (``tests/integration/harness.py``: node1 with
the master, node2 added with the real ``corral node add``), each node daemon in its own root
on its own 127.x address. The guest is a busybox OS instance on a ``sharedfile`` disk (256 MiB,
in one directory both nodes reach), no NIC, 128 MiB, 1 vCPU (TCG where KVM is not usable),
idle after boot.

Per round, four migrations of the same running guest, the order of the two pairs alternating:

* **cli**: ``corral instance migrate NAME`` as a separate process (python start, API request
  over the master's socket, the job: locks, prerequisite RPCs, hooks, the migration RPCs, the
  store write; the CLI follows the job until it ended) — there and back;
* **node**: the node-level RPC sequence exactly as bench/migration.py times it (RpcClient with
  the cluster's certificates: migration_info, accept_instance, migrate_instance,
  migration_status long poll, finalize on the destination, then on the source) — there and
  back, which leaves the guest where the configuration says.

Figures (medians): **cli** and **node** totals, **job** = the job's own end_ts - start_ts (the
operation without the CLI process and the submission), and the ratios cli/node and job/node
(goal: ``instance migrate`` <= 1.2x the node-level time).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import print_table, secs, summary, write_results
from bench.migration import MIGRATE_TIMEOUT
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceSpec, MigrationStatus
from corral.master.config import ClusterConfig
from corral.master.ops.common import disk_refs, instance_spec
from corral.rpc import calls
from corral.rpc.client import NodeAddress, RpcClient
from corral.store.sqlite import SqliteStore

NAME = "instance_migrate"
GUEST = "bm1"
MEMORY = 128


def _spec(paths: Paths) -> tuple[InstanceSpec, list[calls.DiskRef]]:
    store = SqliteStore(paths.store_db)
    try:
        config = ClusterConfig(store)
        inst = config.instance(GUEST)
        return instance_spec(config.cluster(), inst), disk_refs(inst)
    finally:
        store.close()


async def node_level(
    caller: Paths,
    src: NodeAddress,
    dst: NodeAddress,
    spec: InstanceSpec,
    disks: list[calls.DiskRef],
) -> float:
    """One migration through the node RPCs (timed as bench/migration.py does)."""
    async with RpcClient.from_paths(caller) as client:
        port = int(spec.hvparams.get("migration_port") or 8102)
        t0 = time.perf_counter()
        info = await client.call(
            src, calls.MIGRATION_INFO, calls.MigrationInfoRequest(name=GUEST, hypervisor="kvm")
        )
        await client.call(
            dst,
            calls.ACCEPT_INSTANCE,
            calls.AcceptInstanceRequest(
                instance=spec, disks=disks, info=info.info, listen_host=dst.host, port=port
            ),
        )
        await client.call(
            src,
            calls.MIGRATE_INSTANCE,
            calls.MigrateInstanceRequest(
                name=GUEST, hypervisor="kvm", target_host=dst.host, port=port, live=True
            ),
        )
        status = MigrationStatus(status="active")
        deadline = time.monotonic() + MIGRATE_TIMEOUT
        while status.status not in ("completed", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"migration did not finish: {status}")
            status = (
                await client.call(
                    src,
                    calls.MIGRATION_STATUS,
                    calls.MigrationStatusRequest(name=GUEST, hypervisor="kvm", wait=30),
                )
            ).status
        if status.status != "completed":
            raise RuntimeError(f"migration {status.status}: {status.error}")
        await client.call(
            dst,
            calls.FINALIZE_MIGRATION_DST,
            calls.FinalizeMigrationDstRequest(instance=spec, success=True),
        )
        await client.call(
            src,
            calls.FINALIZE_MIGRATION_SRC,
            calls.FinalizeMigrationSrcRequest(name=GUEST, hypervisor="kvm", success=True),
        )
        return time.perf_counter() - t0


def _cli_migrate(c: Any, target: str) -> tuple[float, float]:
    """(wall time of ``corral instance migrate``, the job's own start..end)."""
    from corral.client import CorralClient

    t0 = time.perf_counter()
    c.corral("instance", "migrate", "--target-node", target, GUEST)
    wall = time.perf_counter() - t0
    with CorralClient.for_paths(c.paths) as client:
        job = client.job(max(client.job_ids()))

    def ts(v: Any) -> float:
        return float(v[0]) + float(v[1]) / 1e6

    return wall, ts(job["end_ts"]) - ts(job["start_ts"])


def run(quick: bool) -> dict[str, Any]:
    """Run the benchmark (2 rounds with ``quick``, else 5); print and write the results."""
    from tests.integration.harness import LocalCluster

    rounds = 2 if quick else 5
    base = tempfile.mkdtemp(prefix="crlbm", dir="/tmp")
    shared = os.path.join(base, "shared")
    os.makedirs(shared)
    c = LocalCluster(
        Path(base) / "node1",
        hypervisors=["kvm"],
        cluster_name="bench",
        init_options={
            "shared_file_storage_dir": shared,
            "enabled_disk_templates": ["sharedfile", "file", "diskless"],
        },
    )
    cli: list[float] = []
    job: list[float] = []
    node: list[float] = []
    try:
        n2 = c.add_node("node2")
        c.corral(
            "instance", "add", "-t", "sharedfile", "--disk", "0:size=256M", "--no-nics",
            "-o", "busybox", "-B", f"maxmem={MEMORY}M,minmem={MEMORY}M,vcpus=1",
            "-n", "node1", GUEST,
        )  # fmt: skip
        c.register_guests()
        c.wait_serial(GUEST, rf"CORRAL-GUEST-UP {GUEST}", timeout=180)
        spec, disks = _spec(c.paths)
        a1 = NodeAddress(name="node1", host=c.host, port=c.noded_port)
        a2 = NodeAddress(name="node2", host=n2.host, port=n2.port)
        # warm-up, not timed: the node daemons load the KVM driver, the CLI its modules
        c.corral("instance", "migrate", "--target-node", "node2", GUEST)
        c.corral("instance", "migrate", "--target-node", "node1", GUEST)
        for r in range(rounds):
            for side in ("cli", "node") if r % 2 == 0 else ("node", "cli"):
                if side == "cli":
                    for target in ("node2", "node1"):
                        wall, took = _cli_migrate(c, target)
                        cli.append(wall)
                        job.append(took)
                else:
                    node.append(asyncio.run(node_level(c.paths, a1, a2, spec, disks)))
                    node.append(asyncio.run(node_level(c.paths, a2, a1, spec, disks)))
    finally:
        for handle in c.nodes.values():
            for pid in handle.guest_pids().values():
                with_kill(pid)
        c.close(show_logs=False)
        shutil.rmtree(base, ignore_errors=True)
    s_cli, s_job, s_node = summary(cli), summary(job), summary(node)
    result = {
        "quick": quick,
        "memory_mib": MEMORY,
        "samples": len(cli),
        "cli": s_cli,
        "job": s_job,
        "node": s_node,
        "ratio_cli": s_cli["p50"] / s_node["p50"],
        "ratio_job": s_job["p50"] / s_node["p50"],
    }
    print_table(
        f"instance migrate vs node-level migration, {MEMORY} MiB guest, medians of {len(cli)}",
        ["measure", "p50", "p90", "ratio to node-level"],
        [
            ["corral instance migrate (CLI)", secs(s_cli["p50"]), secs(s_cli["p90"]),
             f"{result['ratio_cli']:.2f}"],
            ["the job (start..end)", secs(s_job["p50"]), secs(s_job["p90"]),
             f"{result['ratio_job']:.2f}"],
            ["node-level RPCs", secs(s_node["p50"]), secs(s_node["p90"]), "1.00"],
        ],
    )  # fmt: skip
    print(f"results: {write_results(NAME, result)}")
    return result


def with_kill(pid: int) -> None:
    """SIGKILL a leftover QEMU of this benchmark (by pid; it may be gone already)."""
    try:
        if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, 9)
    except OSError:
        pass


if __name__ == "__main__":
    run(quick=bool(os.environ.get("QUICK")))

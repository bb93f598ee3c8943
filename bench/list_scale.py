"""Listing many instances: ``corral instance list`` and RAPI ``GET /2/instances?bulk=1``.

Setup: real ``corral-noded`` + ``corral-master`` (fake hypervisor) in a temporary root. One
instance (``i00000``: ``noop`` OS, one 64 MiB ``file`` disk, one NIC, running) is created and
started through real jobs; the others are **written directly into the store** as copies of it
(new name, UUIDs, disk path and MAC) through :class:`corral.master.config.ClusterConfig`, with
the master stopped, and each gets the fake driver's "running" state file through the driver
itself (:meth:`FakeHypervisor.start`). Why: creating 10,000 instances through jobs takes far
longer than the measurement and measures job throughput, which ``job_latency`` covers; what
is measured here is only listing. Every instance is running (the most work for a list: live
state comes from the node daemon for each of them).

Measured, median of 5 runs after one warm-up, at 1,000 and 10,000 instances:

* CLI: ``corral instance list`` as a subprocess (default table output to a pipe), wall time
  including the CLI's Python start-up; the output is checked to have one row per instance.
* the CLI's own API request alone (``PUT /2/query/instance`` with the default list fields,
  through :class:`~corral.client.CorralClient` on the UNIX socket), to split the CLI's time
  between the master and the client side;
* RAPI: ``GET /2/instances?bulk=1`` over HTTPS (CA-verified) with Basic auth as ``admin``
  (password from the file ``init_cluster`` wrote), a new connection per run (TLS handshake
  included), until the whole body is received; the JSON is then checked (not timed).
"""

from __future__ import annotations

import re
import time
from typing import Any

from bench.harness import (
    MASTER,
    BenchCluster,
    ms,
    print_table,
    summary,
    write_results,
)
from corral.api.fields import INSTANCE_LIST_DEFAULT
from corral.hypervisor.fake import FakeHypervisor
from corral.master.bootstrap import open_store, store_url
from corral.master.config import ClusterConfig, PutObject, instance_key
from corral.master.ops.common import instance_spec
from corral.objects.base import new_uuid
from corral.objects.instance import Instance

NAME = "list_scale"
RUNS = 5
BATCH = 500
TEMPLATE = "i00000"
ROW = re.compile(r"(?:^|\s)i\d{5}\s")


def _name(i: int) -> str:
    return f"i{i:05d}"


def _mac(prefix: str, i: int) -> str:
    # NOTE: the template's MAC was generated from the same prefix at random; these count
    # down from the top of the range so they never collide with it in practice.
    n = 0xFFFFFF - i
    return f"{prefix}:{n >> 16:02x}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"


def _clone(template: Instance, name: str, mac: str) -> Instance:
    inst = template.model_copy(deep=True)
    inst.name = name
    inst.uuid = new_uuid()
    for idx, disk in enumerate(inst.disks):
        disk.uuid = new_uuid()
        disk.logical_id = disk.logical_id.replace(f"/{template.name}/", f"/{name}/")
        assert disk.logical_id.endswith(f"/{name}/disk{idx}"), disk.logical_id
    for nic in inst.nics:
        nic.uuid = new_uuid()
        nic.mac = mac
    return inst


def create_template(cluster: BenchCluster) -> None:
    """Create and start ``i00000`` through real jobs.

    Raises:
        RuntimeError: the job did not succeed.
    """
    spec = {
        "mode": "create",
        "name": TEMPLATE,
        "disk_template": "file",
        "disks": [{"size": 64}],
        "nics": [{}],
        "os": "noop",
        "hypervisor": "fake",
        "start": True,
    }
    with cluster.client() as client:
        status = cluster.wait_job(client, client.create_instance(spec))
    if status != "success":
        raise RuntimeError(f"creating {TEMPLATE} ended {status}")


def populate(cluster: BenchCluster, first: int, last: int) -> float:
    """Add instances ``first`` .. ``last - 1`` directly (master stopped); the seconds it took."""
    t0 = time.perf_counter()
    cluster.stop_daemon(MASTER)
    paths = cluster.paths
    store = open_store(store_url(paths.store_db))
    try:
        cfg = ClusterConfig(store)
        cl = cfg.cluster()
        template = cfg.instance(TEMPLATE)
        fake = FakeHypervisor.from_paths(paths)
        for start in range(first, last, BATCH):
            batch = [
                _clone(template, _name(i), _mac(cl.mac_prefix, i))
                for i in range(start, min(last, start + BATCH))
            ]
            cfg.commit([PutObject(instance_key(i.name), i, 0) for i in batch])
            for inst in batch:
                fake.start(instance_spec(cl, inst), [])
    finally:
        store.close()
    cluster.start_daemon(MASTER)
    return time.perf_counter() - t0


def _check_cli(stdout: str, count: int) -> None:
    rows = [line for line in stdout.splitlines() if ROW.search(line)]
    running = sum("running" in line for line in rows)
    if len(rows) != count or running != count:
        raise RuntimeError(
            f"corral instance list showed {len(rows)} instance rows ({running} running), "
            f"expected {count}"
        )


def measure(cluster: BenchCluster, count: int) -> dict[str, Any]:
    """Time both listings ``RUNS`` times (after one warm-up of each)."""
    cli: list[float] = []
    rapi: list[float] = []
    query: list[float] = []
    body_bytes = 0
    for i in range(RUNS + 1):
        t0 = time.perf_counter()
        out = cluster.cli("instance", "list", timeout=600)
        t1 = time.perf_counter()
        _check_cli(out.stdout, count)
        with cluster.rapi_http(timeout=600) as http:
            t2 = time.perf_counter()
            resp = http.get("/2/instances", params={"bulk": 1})
            t3 = time.perf_counter()
        resp.raise_for_status()
        body_bytes = len(resp.content)
        listed = resp.json()
        if len(listed) != count or any(x["status"] != "running" for x in listed):
            raise RuntimeError(f"RAPI listed {len(listed)} instances, expected {count} running")
        with cluster.client(timeout=600) as client:
            t4 = time.perf_counter()
            answer = client.query("instance", INSTANCE_LIST_DEFAULT)
            t5 = time.perf_counter()
        if len(answer["data"]) != count:
            raise RuntimeError(f"the query answered {len(answer['data'])} rows, expected {count}")
        if i == 0:
            continue  # warm-up
        cli.append(t1 - t0)
        rapi.append(t3 - t2)
        query.append(t5 - t4)
    return {
        "instances": count,
        "cli_instance_list_s": summary(cli),
        "rapi_bulk_s": summary(rapi),
        "cli_query_request_s": summary(query),
        "rapi_body_bytes": body_bytes,
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure at each size; print the table; write ``bench/results/list_scale.json``."""
    sizes = [1000] if quick else [1000, 10000]
    levels: list[dict[str, Any]] = []
    with BenchCluster.create(hypervisors=["fake"]) as cluster:
        create_template(cluster)
        have = 1
        for size in sizes:
            populate_s = populate(cluster, have, size)
            have = size
            print(f"  populated {size} instances (directly in the store) in {populate_s:.1f} s")
            level = measure(cluster, size)
            level["populate_s"] = populate_s
            levels.append(level)
    rows = []
    for lv in levels:
        for label, key in (
            ("corral instance list (CLI, table)", "cli_instance_list_s"),
            ("  its API request alone (PUT /2/query/instance)", "cli_query_request_s"),
            ("GET /2/instances?bulk=1 (RAPI, HTTPS)", "rapi_bulk_s"),
        ):
            s = lv[key]
            rows.append([f"{lv['instances']:>6}", label, s["n"], ms(s["p50"]), ms(s["min"]),
                         ms(s["max"])])  # fmt: skip
    print_table(
        "list_scale: fake hypervisor, every instance running; instances written directly to "
        "the store (not through jobs: 10,000 creations would measure jobs, not listing)",
        ["instances", "measure", "N", "median", "min", "max"],
        rows,
    )
    result = {
        "quick": quick,
        "population": "written directly to the store via ClusterConfig (master stopped) "
        "as copies of one instance created by a real job, plus fake-driver state files "
        "(FakeHypervisor.start); not through jobs",
        "levels": levels,
    }
    print(f"results: {write_results(NAME, result)}")
    return result

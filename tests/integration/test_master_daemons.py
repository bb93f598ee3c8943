"""A single-host cluster of real daemons: ``init_cluster``, ``corral-noded``, ``corral-master``.

Everything is real: certificates from ``init_cluster``, mutual-TLS RPC between the master and
the node daemon on a 127.0.0.x address, the API over the root-only UNIX socket and over HTTPS
with the generated admin password, the fake hypervisor (a product feature) and file disks.
The master is killed with SIGKILL in the middle of a job and restarted: the job must end in
``error`` saying the master restarted, and the store must be consistent.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from corral.common.paths import Paths
from corral.master.bootstrap import admin_password_file, init_cluster, load_cluster_conf
from corral.master.config import ClusterConfig
from corral.master.jobs.executor import resumed_message
from corral.master.jobs.queue import JobQueue
from corral.objects.job import JobStatus
from corral.objects.opcodes import OpTestDelay
from corral.store.sqlite import SqliteStore

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child before exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _install_os(paths: Paths) -> None:
    osdir = os.path.join(paths.os_search_path[0], "itestos")
    os.makedirs(osdir, exist_ok=True)
    with open(os.path.join(osdir, "ganeti_api_version"), "w") as fh:
        fh.write("20\n")
    with open(os.path.join(osdir, "parameters.list"), "w") as fh:
        fh.write("")
    for script in ("create", "export", "import", "rename", "verify"):
        path = os.path.join(osdir, script)
        with open(path, "w") as fh:
            fh.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


class Cluster:
    """The daemons of one test cluster; every process is killed at the end."""

    def __init__(self, root: str) -> None:
        self.paths = Paths(root)
        self.address = f"127.0.0.{random.randint(20, 250)}"
        self.noded_port = _free_port(self.address)
        self.rapi_port = _free_port(self.address)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = dict(os.environ, PYTHONPATH=SRC)

    def init(self) -> None:
        init_cluster(
            self.paths,
            cluster_name="itest",
            node_name="node1",
            node_address=self.address,
            enabled_hypervisors=["fake"],
            file_storage_dir=self.paths.file_storage_dir,
            rapi_port=self.rapi_port,
            rapi_bind=self.address,
            noded_port=self.noded_port,
        )
        _install_os(self.paths)

    def _spawn(self, name: str, module: str, *args: str) -> None:
        log = os.path.join(self.paths.log_dir, f"{name}.log")
        argv = [
            sys.executable,
            "-m",
            module,
            "--root",
            self.paths.root,
            "--foreground",
            "--log-file",
            log,
            *args,
        ]
        with open(log + ".stderr", "ab") as err:
            self.procs[name] = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_die_with_parent,
            )

    def start_noded(self) -> None:
        self._spawn("noded", "corral.node.daemon", "--port", str(self.noded_port))
        self._wait_pid("corral-noded", "noded")

    def start_master(self) -> None:
        self._spawn("master", "corral.master.daemon")
        self._wait_pid("corral-master", "master")

    def _wait_pid(self, daemon: str, name: str, timeout: float = 30) -> None:
        pid_file = self.paths.pid_file(daemon)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{daemon} exited with {proc.returncode}:\n{self.logs(name)}")
            try:
                with open(pid_file) as fh:
                    if int(fh.read().strip()) == proc.pid:
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"{daemon} did not start:\n{self.logs(name)}")

    def logs(self, name: str) -> str:
        out = []
        for suffix in ("", ".stderr"):
            path = os.path.join(self.paths.log_dir, f"{name}.log{suffix}")
            if os.path.exists(path):
                with open(path, errors="replace") as fh:
                    out.append(fh.read()[-4000:])
        return "\n".join(out)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop_all(self) -> None:
        for name in ("master", "noded"):
            self.kill(name, signal.SIGTERM)

    def local(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=self.paths.master_socket)
        return httpx.Client(transport=transport, base_url="http://localhost", timeout=30)

    def rapi(self) -> httpx.Client:
        with open(admin_password_file(self.paths)) as fh:
            password = fh.read().strip()
        return httpx.Client(
            base_url=f"https://{self.address}:{self.rapi_port}",
            verify=ssl.create_default_context(cafile=self.paths.ca_cert),
            auth=("admin", password),
            timeout=30,
        )


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    c = Cluster(str(tmp_path / "root"))
    try:
        c.init()
        c.start_noded()
        c.start_master()
        yield c
    finally:
        c.stop_all()
        for name in ("master", "noded"):
            if name in c.procs and c.procs[name].returncode not in (0, None, -9):
                print(f"--- {name} log ---\n{c.logs(name)}")


def _wait_job(client: httpx.Client, job_id: Any, timeout: float = 30) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get(f"/2/jobs/{job_id}").json()
        if job["status"] in ("success", "error", "canceled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def _job_status(paths: Paths, job_id: int) -> JobStatus:
    store = SqliteStore(paths.store_db)
    try:
        return JobQueue(ClusterConfig(store)).get(job_id).status
    finally:
        store.close()


@pytest.mark.slow
def test_cluster_of_real_daemons_survives_master_kill(cluster: Cluster):
    paths = cluster.paths
    conf = load_cluster_conf(paths)
    assert conf.store == f"sqlite://{paths.store_db}"
    assert stat.S_IMODE(os.stat(paths.master_socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(admin_password_file(paths)).st_mode) == 0o600
    with open(paths.rapi_users) as fh:
        assert "admin {HA1}" in fh.read()

    with cluster.local() as api:
        info = api.get("/2/info").json()
        assert info["name"] == "itest"
        body = {
            "__version__": 1,
            "mode": "create",
            "name": "vm1",
            "disk_template": "file",
            "disks": [{"size": 32}],
            "nics": [],
            "os": "itestos",
            "hypervisor": "fake",
            "beparams": {"memory": 128},
            "start": True,
        }
        resp = api.post("/2/instances", json=body)
        assert resp.status_code == 200, resp.text
        job = _wait_job(api, resp.json())
        assert job["status"] == "success", job
        assert job["opresult"] == [["node1"]]
        assert os.path.exists(os.path.join(paths.file_storage_dir, "vm1", "disk0"))

    # the RAPI over HTTPS with the generated admin password
    with cluster.rapi() as rapi:
        assert rapi.get("/version").json() == 2
        assert [int(j["id"]) for j in rapi.get("/2/jobs").json()] == [1]
        ctx = ssl.create_default_context(cafile=paths.ca_cert)
        with httpx.Client(base_url=str(rapi.base_url), verify=ctx) as anon:
            assert anon.put("/2/instances/vm1/shutdown").status_code == 401

    # a long job, submitted by another process straight into the store (as a second API
    # process would); the master's executor picks it up
    store = SqliteStore(paths.store_db)
    try:
        queue = JobQueue(ClusterConfig(store))
        delay_id = queue.submit([OpTestDelay(duration=120)]).id
        queue.close()
    finally:
        store.close()
    end = time.monotonic() + 20
    while _job_status(paths, delay_id) is not JobStatus.RUNNING:
        assert time.monotonic() < end, "the delay job never started"
        time.sleep(0.1)

    cluster.kill("master", signal.SIGKILL)
    assert _job_status(paths, delay_id) is JobStatus.RUNNING  # what the dead master left
    cluster.start_master()

    with cluster.local() as api:
        # OP_TEST_DELAY is idempotent: the restarted master runs it again (a non-idempotent
        # opcode would be failed with lost_master_message, see tests/unit/master and
        # tests/integration/test_ha_masters.py)
        job = api.get(f"/2/jobs/{delay_id}").json()
        assert job["status"] in ("queued", "running"), job
        assert any(resumed_message("node1", "OP_TEST_DELAY") in e[3] for e in job["oplog"][0])
        assert api.delete(f"/2/jobs/{delay_id}").status_code == 200
        assert _wait_job(api, delay_id)["status"] == "canceled"
        # the state is intact and the new master works
        assert [i["id"] for i in api.get("/2/instances").json()] == ["vm1"]
        resp = api.put("/2/instances/vm1/shutdown")
        assert resp.status_code == 200, resp.text
        assert _wait_job(api, resp.json())["status"] == "success"
        inst = api.get("/2/instances/vm1").json()
        assert (inst["admin_state"], inst["status"]) == ("down", "ADMIN_down"), json.dumps(inst)

    # SIGTERM: a clean stop that removes the socket and the pid file
    cluster.kill("master", signal.SIGTERM)
    assert cluster.procs["master"].returncode == 0, cluster.logs("master")
    assert not os.path.exists(paths.master_socket)
    assert not os.path.exists(paths.pid_file("corral-master"))

"""Three master candidates on a three-member etcd: leader loss, takeover, failover, fencing.

Everything is real: the cluster is initialised on etcd (``init_cluster(store=etcd://...)``),
node2 and node3 join with the real ``corral node add --master-candidate yes`` (harness
``add_node``), and each node root runs its own ``corral-master`` (plus ``corral-noded``) on
its own 127.x address. The leader is killed with SIGKILL or frozen with SIGSTOP. The master IP
lives in one network namespace per node (created here), set up by Ganeti's external
``master-ip-setup`` script of each node (``ip -n <netns> address add|del``), so "the IP
follows the leader" means: present in the leader's namespace, absent in the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client.client import CorralClient
from corral.common import daemonize
from corral.common.paths import Paths
from corral.master.config import ClusterConfig
from corral.master.jobs.executor import lost_master_message
from corral.master.jobs.queue import JobQueue
from corral.master.leader import read_leader
from corral.objects.job import Job
from corral.store.base import Store
from corral.store.url import open_store
from tests.conftest import require_root, require_tool
from tests.integration.etcd_cluster import EtcdCluster
from tests.integration.harness import NOOP_OS, LocalCluster

MASTER = "corral-master"
MIP = "10.252.{}.{}"


def _until(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start


class HaCluster:
    """node1 (initialised on etcd) + node2, node3 as master candidates, a master on each."""

    def __init__(self, root: Path, etcd: EtcdCluster) -> None:
        self.etcd = etcd
        self.local = LocalCluster(
            root / "node1",
            hypervisors=["fake"],
            cluster_name="ha",
            init_options={"store": etcd.store_url()},
        )
        self.roots: dict[str, Paths] = {"node1": self.local.paths}
        self.envs: dict[str, dict[str, str]] = {"node1": self.local.env}
        self.netns: dict[str, str] = {}
        self.store: Store = open_store(etcd.store_url(), timeout=2.0, retry_for=2.0)

    def add_candidates(self, *names: str) -> None:
        for name in names:
            handle = self.local.add_node(name, master_candidate=True)
            self.roots[name] = handle.paths
            self.envs[name] = handle.env

    # --- masters --------------------------------------------------------------------------

    def start_master(self, node: str) -> None:
        argv = [sys.executable, "-m", "corral.master.daemon", "--root", self.roots[node].root]
        proc = subprocess.run(
            argv, env=self.envs[node], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, f"{node}: {proc.stdout}\n{proc.stderr}"

    def master_pid(self, node: str) -> int | None:
        return daemonize.daemon_status(self.roots[node].pid_file(MASTER), name=MASTER)

    def signal_master(self, node: str, sig: int) -> None:
        pid = self.master_pid(node)
        assert pid is not None, f"no master runs on {node}"
        os.kill(pid, sig)

    def leader(self) -> str | None:
        info = read_leader(self.store)
        return info.node if info else None

    def wait_leader(self, timeout: float = 10, *, not_: str | None = None) -> str:
        found: list[str] = []

        def check() -> bool:
            node = self.leader()
            if node is not None and node != not_:
                found.append(node)
                return True
            return False

        _until(check, timeout, "a leader")
        return found[-1]

    def client(self, node: str) -> CorralClient:
        return CorralClient.for_paths(self.roots[node], timeout=30)

    def submit(self, node: str, *ops: dict[str, Any]) -> int:
        """Submit raw opcodes on ``node``'s master (any master's API accepts jobs)."""
        with self.client(node) as client:
            return int(client.request("POST", "/2/jobs", body={"ops": list(ops)}))

    def job(self, job_id: int) -> dict[str, Any]:
        for node in self.roots:
            if self.master_pid(node) is not None:
                with contextlib.suppress(Exception), self.client(node) as client:
                    result: dict[str, Any] = client.job(job_id)
                    return result
        raise AssertionError("no master answers")

    def wait_job(self, job_id: int, timeout: float = 30) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def done() -> bool:
            last.update(self.job(job_id))
            return last.get("status") in ("success", "error", "canceled")

        _until(done, timeout, f"job {job_id} finished")
        return last

    def stored_job(self, job_id: int) -> Job:
        """The job as stored (all timestamps)."""
        return JobQueue(ClusterConfig(self.store)).get(job_id)

    def master_log(self, node: str) -> str:
        path = os.path.join(self.roots[node].log_dir, f"{MASTER}.log")
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return ""

    # --- master IP in per-node network namespaces -------------------------------------------

    def setup_master_ip(self) -> str:
        """A netns with a device ``mip0`` per node, the external setup script and a hook
        recording its environment in each root; returns the master IP."""
        tag = uuid.uuid4().hex[:6]
        ip = MIP.format(int(tag[:2], 16), int(tag[2:4], 16) % 250 + 2)
        for node, paths in self.roots.items():
            ns = f"corral-test-{tag}-{node}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self.netns[node] = ns
            subprocess.run(
                ["ip", "-n", ns, "link", "add", "mip0", "type", "veth", "peer", "name", "mip0p"],
                check=True,
            )
            subprocess.run(["ip", "-n", ns, "link", "set", "mip0", "up"], check=True)
            script = Path(paths.root, "etc/ganeti/scripts/master-ip-setup")
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(
                "#!/bin/sh\nset -e\n"
                'case "$1" in start) verb=add;; stop) verb=del;; *) exit 2;; esac\n'
                f'ip -n {ns} address $verb "$MASTER_IP/$MASTER_NETMASK" dev "$MASTER_NETDEV"\n'
            )
            script.chmod(0o755)
            hook = Path(paths.root, "etc/ganeti/hooks/master-ip-turnup-post.d/record")
            hook.parent.mkdir(parents=True, exist_ok=True)
            hook.write_text(f"#!/bin/sh\nenv | grep ^GANETI_ | sort > {hook.parent}/env\n")
            hook.chmod(0o755)

        def change(cluster: Any) -> None:
            cluster.master_ip = ip
            cluster.master_netdev = "mip0"
            cluster.master_netmask = 32
            cluster.use_external_mip_script = True

        ClusterConfig(self.store).modify_cluster(change)
        return ip

    def ip_holders(self, ip: str) -> list[str]:
        holders = []
        for node, ns in self.netns.items():
            out = subprocess.run(
                ["ip", "-n", ns, "-o", "address", "show", "dev", "mip0"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            if f" {ip}/" in out:
                holders.append(node)
        return holders

    # --- teardown ---------------------------------------------------------------------------

    def close(self, *, show_logs: bool) -> None:
        try:
            for node, paths in self.roots.items():
                pid = self.master_pid(node)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                if node != "node1":
                    daemonize.stop_daemon(paths.pid_file(MASTER), 20, name=MASTER)
            if show_logs:
                for node in self.roots:
                    if node != "node1":
                        print(f"--- {node} {MASTER}.log ---\n{self.master_log(node)[-4000:]}")
            self.local.close(show_logs=show_logs)
        finally:
            self.store.close()
            for ns in self.netns.values():
                subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def ha(
    tmp_path: Path, etcd_cluster: EtcdCluster, request: pytest.FixtureRequest
) -> Iterator[HaCluster]:
    if not os.path.isdir(NOOP_OS):
        require_tool("ganeti-os-noop-missing")
    cluster = HaCluster(tmp_path, etcd_cluster)
    try:
        _until(lambda: cluster.leader() == "node1", 10, "node1 leads")
        cluster.add_candidates("node2", "node3")
        cluster.start_master("node2")
        cluster.start_master("node3")
        yield cluster
    finally:
        rep = getattr(request.node, "rep_call", None)
        cluster.close(show_logs=bool(rep is not None and rep.failed))


def _slow_os(paths: Paths, seconds: int) -> Path:
    """An OS definition whose create script takes ``seconds`` and counts its runs."""
    os_dir = Path(paths.root, "srv/ganeti/os/slowos")
    os_dir.mkdir(parents=True)
    (os_dir / "ganeti_api_version").write_text("20\n")
    (os_dir / "parameters.list").write_text("")
    runs = os_dir / "runs"
    for script in ("create", "import", "export", "rename", "verify"):
        body = "#!/bin/sh\n"
        if script == "create":
            body += f'echo "$INSTANCE_NAME" >> {runs}\nsleep {seconds}\n'
        (os_dir / script).write_text(body + "exit 0\n")
        (os_dir / script).chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP)
    return runs


def _log_messages(job: dict[str, Any]) -> list[str]:
    return [entry[3] for op_log in job["oplog"] for entry in op_log]


def test_leader_killed_mid_job(ha: HaCluster) -> None:
    """SIGKILL of the leader while an idempotent and a non-idempotent job run: a new leader
    within 5 s, the first job resumed and finished, the second failed naming node1, the OS
    create script run exactly once, and a job submitted meanwhile is not lost."""
    runs = _slow_os(ha.roots["node1"], 8)
    delay = ha.submit("node2", {"OP_ID": "OP_TEST_DELAY", "duration": 4.0})
    create = ha.submit(
        "node3",
        {
            "OP_ID": "OP_INSTANCE_CREATE",
            "instance_name": "vm1",
            "disk_template": "diskless",
            "disks": [],
            "nics": [],
            "os_type": "slowos",
            "hypervisor": "fake",
            "pnode": "node1",
            "start": False,
            "name_check": False,
            "ip_check": False,
        },
    )
    _until(lambda: runs.exists(), 20, "the OS create script started")
    _until(lambda: ha.job(delay)["status"] == "running", 10, "the delay job runs")
    before = {j: ha.stored_job(j) for j in (delay, create)}
    assert all(job.status.value == "running" for job in before.values()), before

    ha.signal_master("node1", signal.SIGKILL)
    killed = time.monotonic()
    queued = ha.submit("node2", {"OP_ID": "OP_TEST_DELAY", "duration": 0.0})
    new = ha.wait_leader(10, not_="node1")
    took = time.monotonic() - killed
    assert new in ("node2", "node3")
    assert took < 5, f"new leader after {took:.1f}s"

    done = ha.wait_job(delay)
    assert done["status"] == "success", done
    messages = _log_messages(done)
    assert any("resumed after master node1 was lost" in m for m in messages), messages
    # re-run by the new leader: its execution started after the kill
    assert ha.stored_job(delay).ops[0].exec_timestamp > before[delay].ops[0].exec_timestamp

    failed = ha.wait_job(create)
    assert failed["status"] == "error", failed
    message = lost_master_message("node1", "OP_INSTANCE_CREATE")
    assert failed["opresult"][0][1][0] == message
    assert "may have been applied partly" in message
    # never started again: the execution start is the lost master's
    assert ha.stored_job(create).ops[0].exec_timestamp == before[create].ops[0].exec_timestamp
    assert ha.wait_job(queued)["status"] == "success"
    time.sleep(9)  # the OS script of the lost job finishes on node1; nobody starts it again
    assert runs.read_text().split() == ["vm1"]
    assert ClusterConfig(ha.store).cluster().master_node == new
    for node in ("node2", "node3"):  # every remaining master names the new one
        out = subprocess.run(
            ["gnt-cluster", "getmaster"], env=ha.envs[node], capture_output=True, text=True
        )
        assert out.stdout.strip() == new, out.stderr


def test_master_failover_moves_leader_and_ip(ha: HaCluster) -> None:
    require_root()
    require_tool("ip")
    ip = ha.setup_master_ip()
    # the master IP settings apply from the next leadership term on
    same = ha.local.run("corral", "cluster", "master-failover", check=False)  # node1 leads
    assert same.returncode != 0 and "already the master" in same.stdout + same.stderr

    out = subprocess.run(
        ["corral", "cluster", "master-failover"],
        env=ha.envs["node2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert ha.leader() == "node2"
    _until(lambda: ha.ip_holders(ip) == ["node2"], 10, "the master IP on node2 only")
    env_file = Path(ha.roots["node2"].root, "etc/ganeti/hooks/master-ip-turnup-post.d/env")
    recorded = env_file.read_text()
    assert f"GANETI_MASTER_IP={ip}" in recorded and "GANETI_MASTER_NETDEV=mip0" in recorded
    assert "GANETI_HOOKS_PHASE=POST" in recorded and "GANETI_CLUSTER_IP_VERSION=4" in recorded

    out = subprocess.run(
        ["gnt-cluster", "master-failover"],
        env=ha.envs["node3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert ha.leader() == "node3"
    _until(lambda: ha.ip_holders(ip) == ["node3"], 10, "the master IP moved to node3")
    info = json.loads(
        subprocess.run(
            ["corral", "--output", "json", "cluster", "info"],
            env=ha.envs["node1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["master"] == "node3"
    # jobs run on the new leader
    assert ha.wait_job(ha.submit("node1", {"OP_ID": "OP_TEST_DELAY"}))["status"] == "success"


def test_master_failover_refused_on_a_regular_node(ha: HaCluster) -> None:
    handle = ha.local.add_node("node4", master_candidate=False)
    out = subprocess.run(
        ["corral", "cluster", "master-failover"],
        env=handle.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "node4 is not a master candidate" in out.stdout + out.stderr
    assert ha.leader() == "node1"


def test_deposed_leader_cannot_write(ha: HaCluster) -> None:
    """SIGSTOP the leader past its lease while it runs a job, then SIGCONT it: it finds
    itself deposed and writes nothing; the new leader finished the job."""
    job_id = ha.submit("node2", {"OP_ID": "OP_TEST_DELAY", "duration": 2.0})
    _until(lambda: ha.job(job_id)["status"] == "running", 10, "the job runs")
    ha.signal_master("node1", signal.SIGSTOP)
    new = ha.wait_leader(10, not_="node1")
    done = ha.wait_job(job_id)
    assert done["status"] == "success"
    assert any("resumed after master node1 was lost" in m for m in _log_messages(done))
    key = f"/corral/jobs/{job_id:010d}"
    kv_before = ha.store.get(key)
    cluster_before = ha.store.get("/corral/cluster")
    time.sleep(1.0)  # node1's 2 s delay is long over: on resume it tries to record success
    ha.signal_master("node1", signal.SIGCONT)
    _until(lambda: "not the leader" in ha.master_log("node1"), 10, "node1 notices")
    time.sleep(2.0)
    kv_after = ha.store.get(key)
    assert kv_before is not None and kv_after is not None
    assert kv_after.mod_revision == kv_before.mod_revision  # node1 wrote nothing
    assert ha.store.get("/corral/cluster").mod_revision == cluster_before.mod_revision  # type: ignore[union-attr]
    assert ha.leader() == new
    # node1 serves the API as a follower and its jobs go to the leader
    assert ha.wait_job(ha.submit("node1", {"OP_ID": "OP_TEST_DELAY"}))["status"] == "success"

"""Clusters on etcd: ``cluster init --store etcd://`` and moving a SQLite cluster onto etcd.

Nothing is faked: real single-host clusters in temporary roots (tests/integration/harness.py)
with real ``corral-noded``/``corral-master`` daemons, the ``fake`` hypervisor (a product
feature: it runs no guest), diskless instances with Debian's ``noop`` OS, and a real
three-member etcd cluster on loopback (tests/integration/etcd_cluster.py). Commands run as
separate ``corral`` processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.client.client import CorralClient
from corral.common.errors import StoreError
from corral.master.bootstrap import load_cluster_conf
from corral.master.storemove import move_store
from corral.objects.cluster import Cluster
from corral.store.base import Put
from corral.store.sqlite import SqliteStore
from corral.store.url import open_store
from tests.conftest import unavailable
from tests.integration.etcd_cluster import EtcdCluster
from tests.integration.harness import NOOP_OS, VENV_BIN, LocalCluster, free_port

pytestmark = pytest.mark.slow

ADD = ["-t", "diskless", "--no-nics", "-o", "noop", "-H", "fake"]
#: Keys the master daemon rewrites when it starts (leadership, its own node/cluster record).
VOLATILE = ("/corral/leader", "/corral/cluster", "/corral/nodes/")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    if not os.path.isdir(NOOP_OS):
        unavailable(f"missing {NOOP_OS} (Debian package ganeti-os-noop)")
    c = LocalCluster(tmp_path / "node1", hypervisors=["fake"], cluster_name="movetest")
    try:
        yield c
    finally:
        c.close(show_logs=True)


def populate(c: LocalCluster) -> None:
    """Two instances (one running), tags on one and on the cluster, a failed job."""
    c.corral("instance", "add", *ADD, "vm1")
    c.corral("instance", "add", *ADD, "--no-start", "vm2")
    c.corral("instance", "add-tags", "vm1", "web", "prod")
    c.run("gnt-cluster", "add-tags", "site:a", check=False)
    bad = c.corral("instance", "add", *ADD, "vm1", check=False)  # an error job too
    assert bad.returncode == 1


def instances(c: LocalCluster) -> dict[str, tuple[str, str]]:
    out = c.run(
        "gnt-instance", "list", "--no-headers", "--separator=|", "-o", "name,status,tags"
    ).stdout
    return {n: (s, t) for n, s, t in (line.split("|") for line in out.splitlines())}


def jobs(c: LocalCluster) -> list[tuple[int, str, str]]:
    out = c.run("gnt-job", "list", "--no-headers", "--separator=|", "-o", "id,status,summary")
    rows = [line.split("|") for line in out.stdout.splitlines()]
    return sorted((int(i), s, m) for i, s, m in rows)


def sqlite_keys(path: str) -> dict[str, bytes]:
    store = SqliteStore(path)
    try:
        return {kv.key: kv.value for kv in store.range("")}
    finally:
        store.close()


def daemons_running(c: LocalCluster) -> dict[str, object]:
    status: dict[str, object] = json.loads(c.corral("--output", "json", "daemons", "status").stdout)
    return status


def test_move_keeps_everything_and_the_cluster_works_on_etcd(
    cluster: LocalCluster, etcd_cluster: EtcdCluster
) -> None:
    c = cluster
    populate(c)
    before_instances = instances(c)
    before_jobs = jobs(c)
    assert before_instances["vm1"][0] == "running" and "prod" in before_instances["vm1"][1]
    assert any(status == "error" for _, status, _ in before_jobs)
    url = etcd_cluster.store_url()

    out = c.corral("cluster", "move-store", url)
    match = re.search(r"kept as (\S+)", out.stdout)
    assert match, out.stdout
    backup = match.group(1)
    assert backup.startswith(c.paths.store_db + ".pre-etcd-")
    assert os.path.exists(backup) and not os.path.exists(c.paths.store_db)
    assert load_cluster_conf(c.paths).store == url
    assert all(daemons_running(c).values())  # the master was restarted, on etcd

    # every key of the SQLite backup is in etcd with the same value
    old = sqlite_keys(backup)
    new = etcd_cluster.keys("/")
    for key, value in old.items():
        if key.startswith(VOLATILE):
            assert key in new or key.startswith("/corral/leader"), key
        else:
            assert new.get(key) == value, key
    assert instances(c) == before_instances
    assert jobs(c) == before_jobs

    # new work goes to etcd and job ids continue
    add = c.run("gnt-instance", "add", *ADD, "--print-jobid", "vm3")
    job_id = int(add.stdout.splitlines()[0])
    assert job_id == before_jobs[-1][0] + 1
    assert instances(c)["vm3"][0] == "running"
    assert "/corral/instances/vm3" in etcd_cluster.keys("/corral/instances/")
    assert "/corral/instances/vm3" not in sqlite_keys(backup)

    # a second move is refused: the cluster is on etcd already
    again = c.corral("cluster", "move-store", url, check=False)
    assert again.returncode == 1 and "already etcd" in again.stderr


def test_move_refusals_change_nothing(
    cluster: LocalCluster, make_etcd_cluster: object, etcd_cluster: EtcdCluster
) -> None:
    c = cluster
    populate(c)
    before = instances(c)
    conf_before = Path(c.paths.cluster_conf).read_text()

    def unchanged() -> None:
        assert Path(c.paths.cluster_conf).read_text() == conf_before
        assert os.path.exists(c.paths.store_db)
        assert all(daemons_running(c).values())
        assert instances(c) == before

    # unreachable etcd
    dead = f"etcd://127.0.0.1:{free_port('127.0.0.1')}"
    res = c.corral("cluster", "move-store", dead, check=False)
    assert res.returncode == 1 and "cannot" in res.stderr and "nothing was changed" in res.stderr
    unchanged()

    # an etcd that holds another cluster
    other = open_store(etcd_cluster.store_url())
    other.put(
        "/corral/cluster",
        Cluster(name="othercl", master_node="x", enabled_hypervisors=["fake"])
        .model_dump_json()
        .encode(),
    )
    other.put("/corral/instances/theirs", b"{}")
    res = c.corral("cluster", "move-store", etcd_cluster.store_url(), check=False)
    assert res.returncode == 1
    assert "already holds cluster 'othercl'" in res.stderr, res.stderr
    unchanged()
    assert set(etcd_cluster.keys("/")) == {"/corral/cluster", "/corral/instances/theirs"}
    other.close()

    # a job that is still running
    client = CorralClient(socket_path=c.paths.master_socket)
    try:
        job = client.request(
            "POST", "/2/jobs", body={"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 20}]}
        )
        empty = make_etcd_cluster()  # type: ignore[operator]
        res = c.corral("cluster", "move-store", empty.store_url(), check=False)
        assert res.returncode == 1 and "not finished" in res.stderr and str(job) in res.stderr
        assert empty.keys("/") == {}
        client.cancel_job(int(job))
    finally:
        client.close()
    unchanged()


def test_failure_in_the_middle_removes_the_copy(
    cluster: LocalCluster, make_etcd_cluster: object
) -> None:
    """One key is larger than the etcd's request limit (set small on purpose): the copy fails
    after several transactions went through; they are deleted and the cluster stays on SQLite."""
    c = cluster
    populate(c)
    etcd: EtcdCluster = make_etcd_cluster(max_request_bytes=32 * 1024)  # type: ignore[operator]
    c.corral("daemons", "stop")
    store = SqliteStore(c.paths.store_db)
    store.txn([], [Put("/corral/zz-bulk/blob", b"x" * (128 * 1024))])  # sorts last
    store.close()
    keys_before = sqlite_keys(c.paths.store_db)
    conf_before = Path(c.paths.cluster_conf).read_text()
    messages: list[str] = []
    with pytest.raises(StoreError) as err:
        move_store(c.paths, etcd.store_url(), max_ops=3, progress=messages.append)
    assert "transactions" in messages[0] and int(messages[0].split()[-2]) > 3
    text = str(err.value)
    assert "too large" in text, text
    assert err.value.fields["copied"] > 0
    assert "were deleted from etcd" in text and "stays on SQLite" in text
    assert etcd.keys("/") == {}
    assert Path(c.paths.cluster_conf).read_text() == conf_before
    assert sqlite_keys(c.paths.store_db) == keys_before
    # the cluster runs on as before
    store = SqliteStore(c.paths.store_db)
    store.delete("/corral/zz-bulk/blob")
    store.close()
    c.corral("daemons", "start")
    assert set(instances(c)) == {"vm1", "vm2"}


def _corral(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["corral", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_init_on_etcd_then_add_an_instance(tmp_path: Path, etcd_cluster: EtcdCluster) -> None:
    if not os.path.isdir(NOOP_OS):
        unavailable(f"missing {NOOP_OS} (Debian package ganeti-os-noop)")
    from corral.cli.daemons import stop_daemons
    from corral.common.paths import Paths

    def root(name: str) -> tuple[Paths, dict[str, str], list[str]]:
        paths = Paths(str(tmp_path / name))
        os.makedirs(os.path.join(paths.root, "srv/ganeti/os"))
        os.symlink(NOOP_OS, os.path.join(paths.root, "srv/ganeti/os/noop"))
        env = {
            **os.environ,
            "CORRAL_ROOT": paths.root,
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        }
        host = f"127.{os.getpid() % 200 + 1}.{len(name)}.{7 + len(name)}"
        argv = ["--enabled-hypervisors", "fake", "--node-name", "node1", "--node-address", host]
        argv += ["--rapi-port", str(free_port(host)), "--noded-port", str(free_port(host))]
        argv += ["--file-storage-dir", "/srv/corral/disks"]
        return paths, env, argv

    url = etcd_cluster.store_url()
    paths, env, argv = root("a")
    init = _corral(env, "cluster", "init", "etcdcl", *argv, "--store", url, "--no-start")
    assert init.returncode == 0, init.stderr
    assert f"Cluster state in {url}" in init.stdout
    assert load_cluster_conf(paths).store == url
    assert not os.path.exists(paths.store_db)
    assert "/corral/cluster" in etcd_cluster.keys("/")
    try:
        start = _corral(env, "daemons", "start")
        assert start.returncode == 0, start.stderr
        add = _corral(env, "instance", "add", *ADD, "vm1")
        assert add.returncode == 0, add.stdout + add.stderr
        listed = _corral(env, "instance", "list", "--no-headers", "-o", "name,status")
        assert listed.stdout.split() == ["vm1", "running"], listed.stdout
        assert "/corral/instances/vm1" in etcd_cluster.keys("/corral/instances/")
    finally:
        stop_daemons(paths)
    # destroying it removes its keys from etcd too
    gone = _corral(env, "cluster", "destroy", "--yes-do-it", "--force")
    assert gone.returncode == 0, gone.stderr
    assert etcd_cluster.keys("/corral/") == {}
    assert not os.path.exists(paths.cluster_conf)
    # so the etcd can take a new cluster
    init = _corral(env, "cluster", "init", "etcdcl", *argv, "--store", url, "--no-start")
    assert init.returncode == 0, init.stderr

    # a second cluster on the same etcd is refused, naming the first; nothing is left behind
    paths_b, env_b, argv_b = root("b")
    again = _corral(env_b, "cluster", "init", "second", *argv_b, "--store", url, "--no-start")
    assert again.returncode == 1
    assert "already holds cluster 'etcdcl'" in again.stderr, again.stderr
    assert not os.path.exists(paths_b.cluster_conf) and not os.path.exists(paths_b.ca_cert)
    gnt = subprocess.run(
        ["gnt-cluster", "init", *argv_b, "--store", url, "second"],
        env=env_b, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert gnt.returncode == 1 and "already holds cluster 'etcdcl'" in gnt.stderr, gnt.stderr

    # an unreachable etcd: a clear error, no files
    paths_c, env_c, argv_c = root("c")
    dead = f"etcd://127.0.0.1:{free_port('127.0.0.1')}"
    res = _corral(env_c, "cluster", "init", "third", *argv_c, "--store", dead, "--no-start")
    assert res.returncode == 1 and "cannot use etcd" in res.stderr, res.stderr
    assert not os.path.exists(paths_c.cluster_conf) and not os.path.exists(paths_c.ca_cert)
    bad = _corral(env_c, "cluster", "init", "third", *argv_c, "--store", "etcd://nohost")
    assert bad.returncode == 1 and "store" in bad.stderr
    assert not os.path.exists(paths_c.cluster_conf)

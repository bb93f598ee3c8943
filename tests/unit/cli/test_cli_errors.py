"""Error reporting: a failed job's error once, a missing RAPI password, no cluster under the root,
and ``cluster destroy`` refusing before it stops anything.

Real: the parsers, the actions, CorralClient, the HTTP API; for ``cluster destroy`` the real
bootstrap and store in a temporary root. FAKE (see conftest): the master behind the API in the
job tests; it logs a failing opcode as ``Failure: <message>`` where the real master logs
``error: <message>`` (both forms are covered).
"""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from corral.cli import cluster as cluster_cmds
from corral.cli import gnt
from corral.cli.common import Cli
from corral.cli.main import app
from corral.cli.progress import _LogPrinter
from corral.common import daemonize
from corral.common.errors import ErrorKind, OpError
from corral.common.paths import Paths
from corral.master.bootstrap import init_cluster, open_store, store_url
from corral.master.config import ClusterConfig
from corral.objects.instance import Instance

ADD = ["add", "-t", "file", "-s", "1G", "-o", "busybox", "vm1"]


@pytest.fixture(autouse=True)
def _no_ambient_api(monkeypatch):
    for var in ("CORRAL_API_URL", "CORRAL_USER", "CORRAL_PASSWORD", "CORRAL_ROOT"):
        monkeypatch.delenv(var, raising=False)


# --- a failed job's error is printed once ----------------------------------------------------


def test_gnt_failed_job_prints_failure_once(gnt_run, master):
    master.add_instance("vm1")
    code, out, err = gnt_run(gnt.gnt_instance, *ADD)
    assert code == 1
    assert out.rstrip().endswith("INSTANCE_CREATE(vm1) started")  # the job log is kept
    assert "already exists" not in out
    assert err == "Failure: instance vm1 already exists\n"


def test_corral_failed_job_prints_error_once(run, master):
    master.add_instance("vm1")
    r = run("instance", *ADD)
    assert r.exit_code == 1
    assert r.output.count("instance vm1 already exists") == 1, r.output
    assert r.output.rstrip().endswith("error: instance vm1 already exists")
    assert "INSTANCE_CREATE(vm1) started" in r.output


def test_log_printer_drops_only_the_repeated_final_error():
    shown = []
    printer = _LogPrinter(lambda e: shown.append(e[3]))
    for msg in ("rolled back: disk 0", "error: no space left", "retrying", "error: boom"):
        printer([0, [0, 0], "message", msg])
    printer.finish("boom")
    assert shown == ["rolled back: disk 0", "error: no space left", "retrying"]
    shown.clear()
    printer([0, [0, 0], "message", "error: something else"])
    printer.finish("boom")  # not a repetition: kept
    assert shown == ["error: something else"]
    shown.clear()
    printer([0, [0, 0], "message", "Failure: boom"])
    printer.finish(None)  # the job succeeded after all: kept
    assert shown == ["Failure: boom"]


# --- the RAPI password ---------------------------------------------------------------------------


def test_missing_password_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("CORRAL_PASSWORD", raising=False)
    runner = CliRunner()
    # port 9 (discard) on loopback: nothing is contacted before the password check
    args = ["--root", str(tmp_path), "--api-url", "http://127.0.0.1:9", "--user", "admin"]
    r = runner.invoke(app, [*args, "instance", "list"], env={"CORRAL_PASSWORD": ""})
    assert r.exit_code == 1
    assert "no password given for the RAPI user 'admin' (--user): put it in $CORRAL_PASSWORD" in (
        r.output
    )
    assert "wrong user or password" not in r.output
    assert f"{tmp_path}/var/lib/corral/rapi/admin-password" in r.output
    # with a password, the command goes on (and here finds nothing listening)
    r = runner.invoke(app, [*args, "instance", "list"], env={"CORRAL_PASSWORD": "pw"})
    assert r.exit_code == 1 and "cannot connect to the Corral API" in r.output


def test_gnt_missing_password_is_named(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CORRAL_ROOT", str(tmp_path))
    monkeypatch.setenv("CORRAL_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CORRAL_USER", "ops")
    monkeypatch.delenv("CORRAL_PASSWORD", raising=False)
    assert gnt.gnt_instance(["list"]) == 1
    err = capsys.readouterr().err
    assert "no password given for the RAPI user 'ops' ($CORRAL_USER)" in err


# --- no cluster under the root -------------------------------------------------------------------


def test_no_cluster_under_root(tmp_path):
    r = CliRunner().invoke(app, ["--root", str(tmp_path), "instance", "list"])
    assert r.exit_code == 1
    assert f"error: no cluster is initialised under {tmp_path} (run 'corral cluster init'" in (
        r.output
    )
    assert "is corral-master running" not in r.output
    # a cluster whose master does not run: the usual hint
    paths = Paths(str(tmp_path))
    os.makedirs(os.path.dirname(paths.cluster_conf))
    with open(paths.cluster_conf, "w") as fh:
        fh.write("{}")
    r = CliRunner().invoke(app, ["--root", str(tmp_path), "instance", "list"])
    assert r.exit_code == 1 and "is corral-master running?" in r.output


# --- cluster destroy ----------------------------------------------------------------------------


def _cluster_with_instance(root) -> Paths:
    """A real cluster's files in ``root`` (no daemons) with one instance in its store."""
    paths = Paths(str(root))
    paths.ensure()
    init_cluster(paths, cluster_name="c1", node_name="node1", node_address="127.0.0.1",
                 enabled_hypervisors=["fake"], admin_password="pw")  # fmt: skip
    store = open_store(store_url(paths.store_db))
    try:
        inst = Instance(
            name="db1", primary_node="node1", os="noop", hypervisor="fake", disk_template="diskless"
        )
        ClusterConfig(store).add_instance(inst)
    finally:
        store.close()
    return paths


def test_destroy_with_instances_refuses_before_stopping_anything(tmp_path, monkeypatch):
    paths = _cluster_with_instance(tmp_path / "root")
    stopped = []
    monkeypatch.setattr(cluster_cmds, "stop_daemons", lambda *a, **kw: stopped.append(a))
    runner = CliRunner()
    r = runner.invoke(app, ["--root", paths.root, "cluster", "destroy", "--yes-do-it"])
    assert r.exit_code == 1
    assert "there are still 1 instance(s) in the cluster (db1)" in r.output
    assert "pass --force" in r.output and "nothing was changed" in r.output
    assert stopped == [] and os.path.exists(paths.cluster_conf)
    r = runner.invoke(app, ["--root", paths.root, "cluster", "destroy", "--yes-do-it", "--force"])
    assert r.exit_code == 0, r.output
    assert "Cluster destroyed" in r.output and stopped
    assert not os.path.exists(paths.cluster_conf)


def test_destroy_asks_the_running_master(tmp_path, master, client_factory, monkeypatch):
    """With the master running, its answer counts (FAKE master; its pid is faked as running)."""
    paths = Paths(str(tmp_path))
    master.add_instance("vm1")
    master.add_instance("vm2")
    stopped = []
    monkeypatch.setattr(cluster_cmds, "stop_daemons", lambda *a, **kw: stopped.append(a))
    monkeypatch.setattr(daemonize, "daemon_status", lambda pid_file, name=None: 4242)
    cli = Cli(paths=paths, client_factory=client_factory, ganeti=True)
    with pytest.raises(OpError) as exc:
        cluster_cmds.cluster_destroy(cli, yes_do_it=True)
    assert exc.value.kind is ErrorKind.WRONG_STATE
    assert "there are still 2 instance(s) in the cluster (vm1, vm2)" in str(exc.value)
    assert "'corral cluster destroy --yes-do-it --force'" in str(exc.value)
    assert stopped == []

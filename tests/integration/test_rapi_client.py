"""Acceptance: Debian's Ganeti RAPI client drives a running Corral.

Nothing here is fake: a cluster is initialised in a temporary root on a 127.0.0.x address, the
real ``corral-noded`` and ``corral-master`` run as daemons (with the ``fake`` hypervisor, a
product feature, and Debian's ``noop`` OS definition), and Debian's ``python3-ganeti-rapi``
client library — code nobody on this project wrote — runs under Debian's ``/usr/bin/python3``
against the RAPI over HTTPS. The daemons are stopped (by pid file) even when the test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from tests.conftest import unavailable
from tests.integration.harness import LocalCluster

DEBIAN_PYTHON = "/usr/bin/python3"
NOOP_OS = "/usr/share/ganeti/os/noop"
ADMIN_PASSWORD = "s3cret-admin"
RO_PASSWORD = "ro-pass"

pytestmark = pytest.mark.slow


def _need_ganeti_client() -> None:
    ok = (
        os.path.exists(DEBIAN_PYTHON)
        and subprocess.run(
            [DEBIAN_PYTHON, "-c", "from ganeti.rapi import client"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    missing = [] if ok else ["python3-ganeti-rapi (for /usr/bin/python3)"]
    if not os.path.isdir(NOOP_OS):
        missing.append("ganeti-os-noop")
    if missing:
        unavailable(f"missing: {', '.join(missing)}")


@pytest.fixture
def corral_cluster(tmp_path):
    """A one-node cluster with running daemons; yields (paths, host, rapi_port)."""
    _need_ganeti_client()
    c = LocalCluster(
        tmp_path / "root",
        hypervisors=["fake"],
        admin_password=ADMIN_PASSWORD,
        cluster_name="rapi-test",
    )
    with open(c.paths.rapi_users, "a", encoding="utf-8") as fh:
        fh.write(f"ro {RO_PASSWORD} read\n")
    try:
        yield c.paths, c.host, c.rapi_port
    finally:
        c.close(show_logs=True)


SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from ganeti.rapi import client

    host, port, admin_pw, ro_pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    out = {}

    def err_code(fn, *args, **kw):
        try:
            fn(*args, **kw)
        except client.GanetiApiError as err:
            return [err.code, str(err)]
        return None

    def wait(c, job):
        ok = c.WaitForJobCompletion(job, period=0.2, retries=600)
        st = c.GetJobStatus(job)
        return {"ok": ok, "status": st["status"], "opresult": st["opresult"],
                "oplog": st["oplog"], "summary": st["summary"]}

    c = client.GanetiRapiClient(host, port=port, username="admin", password=admin_pw)
    out["version"] = c.GetVersion()
    out["features"] = c.GetFeatures()
    out["info"] = c.GetInfo()
    out["oses"] = c.GetOperatingSystems()
    out["nodes"] = c.GetNodes()
    out["nodes_bulk"] = c.GetNodes(bulk=True)

    job = c.CreateInstance("create", "vm1", "file", [{"size": 64}], [], os="noop",
                           hypervisor="fake", beparams={"memory": 128, "vcpus": 1},
                           start=False)
    out["create_job"] = job
    out["create"] = wait(c, job)
    out["instances"] = c.GetInstances()
    out["after_create"] = c.GetInstance("vm1")

    out["startup"] = wait(c, c.StartupInstance("vm1"))
    out["running"] = c.GetInstance("vm1")
    out["instances_bulk"] = c.GetInstances(bulk=True)
    out["info_job"] = wait(c, c.GetInstanceInfo("vm1"))

    # follow a shutdown with the long poll, as Ganeti's own CLI does
    job = c.ShutdownInstance("vm1")
    prev_info, prev_serial, log, rounds = None, None, [], 0
    while rounds < 100:
        rounds += 1
        change = c.WaitForJobChange(job, ["status"], prev_info, prev_serial)
        if change is None:
            continue
        prev_info = change["job_info"]
        for entry in change["log_entries"]:
            prev_serial = entry[0]
            log.append(entry)
        if prev_info[0] in ("success", "error", "canceled"):
            break
    out["shutdown_wait"] = {"final": prev_info, "log": log}
    out["stopped"] = c.GetInstance("vm1")
    out["cancel_finished"] = c.CancelJob(job)
    out["jobs"] = c.GetJobs()
    out["jobs_bulk"] = c.GetJobs(bulk=True)

    bad = client.GanetiRapiClient(host, port=port, username="admin", password="wrong")
    out["wrong_password"] = err_code(bad.StartupInstance, "vm1")
    ro = client.GanetiRapiClient(host, port=port, username="ro", password=ro_pw)
    out["ro_read"] = ro.GetInstances()
    out["ro_write"] = err_code(ro.StartupInstance, "vm1")
    out["ro_create"] = err_code(ro.CreateInstance, "create", "vm2", "file", [{"size": 64}],
                                [], os="noop")
    out["bad_create"] = err_code(c.CreateInstance, "create", "vm2", "file",
                                 [{"size": 64}], [], os="noop", frobnicate=1)

    out["delete"] = wait(c, c.DeleteInstance("vm1"))
    out["instances_end"] = c.GetInstances()
    out["gone"] = err_code(c.GetInstance, "vm1")
    print(json.dumps(out))
    """
)


def test_ganeti_rapi_client_drives_corral(corral_cluster, tmp_path):
    _paths, host, port = corral_cluster
    script = tmp_path / "drive.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [DEBIAN_PYTHON, str(script), host, str(port), ADMIN_PASSWORD, RO_PASSWORD],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, f"client script failed:\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    assert out["version"] == 2
    assert "instance-create-reqv1" in out["features"]
    assert out["info"]["name"] == "rapi-test" and out["info"]["master"] == "node1"
    assert out["info"]["enabled_hypervisors"] == ["fake"]
    assert "noop" in out["oses"]
    assert out["nodes"] == ["node1"]
    (node,) = out["nodes_bulk"]
    assert node["name"] == "node1" and node["role"] == "M" and node["pip"] == host
    assert node["mtotal"] and node["mtotal"] > 0

    assert isinstance(out["create_job"], int | str)
    assert out["create"]["ok"] is True, out["create"]
    assert out["create"]["summary"] == ["INSTANCE_CREATE(vm1)"]
    assert out["instances"] == ["vm1"]
    created = out["after_create"]
    assert created["name"] == "vm1" and created["os"] == "noop" and created["pnode"] == "node1"
    assert created["disk.sizes"] == [64] and created["disk_template"] == "file"
    assert created["status"] == "ADMIN_down" and created["admin_state"] == "down"

    assert out["startup"]["ok"] is True, out["startup"]
    running = out["running"]
    assert running["status"] == "running" and running["oper_state"] is True
    assert running["oper_ram"] == 128
    assert [i["name"] for i in out["instances_bulk"]] == ["vm1"]
    assert out["info_job"]["ok"] is True, out["info_job"]
    assert "vm1" in out["info_job"]["opresult"][0]

    assert out["shutdown_wait"]["final"] == ["success"], out["shutdown_wait"]
    serials = [e[0] for e in out["shutdown_wait"]["log"]]
    assert serials == sorted(serials)
    assert out["stopped"]["status"] == "ADMIN_down"
    assert out["cancel_finished"][0] is False and isinstance(out["cancel_finished"][1], str)
    assert len(out["jobs"]) >= 4 and all(isinstance(j, int) for j in out["jobs"])
    assert {j["status"] for j in out["jobs_bulk"]} <= {"success", "error", "canceled"}

    assert out["wrong_password"][0] == 401, out["wrong_password"]
    assert out["ro_read"] == ["vm1"]
    assert out["ro_write"][0] == 403, out["ro_write"]
    assert out["ro_create"][0] == 403, out["ro_create"]
    assert out["bad_create"][0] == 400 and "frobnicate" in out["bad_create"][1]

    assert out["delete"]["ok"] is True, out["delete"]
    assert out["instances_end"] == []
    assert out["gone"][0] == 404

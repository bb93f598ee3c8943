"""RAPI v2 routes against the in-memory fake master (tests/fakes/master_service.py: FAKE).

What is real here: the FastAPI app, its routing, body/query parsing, auth and error mapping,
the opcodes built from requests (validated by the real opcode models) and the field
computation. What is fake: the master service behind it (no store, no nodes, no executor).
"""

from __future__ import annotations

import json

import pytest

from corral.api.fields import I_FIELDS, J_FIELDS, J_FIELDS_BULK, N_FIELDS
from corral.common.errors import ErrorKind, OpError
from corral.objects.opcodes import OpInstanceCreate
from tests.unit.api.conftest import ADMIN, READER

JSON = {"Content-Type": "application/json"}


def post(client, url, body, headers=ADMIN, method="POST"):
    return client.request(method, url, content=json.dumps(body), headers={**JSON, **headers})


def create_body(**kw):
    body = {"__version__": 1, "mode": "create", "name": "vm1", "disk_template": "file",
            "disks": [{"size": 64}], "nics": [], "os": "noop", "hypervisor": "fake",
            "beparams": {"memory": 128}}  # fmt: skip
    body.update(kw)
    return body


def assert_error(resp, status, *, kind=None, explain=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["explain"], str)
    if kind is not None:
        assert body["kind"] == kind
    if explain is not None:
        assert explain in body["explain"]
    return body


# --- cluster -----------------------------------------------------------------------------------


def test_version_root_features(client):
    assert client.get("/version").json() == 2
    assert client.get("/").json() is None
    assert client.get("/2").json() is None
    feats = client.get("/2/features").json()
    # only features whose resources exist (the node migrate/evacuate ones come later)
    assert {"instance-create-reqv1", "instance-reinstall-reqv1"} == set(feats)


def test_info(client):
    info = client.get("/2/info").json()
    assert info["name"] == "cluster.example"
    assert info["master"] == "node1"
    assert info["enabled_hypervisors"] == ["fake", "kvm"]
    assert info["default_hypervisor"] == "fake"
    assert info["os_api_version"] == 20
    assert "kvm" in info["hvparams"] and "maxmem" in info["beparams"]["default"]


def test_os_list_has_variants_and_skips_invalid(client):
    assert client.get("/2/os").json() == ["busybox+default", "busybox+tiny", "noop"]


# --- instances: reads --------------------------------------------------------------------------


def test_instances_list_and_bulk(client, master):
    master.add_instance("vm2", running=True)
    master.add_instance("vm1")
    assert client.get("/2/instances").json() == [
        {"id": "vm1", "uri": "/2/instances/vm1"},
        {"id": "vm2", "uri": "/2/instances/vm2"},
    ]
    bulk = client.get("/2/instances?bulk=1").json()
    assert [b["name"] for b in bulk] == ["vm1", "vm2"]
    assert set(bulk[0]) == set(I_FIELDS)
    vm1, vm2 = bulk
    assert (vm1["status"], vm1["oper_state"], vm1["oper_ram"]) == ("ADMIN_down", False, None)
    assert (vm2["status"], vm2["oper_state"], vm2["oper_ram"]) == ("running", True, 128)
    assert vm1["disk.sizes"] == [1024] and vm1["nic.macs"] == ["aa:00:00:11:22:33"]
    assert vm1["nic.modes"] == ["bridged"] and vm1["beparams"]["maxmem"] == 128


def test_instance_statuses(client, master):
    master.add_instance("up-not-running", running=True)
    master.live.pop("up-not-running")
    master.add_instance("down-but-running")
    master.live["down-but-running"] = master.live.get("x") or _running("down-but-running")
    master.add_instance("on-bad-node", running=True, primary_node="node2")
    master.unreachable.add("node2")
    got = {b["name"]: b["status"] for b in client.get("/2/instances?bulk=1").json()}
    assert got == {
        "up-not-running": "ERROR_down",
        "down-but-running": "ERROR_up",
        "on-bad-node": "ERROR_nodedown",
    }


def _running(name):
    from corral.hypervisor.base import InstanceInfo, InstanceState

    return InstanceInfo(name=name, state=InstanceState.RUNNING, memory=64, vcpus=1)


def test_get_instance_and_404(client, master):
    master.add_instance("vm1", running=True, tags=["a"])
    got = client.get("/2/instances/vm1").json()
    assert got["name"] == "vm1" and got["pnode"] == "node1" and got["tags"] == ["a"]
    assert got["admin_state"] == "up" and got["status"] == "running"
    body = assert_error(client.get("/2/instances/nope"), 404, kind=ErrorKind.NOT_FOUND.value)
    assert "instance nope not found" in body["explain"]


def test_instance_tags_get(client, master):
    master.add_instance("vm1", tags=["x", "y"])
    assert client.get("/2/instances/vm1/tags").json() == ["x", "y"]


# --- instances: create -------------------------------------------------------------------------


def test_create_submits_opcode_and_returns_job_id(client, master):
    resp = post(client, "/2/instances?dry-run=0&reason=because", create_body())
    assert resp.status_code == 200, resp.text
    job_id = resp.json()
    assert isinstance(job_id, int)
    (op,) = master.submitted[-1]
    assert isinstance(op, OpInstanceCreate)
    assert (op.instance_name, op.os_type, op.disk_template) == ("vm1", "noop", "file")
    assert op.disks[0].size == 64 and op.hypervisor == "fake" and not op.dry_run
    assert op.reason[0][:2] == ["gnt:user", "because"]
    assert op.reason[-1][0] == "gnt:library:rlib2:instances"
    assert master.get_job(job_id).status.value == "success"


def test_create_dry_run_flag(client, master):
    assert post(client, "/2/instances?dry-run=1", create_body()).status_code == 200
    assert master.submitted[-1][0].dry_run is True


def test_create_rejects_version_0_and_unknown_version(client):
    body = create_body()
    del body["__version__"]
    assert_error(post(client, "/2/instances", body), 400, explain="version 0")
    assert_error(post(client, "/2/instances", create_body(__version__=2)), 400)


def test_create_unknown_field_names_it(client):
    resp = post(client, "/2/instances", create_body(frobnicate=1))
    body = assert_error(resp, 400, kind="wrong_input")
    assert "frobnicate" in body["explain"]
    assert body["fields"]["problems"]["frobnicate"] == "unknown field"


def test_create_rename_conflict(client):
    resp = post(client, "/2/instances", create_body(instance_name="vm1"))
    assert_error(resp, 400, explain="renamed")


def test_body_needs_json_content_type_and_valid_json(client):
    resp = client.post("/2/instances", content=json.dumps(create_body()),
                       headers={"Content-Type": "text/plain", **ADMIN})  # fmt: skip
    assert_error(resp, 415)
    resp = client.post("/2/instances", content=b"{not json", headers={**JSON, **ADMIN})
    assert_error(resp, 400, explain="JSON")
    resp = client.post("/2/instances", content=b"[1, 2]", headers={**JSON, **ADMIN})
    assert_error(resp, 400, explain="dict")


def test_master_refusal_maps_kind_to_status(client, master):
    master.fail_next = OpError("instance vm1 already exists", kind=ErrorKind.EXISTS)
    body = assert_error(post(client, "/2/instances", create_body()), 409, kind="already_exists")
    assert body["explain"] == "instance vm1 already exists"
    assert body["message"] == "Conflict" and body["type"] == "OpError"


# --- instances: actions ------------------------------------------------------------------------


def test_startup_shutdown_reboot(client, master):
    master.add_instance("vm1")
    r = client.put("/2/instances/vm1/startup?force=1&no_remember=0", headers=ADMIN)
    assert r.status_code == 200, r.text
    op = master.submitted[-1][0]
    assert (op.OP_ID, op.instance_name, op.force, op.no_remember) == (
        "OP_INSTANCE_STARTUP", "vm1", True, False)  # fmt: skip
    assert master.live["vm1"]
    r = post(client, "/2/instances/vm1/shutdown?no_remember=1", {"timeout": 5}, method="PUT")
    assert r.status_code == 200, r.text
    op = master.submitted[-1][0]
    assert (op.OP_ID, op.timeout, op.no_remember) == ("OP_INSTANCE_SHUTDOWN", 5, True)
    r = post(client, "/2/instances/vm1/reboot?type=soft", {})
    assert r.status_code == 200
    assert master.submitted[-1][0].reboot_type == "soft"
    r = client.post("/2/instances/vm1/reboot", headers=ADMIN)
    assert master.submitted[-1][0].reboot_type == "hard"


def test_boolean_query_params_must_be_0_or_1(client, master):
    master.add_instance("vm1")
    resp = client.put("/2/instances/vm1/startup?force=yes", headers=ADMIN)
    assert_error(resp, 400, explain="'force'")
    assert_error(client.get("/2/instances?bulk=true"), 400, explain="'bulk'")


def test_reboot_type_is_checked(client, master):
    master.add_instance("vm1")
    body = assert_error(client.post("/2/instances/vm1/reboot?type=warm", headers=ADMIN), 400)
    assert "reboot_type" in body["explain"]


def test_static_parameters_cannot_be_overwritten(client, master):
    master.add_instance("vm1")
    resp = post(client, "/2/instances/vm1/modify", {"instance_name": "vm2"}, method="PUT")
    assert_error(resp, 400, explain="static")


def test_modify_rename_grow(client, master):
    master.add_instance("vm1")
    r = post(client, "/2/instances/vm1/modify", {"beparams": {"maxmem": 512}, "runtime_mem": 300},
             method="PUT")  # fmt: skip
    assert r.status_code == 200, r.text
    op = master.submitted[-1][0]
    assert op.beparams == {"maxmem": 512} and op.runtime_mem == 300
    r = post(client, "/2/instances/vm1/disk/0/grow", {"amount": 512, "wait_for_sync": False})
    assert r.status_code == 200, r.text
    assert master.instance("vm1").disks[0].size == 1536
    assert_error(post(client, "/2/instances/vm1/disk/x/grow", {"amount": 1}), 400)
    r = post(client, "/2/instances/vm1/rename", {"new_name": "vm9"}, method="PUT")
    assert r.status_code == 200, r.text
    assert master.instance("vm9").name == "vm9"


def test_reinstall_body_and_legacy_forms(client, master):
    master.add_instance("vm1")
    r = post(client, "/2/instances/vm1/reinstall", {"os": "noop", "start": False})
    assert r.status_code == 200, r.text
    assert [o.OP_ID for o in master.submitted[-1]] == [
        "OP_INSTANCE_SHUTDOWN", "OP_INSTANCE_REINSTALL"]  # fmt: skip
    assert master.submitted[-1][1].os_type == "noop"
    r = client.post("/2/instances/vm1/reinstall?os=busybox&nostartup=0", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert [o.OP_ID for o in master.submitted[-1]][-1] == "OP_INSTANCE_STARTUP"
    assert_error(post(client, "/2/instances/vm1/reinstall?os=x", {"os": "y"}), 400)
    assert_error(post(client, "/2/instances/vm1/reinstall", {"bogus": 1}), 400, explain="bogus")


def test_console_returns_dict_or_error(client, master):
    master.add_instance("vm1", running=True)
    master.add_instance("vm2")
    console = client.get("/2/instances/vm1/console", headers=ADMIN).json()
    assert console["kind"] == "ssh" and console["instance"] == "vm1"
    assert_error(client.get("/2/instances/vm2/console", headers=ADMIN), 409, kind="wrong_state")
    assert_error(client.get("/2/instances/vm1/console", headers=READER), 403)


def test_info_returns_job_id(client, master):
    master.add_instance("vm1")
    r = client.get("/2/instances/vm1/info?static=1")
    job_id = r.json()
    op = master.submitted[-1][0]
    assert (op.OP_ID, op.instances, op.static) == ("OP_INSTANCE_QUERY_DATA", ["vm1"], True)
    assert master.get_job(job_id).ops[0].result == {"vm1": {"name": "vm1", "os": "busybox"}}


def test_delete_and_tags(client, master):
    master.add_instance("vm1")
    assert client.put("/2/instances/vm1/tags?tag=a&tag=b", headers=ADMIN).status_code == 200
    assert master.instance("vm1").tags == ["a", "b"]
    assert client.delete("/2/instances/vm1/tags?tag=a", headers=ADMIN).status_code == 200
    assert master.instance("vm1").tags == ["b"]
    r = client.delete("/2/instances/vm1?dry-run=0", headers=ADMIN)
    assert r.status_code == 200 and isinstance(r.json(), int)
    assert master.instances() == []


# --- jobs --------------------------------------------------------------------------------------


def test_jobs_list_get_bulk(client, master):
    master.add_instance("vm1")
    client.put("/2/instances/vm1/startup", headers=ADMIN)
    assert client.get("/2/jobs").json() == [{"id": 1, "uri": "/2/jobs/1"}]
    (bulk,) = client.get("/2/jobs?bulk=1").json()
    assert set(bulk) == set(J_FIELDS_BULK) and bulk["status"] == "success"
    job = client.get("/2/jobs/1").json()
    assert set(job) == set(J_FIELDS)
    assert job["summary"] == ["INSTANCE_STARTUP(vm1)"]
    assert job["ops"][0]["OP_ID"] == "OP_INSTANCE_STARTUP"
    assert job["opstatus"] == ["success"]
    assert_error(client.get("/2/jobs/99"), 404)
    assert_error(client.get("/2/jobs/abc"), 400)


def test_cancel_job(client, master):
    master.auto_run = False
    master.add_instance("vm1")
    job_id = client.put("/2/instances/vm1/startup", headers=ADMIN).json()
    assert client.delete(f"/2/jobs/{job_id}", headers=ADMIN).json() == [
        True, f"Job {job_id} canceled"]  # fmt: skip
    assert client.get(f"/2/jobs/{job_id}").json()["status"] == "canceled"
    assert client.delete(f"/2/jobs/{job_id}", headers=ADMIN).json()[0] is False


def test_wait_for_job_change(client, master, monkeypatch):
    monkeypatch.setattr("corral.api.rapi2.jobs.WAIT_TIMEOUT", 0.2)
    master.auto_run = False
    master.add_instance("vm1")
    job_id = client.put("/2/instances/vm1/startup", headers=ADMIN).json()
    url = f"/2/jobs/{job_id}/wait"
    body = {"fields": ["status"], "previous_job_info": None, "previous_log_serial": None}
    first = client.request("GET", url, content=json.dumps(body), headers={**JSON, **ADMIN})
    assert first.json() == {"job_info": ["queued"], "log_entries": []}
    body["previous_job_info"] = ["queued"]
    again = client.request("GET", url, content=json.dumps(body), headers={**JSON, **ADMIN})
    assert again.status_code == 200 and again.json() is None  # timed out: no change
    master.finish(job_id)
    done = client.request("GET", url, content=json.dumps(body), headers={**JSON, **ADMIN}).json()
    assert done["job_info"] == ["success"]
    serials = [e[0] for e in done["log_entries"]]
    assert serials == sorted(serials) and len(serials) >= 1
    assert done["log_entries"][0][2] == "message" and len(done["log_entries"][0][1]) == 2


def test_wait_validates_body_and_needs_write(client, master):
    master.add_instance("vm1")
    job_id = client.put("/2/instances/vm1/startup", headers=ADMIN).json()
    url = f"/2/jobs/{job_id}/wait"
    hdr = {**JSON, **ADMIN}
    assert_error(client.request("GET", url, headers=ADMIN), 400)
    bad = {"fields": "status"}
    assert_error(client.request("GET", url, content=json.dumps(bad), headers=hdr), 400)
    bad = {"fields": ["status"], "previous_log_serial": "x"}
    assert_error(client.request("GET", url, content=json.dumps(bad), headers=hdr), 400)
    ok_body = json.dumps({"fields": ["status"]})
    resp = client.request("GET", url, content=ok_body, headers={**JSON, **READER})
    assert_error(resp, 403)
    resp = client.request("GET", "/2/jobs/77/wait", content=ok_body, headers=hdr)
    assert_error(resp, 404)


# --- nodes -------------------------------------------------------------------------------------


def test_nodes(client, master):
    master.add_instance("vm1")
    master.unreachable.add("node2")
    assert client.get("/2/nodes").json() == [
        {"id": "node1", "uri": "/2/nodes/node1"},
        {"id": "node2", "uri": "/2/nodes/node2"},
    ]
    n1, n2 = client.get("/2/nodes?bulk=1").json()
    assert set(n1) == set(N_FIELDS)
    assert (n1["role"], n2["role"]) == ("M", "R")
    assert (n1["mtotal"], n1["mfree"], n1["dfree"], n1["ctotal"]) == (4096, 3000, 8192, 2)
    assert n1["pinst_cnt"] == 1 and n1["pinst_list"] == ["vm1"]
    assert n2["mfree"] is None  # unreachable: no live data
    assert client.get("/2/nodes/node1").json()["pip"] == "127.0.0.1"
    assert client.get("/2/nodes/node1/role").json() == "master"
    assert_error(client.get("/2/nodes/zz"), 404)


# --- query -------------------------------------------------------------------------------------


def test_query_instances_with_unknown_field(client, master):
    master.add_instance("vm1", running=True)
    master.add_instance("vm2")
    resp = client.get("/2/query/instance?fields=name,status,oper_ram,bogus,be/memory",
                      headers=ADMIN)  # fmt: skip
    got = resp.json()
    assert [f["name"] for f in got["fields"]] == ["name", "status", "oper_ram", "bogus",
                                                  "be/memory"]  # fmt: skip
    assert got["fields"][3]["kind"] == "unknown"
    assert got["fields"][1]["title"] == "Status"
    assert got["data"][0] == [[0, "vm1"], [0, "running"], [0, 128], [1, None], [0, 128]]
    assert got["data"][1][2] == [3, None]  # oper_ram of a stopped instance: unavailable


def test_query_put_filter_and_fields(client, master):
    master.add_instance("vm1")
    master.add_instance("vm2")
    body = {"fields": ["name"], "qfilter": ["|", ["=", "name", "vm2"]]}
    got = post(client, "/2/query/instance", body, method="PUT").json()
    assert got["data"] == [[[0, "vm2"]]]
    body = {"fields": ["name"], "qfilter": ["=", "name", "nope"]}
    assert_error(post(client, "/2/query/instance", body, method="PUT"), 404)
    body = {"fields": ["name"], "qfilter": ["<", "name", "x"]}
    assert_error(post(client, "/2/query/instance", body, method="PUT"), 400)
    fields = client.get("/2/query/node/fields", headers=ADMIN).json()["fields"]
    assert {"name", "role", "mfree"} <= {f["name"] for f in fields}
    assert_error(client.get("/2/query/bogus?fields=name", headers=ADMIN), 404)
    assert_error(client.get("/2/query/instance?fields=name", headers=READER), 403)


def test_query_jobs_and_os(client, master):
    master.add_instance("vm1")
    client.put("/2/instances/vm1/startup", headers=ADMIN)
    got = client.get("/2/query/job?fields=id,status,summary", headers=ADMIN).json()
    assert got["data"] == [[[0, 1], [0, "success"], [0, ["INSTANCE_STARTUP(vm1)"]]]]
    got = client.get("/2/query/os?fields=name,valid,variants,diagnose", headers=ADMIN).json()
    rows = {r[0][1]: r for r in got["data"]}
    assert rows["broken"][1] == [0, False] and rows["broken"][3] == [0, "missing create script"]
    assert rows["busybox"][2] == [0, ["default", "tiny"]]


# --- generic errors ----------------------------------------------------------------------------


def test_unknown_route_and_method(client):
    assert_error(client.get("/2/nothing"), 404)
    assert_error(client.patch("/2/instances", headers=ADMIN), 405)


@pytest.mark.parametrize("path", ["/version", "/2/info", "/2/instances", "/2/nodes", "/2/jobs"])
def test_reads_need_no_credentials(client, path):
    assert client.get(path).status_code == 200

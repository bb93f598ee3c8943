"""RAPI ``PUT /2/instances/[i]/modify`` with Ganeti's ``disks``/``nics`` bodies.

The FastAPI app, routing, body parsing and the real opcode model are exercised; the master
behind them is the in-memory FAKE of tests/fakes/master_service.py. The operation itself runs
for real in tests/unit/master/test_master_devices.py.
"""

from __future__ import annotations

import json

from tests.unit.api.conftest import ADMIN

JSON = {"Content-Type": "application/json"}


def put(client, url, body):
    return client.request("PUT", url, content=json.dumps(body), headers={**JSON, **ADMIN})


def test_modify_with_ganeti_disk_and_nic_modifications(client, master):
    master.add_instance("vm1")
    body = {
        "disks": [["add", -1, {"size": 1024, "mode": "rw"}], ["remove", "data", {}]],
        "nics": [["modify", 0, {"link": "br1"}]],
        "hotplug": True,
    }
    r = put(client, "/2/instances/vm1/modify", body)
    assert r.status_code == 200, r.text
    op = master.submitted[-1][0]
    assert op.disks == body["disks"] and op.nics == body["nics"] and op.hotplug is True
    # the legacy two-element form and hotplug_if_possible, as python-ganeti-rapi sends them
    r = put(client, "/2/instances/vm1/modify",
            {"disks": [["add", {"size": 512}]], "hotplug_if_possible": True})  # fmt: skip
    assert r.status_code == 200, r.text
    op = master.submitted[-1][0]
    assert op.disks == [["add", {"size": 512}]] and op.hotplug is None and op.hotplug_if_possible


def test_modify_with_a_malformed_disks_body_is_a_400(client, master):
    master.add_instance("vm1")
    r = put(client, "/2/instances/vm1/modify", {"disks": "add:size=1G"})
    assert r.status_code == 400, r.text
    assert "disks" in r.json()["explain"] or "disks" in r.json()["message"]

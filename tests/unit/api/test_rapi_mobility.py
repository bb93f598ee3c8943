"""The mobility RAPI routes (Ganeti's migrate/failover/move/evacuate/node migrate) against the
FAKE master (tests/fakes/master_service.py records the opcodes it gets). What is real: the app,
its routing, auth and the opcodes built from the requests; the operations run for real in
tests/unit/master/test_master_mobility.py and tests/integration/test_mobility_*.py."""

from __future__ import annotations

from tests.unit.api.conftest import ADMIN, READER


def test_instance_routes_build_ganeti_opcodes(client, master):
    master.add_instance("vm1")
    resp = client.put(
        "/2/instances/vm1/migrate?dry-run=1",
        json={"mode": "non-live", "target_node": "n2", "cleanup": False},
        headers=ADMIN,
    )
    assert resp.status_code == 200, resp.text
    (op,) = master.submitted[-1]
    assert (op.OP_ID, op.instance_name, op.mode, op.target_node, op.dry_run) == (
        "OP_INSTANCE_MIGRATE",
        "vm1",
        "non-live",
        "n2",
        True,
    )
    resp = client.put("/2/instances/vm1/failover", json={"ignore_consistency": True}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    (op,) = master.submitted[-1]
    assert (op.OP_ID, op.ignore_consistency) == ("OP_INSTANCE_FAILOVER", True)
    resp = client.put("/2/instances/vm1/move", json={"target_node": "n3"}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert master.submitted[-1][0].target_node == "n3"
    # move needs a target; unknown body keys are refused; readers cannot write
    assert client.put("/2/instances/vm1/move", headers=ADMIN).status_code == 400
    bad = client.put("/2/instances/vm1/migrate", json={"bogus": 1}, headers=ADMIN)
    assert bad.status_code == 400
    assert client.put("/2/instances/vm1/migrate", headers=READER).status_code == 403


def test_node_routes(client, master):
    resp = client.post(
        "/2/nodes/n1/evacuate?remote_node=n2", json={"mode": "primary-only"}, headers=ADMIN
    )
    assert resp.status_code == 200, resp.text
    (op,) = master.submitted[-1]
    assert (op.OP_ID, op.node_name, op.remote_node, op.mode) == (
        "OP_NODE_EVACUATE",
        "n1",
        "n2",
        "primary-only",
    )
    resp = client.post("/2/nodes/n1/migrate?live=0", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    (op,) = master.submitted[-1]
    assert (op.OP_ID, op.node_name, op.live) == ("OP_NODE_MIGRATE", "n1", False)
    assert client.post("/2/nodes/n1/evacuate", headers=READER).status_code == 403

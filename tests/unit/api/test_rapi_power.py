"""The Corral-extension RAPI routes pause/resume/suspend/unsuspend, against the FAKE master
(tests/fakes/master_service.py: it records the opcodes it gets). What is real: the app, its
routing, auth, the opcodes built from the requests. The operations themselves run for real
in tests/unit/master/test_master_power.py and tests/integration/test_e2e_kvm_power.py."""

from __future__ import annotations

import pytest

from tests.unit.api.conftest import ADMIN, READER


@pytest.mark.parametrize(
    ("action", "op_id"),
    [
        ("pause", "OP_INSTANCE_PAUSE"),
        ("resume", "OP_INSTANCE_RESUME"),
        ("suspend", "OP_INSTANCE_SUSPEND"),
        ("unsuspend", "OP_INSTANCE_UNSUSPEND"),
    ],
)
def test_power_routes_submit_their_opcode(client, master, action, op_id):
    master.add_instance("vm1")
    resp = client.put(f"/2/instances/vm1/{action}?dry-run=1&reason=maintenance", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert isinstance(resp.json(), int)
    (op,) = master.submitted[-1]
    assert (op.OP_ID, op.instance_name, op.dry_run) == (op_id, "vm1", True)
    assert any("maintenance" in str(entry) for entry in op.reason)
    # writes need the write right; GET is not a route
    assert client.put(f"/2/instances/vm1/{action}", headers=READER).status_code == 403
    assert client.get(f"/2/instances/vm1/{action}", headers=ADMIN).status_code == 405

"""``corral`` and ``gnt-*`` against real daemons: dry runs change nothing, reasons are recorded,
a failed job's error is printed once, query filters, and a refused ``cluster destroy`` leaves
the daemons running.

Nothing is faked: a real single-host cluster in a temporary root (tests/integration/harness.py)
with the ``fake`` hypervisor (a product feature: it runs no guest), diskless instances and
Debian's unchanged ``noop`` OS definition.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.integration.harness import NOOP_OS, LocalCluster

pytestmark = pytest.mark.slow

ADD = ["-t", "diskless", "--no-nics", "-o", "noop", "-H", "fake", "--no-start"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    if not os.path.isdir(NOOP_OS):
        unavailable(f"missing {NOOP_OS} (Debian package ganeti-os-noop)")
    c = LocalCluster(tmp_path / "root", hypervisors=["fake"], cluster_name="clitest")
    try:
        yield c
    finally:
        c.close(show_logs=True)


def _status(c: LocalCluster) -> dict[str, str]:
    out = c.run("gnt-instance", "list", "--no-headers", "--separator=:", "-o", "name,status")
    return dict(line.split(":") for line in out.stdout.splitlines())


def test_dry_runs_change_nothing(cluster: LocalCluster) -> None:
    c = cluster
    c.run("gnt-instance", "add", *ADD, "nx3")
    assert _status(c) == {"nx3": "ADMIN_down"}

    start = c.run("gnt-instance", "startup", "--dry-run", "nx3")
    assert "dry run: checks passed, nothing done" in start.stdout
    remove = c.run("gnt-instance", "remove", "--dry-run", "-f", "nx3")
    assert "dry run: checks passed, nothing done" in remove.stdout
    assert _status(c) == {"nx3": "ADMIN_down"}

    add = c.corral("instance", "add", "--dry-run", *ADD, "dry1")
    assert "dry run: instance dry1 would be created" in add.stdout
    assert "dry1 created" not in add.stdout
    c.corral("instance", "start", "--dry-run", "nx3")
    assert _status(c) == {"nx3": "ADMIN_down"}

    # the checks do run: a dry run of something impossible fails
    bad = c.run("gnt-instance", "startup", "--dry-run", "nosuch", check=False)
    assert bad.returncode == 1 and "Failure:" in bad.stderr

    # --reason reaches the reason trail; --print-jobid prints the id
    stop = c.run("gnt-instance", "startup", "--print-jobid", "--reason", "ticket 7", "nx3")
    job_id = stop.stdout.splitlines()[0]
    assert re.fullmatch(r"\d+", job_id), stop.stdout
    job = c.corral_json("job", "info", job_id)
    assert job["ops"][0]["reason"][0][:2] == ["gnt:user", "ticket 7"]
    assert _status(c) == {"nx3": "running"}

    # query filters and status filters
    rows = c.run("gnt-instance", "list", "--no-headers", "-o", "name", "-F",
                 'status == "running" and name =~ m/^nx/').stdout.split()  # fmt: skip
    assert rows == ["nx3"]
    failed = c.run("gnt-job", "list", "--no-headers", "-o", "id,status", "--error").stdout
    assert failed.split()[1::2] == ["error"], failed


def test_failed_job_error_is_printed_once(cluster: LocalCluster) -> None:
    c = cluster
    c.run("gnt-instance", "add", *ADD, "vm1")
    bad = c.run("gnt-instance", "add", *ADD, "vm1", check=False)
    assert bad.returncode == 1
    assert bad.stderr.count("already exists") == 1, bad.stderr
    assert bad.stderr.startswith("Failure: ")
    assert "already exists" not in bad.stdout
    bad = c.corral("instance", "add", *ADD, "vm1", check=False)
    assert bad.returncode == 1
    assert (bad.stdout + bad.stderr).count("already exists") == 1, bad.stderr
    assert "error: " in bad.stderr


def test_refused_destroy_keeps_the_daemons(cluster: LocalCluster) -> None:
    c = cluster
    c.run("gnt-instance", "add", *ADD, "vm1")
    for _ in range(2):
        refused = c.corral("cluster", "destroy", "--yes-do-it", check=False)
        assert refused.returncode == 1
        assert "there are still 1 instance(s) in the cluster (vm1)" in refused.stderr
        assert "--force" in refused.stderr
        assert "stopped" not in refused.stdout
        status = c.corral("--output", "json", "daemons", "status")
        assert all(json.loads(status.stdout).values()), status.stdout
        assert _status(c) == {"vm1": "ADMIN_down"}
    gnt = c.run("gnt-cluster", "destroy", "--yes-do-it", check=False)
    assert gnt.returncode == 1 and "corral cluster destroy --yes-do-it --force" in gnt.stderr
    # with the master stopped, the refusal comes from the store
    c.corral("daemons", "stop")
    refused = c.corral("cluster", "destroy", "--yes-do-it", check=False)
    assert refused.returncode == 1 and "(vm1)" in refused.stderr
    assert Path(c.paths.cluster_conf).exists()

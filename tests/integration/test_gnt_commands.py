"""The gnt-* entry points against a running cluster, in Ganeti's syntax.

Real daemons in a temporary root (tests/integration/harness.py) with the ``fake`` hypervisor
(a product feature) and Debian's unchanged ``noop`` OS definition.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import NOOP_OS, LocalCluster
from tests.integration.test_rapi_client import _need_ganeti_client

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    _need_ganeti_client()  # needs Debian's noop OS too
    assert Path(NOOP_OS).is_dir()
    c = LocalCluster(tmp_path / "root", hypervisors=["fake", "kvm"], cluster_name="gnt")
    try:
        yield c
    finally:
        c.close(show_logs=True)


def test_gnt_commands_drive_an_instance(cluster: LocalCluster) -> None:
    c = cluster
    assert c.run("gnt-cluster", "getmaster").stdout.strip() == "node1"
    assert "Software version: " in c.run("gnt-cluster", "version").stdout
    assert "gnt" in c.run("gnt-cluster", "info").stdout
    assert c.run("gnt-node", "list", "--no-headers", "-o", "name,role").stdout.split() == [
        "node1",
        "M",
    ]
    oses = c.run("gnt-os", "list", "--no-headers").stdout.split()
    assert "noop" in oses and "busybox+default" in oses

    # options before the positional name, a bare size in MiB, --submit prints the job id
    add = c.run(
        "gnt-instance",
        "add",
        "-t",
        "file",
        "--disk",
        "0:size=64",
        "-o",
        "noop",
        "-H",
        "fake",
        "-B",
        "memory=128M,vcpus=1",
        "--no-start",
        "--submit",
        "vmg",
    )
    match = re.fullmatch(r"JobID: (\d+)\n", add.stdout)
    assert match, add.stdout
    job = match.group(1)
    watch = c.run("gnt-job", "watch", job)
    assert f"Output from job {job} follows" in watch.stdout
    info = c.run("gnt-job", "info", job).stdout
    assert "Status: success" in info and "OP_INSTANCE_CREATE" in info and "vmg" in info

    c.run("gnt-instance", "startup", "vmg")
    c.run("gnt-instance", "reboot", "--type=hard", "vmg")
    c.run("gnt-instance", "modify", "-B", "vcpus=2", "vmg")
    c.run("gnt-instance", "grow-disk", "vmg", "0", "64")
    rows = c.run(
        "gnt-instance",
        "list",
        "--no-headers",
        "--separator=:",
        "-o",
        "name,status,be/vcpus,disk.size/0",
    ).stdout.split()
    assert rows == ["vmg:running:2:128"]
    c.run("gnt-instance", "shutdown", "vmg")
    c.run("gnt-instance", "remove", "-f", "vmg")
    assert c.run("gnt-instance", "list", "--no-headers", "-o", "name").stdout.strip() == ""

    # an unknown instance: Ganeti's "Failure:" line and a non-zero exit code
    bad = c.run("gnt-instance", "startup", "nosuch", check=False)
    assert bad.returncode != 0
    assert "Failure:" in bad.stderr and "nosuch" in bad.stderr
    statuses = [
        line.split()[1] for line in c.run("gnt-job", "list", "--no-headers").stdout.splitlines()
    ]
    assert statuses and all(s == "success" for s in statuses[:-1]), statuses

"""The shipped systemd unit files (for real hosts; not used by the demo or the tests)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess

import pytest

UNITS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    "systemd",
)


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    with open(os.path.join(UNITS, name)) as fh:
        parser.read_file(fh)
    return parser


def test_noded_unit_leaves_guests_alone_and_runs_in_foreground() -> None:
    unit = _unit("corral-noded.service")
    assert unit["Service"]["KillMode"] == "process"
    assert "--foreground" in unit["Service"]["ExecStart"].split()
    assert float(unit["Service"]["TimeoutStopSec"]) > 30  # STOP_GRACE of the daemon


def test_master_unit_starts_after_noded() -> None:
    unit = _unit("corral-master.service")
    assert "corral-noded.service" in unit["Unit"]["After"].split()
    assert "--foreground" in unit["Service"]["ExecStart"].split()


@pytest.mark.parametrize("name", ["corral-noded.service", "corral-master.service"])
def test_units_pass_systemd_analyze(name: str) -> None:
    """Syntax check with systemd's own parser, where it is installed (it is optional here)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return
    out = subprocess.run(
        [tool, "verify", "--man=no", os.path.join(UNITS, name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The corral-* commands are not installed in /usr/local/bin on a test machine.
    problems = [line for line in out.stderr.splitlines() if "is not executable" not in line]
    assert problems == []

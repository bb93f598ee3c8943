"""``runcmd.run_to_file``: output to a log file, exit codes, and stopping a whole process group."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from corral.common import runcmd
from corral.common.errors import CommandError, CommandTimeout


def test_output_appended_and_rc_returned(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("earlier\n")
    rc = runcmd.run_to_file(
        ["sh", "-c", "echo out; echo err >&2; exit 7"], output=str(log), timeout=10
    )
    assert rc == 7
    assert log.read_text().splitlines() == ["earlier", "out", "err"]


def test_clear_env_and_stdin(tmp_path: Path) -> None:
    log = tmp_path / "log"
    stdin = tmp_path / "in"
    stdin.write_text("hello\n")
    runcmd.run_to_file(
        ["sh", "-c", 'read -r x; echo "$x ${HOME:-nohome} $FOO $PATH"'],
        output=str(log),
        timeout=10,
        env={"FOO": "bar"},
        clear_env=True,
        stdin_path=str(stdin),
    )
    assert log.read_text().strip() == f"hello nohome bar {runcmd.SAFE_PATH}"


def test_timeout_terms_then_kills_the_group(tmp_path: Path) -> None:
    log = tmp_path / "log"
    child_marker = tmp_path / "child"
    script = (
        f"trap 'echo cleaned; exit 1' TERM; (sleep 2; touch {child_marker}) & "
        "echo started; sleep 30 & wait"
    )
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout):
        runcmd.run_to_file(["sh", "-c", script], output=str(log), timeout=0.5, kill_grace=2)
    assert time.monotonic() - t0 < 5
    text = log.read_text()
    assert "started" in text and "cleaned" in text  # the TERM trap ran
    time.sleep(2.5)
    assert not child_marker.exists()  # the background child was killed with the group


def test_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(CommandError) as exc:
        runcmd.run_to_file(["/nonexistent/prog"], output=str(tmp_path / "log"), timeout=5)
    assert exc.value.rc is None

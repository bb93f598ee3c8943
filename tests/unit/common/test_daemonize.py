"""start_daemon / stop_daemon / daemon_status with real detached processes.

The daemon here is a tiny Python program (below) that behaves like Corral's daemons: it names
itself, writes its pid file when ready, and removes it on SIGTERM. Every process started is
killed by pid in teardown, even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.common import daemonize
from corral.common.errors import CorralError, ErrorKind

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

DAEMON = """
import signal, sys, time
from corral.common import daemonize
pid_file, name, mode = sys.argv[1:4]
daemonize.set_process_name(name)
print("daemon starting", mode, flush=True)
if mode == "fail":
    print("boom: cannot open the frobnicator", flush=True)
    sys.exit(3)
if mode == "slow":
    time.sleep(60)
if mode == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    def stop(*_):
        daemonize.release_pid_file(pid_file)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
daemonize.claim_pid_file(pid_file, name=name)
while True:
    time.sleep(1)
"""

NAME = "corral-testd"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def _argv(pid_file: str, mode: str = "ok") -> list[str]:
    return [sys.executable, "-c", DAEMON, pid_file, NAME, mode]


def _processes_of(pid_file: str) -> list[int]:
    """Pids of the processes started with ``pid_file`` (a unique tmp path) in their argv."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if pid_file.encode() in argv:
            out.append(int(entry))
    return out


def started_children() -> list[int]:
    """Our exited-but-unreaped test daemons (zombies named NAME), from /proc."""
    me = str(os.getpid())
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        name = stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode()
        if fields[0] == b"Z" and fields[1].decode() == me and name == NAME:
            out.append(int(entry))
    return out


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[str, str]]:
    pid_file = str(tmp_path / "run" / f"{NAME}.pid")
    log_file = str(tmp_path / "log" / f"{NAME}.log")
    yield pid_file, log_file
    for pid in _processes_of(pid_file):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    for pid in started_children():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap the daemons that were our children


def _start(pid_file: str, log_file: str, mode: str = "ok", **kw) -> int:  # type: ignore[no-untyped-def]
    return daemonize.start_daemon(_argv(pid_file, mode), pid_file, log_file, env=_env(), **kw)


def _session_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[3])  # state ppid pgrp session


def test_start_waits_for_the_pid_file_and_detaches(files: tuple[str, str]) -> None:
    pid_file, log_file = files
    pid = _start(pid_file, log_file)
    try:
        assert daemonize.read_pid_file(pid_file) == pid
        assert daemonize.daemon_status(pid_file) == pid
        assert _session_of(pid) == pid  # its own session: no terminal, own process group
        with open(f"/proc/{pid}/comm") as fh:
            assert fh.read().strip() == NAME
        with open(log_file) as fh:
            assert "daemon starting ok" in fh.read()
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    finally:
        os.kill(pid, signal.SIGKILL)


def test_daemon_survives_the_process_that_started_it(files: tuple[str, str]) -> None:
    pid_file, log_file = files
    code = (
        "import sys, json\n"
        "from corral.common.daemonize import start_daemon\n"
        "argv, pid_file, log_file = json.loads(sys.argv[1])\n"
        "print(start_daemon(argv, pid_file, log_file))\n"
    )
    payload = json.dumps([_argv(pid_file), pid_file, log_file])
    out = subprocess.run(
        [sys.executable, "-c", code, payload],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pid = int(out.stdout.strip())
    try:
        time.sleep(0.2)  # the starter is gone now
        assert daemonize.daemon_status(pid_file) == pid
    finally:
        os.kill(pid, signal.SIGKILL)


def test_start_is_idempotent(files: tuple[str, str]) -> None:
    pid_file, log_file = files
    pid = _start(pid_file, log_file)
    try:
        assert _start(pid_file, log_file) == pid
    finally:
        os.kill(pid, signal.SIGKILL)


def test_daemon_dying_at_startup_raises_with_log_tail(files: tuple[str, str]) -> None:
    pid_file, log_file = files
    with pytest.raises(CorralError) as err:
        _start(pid_file, log_file, mode="fail")
    assert err.value.kind is ErrorKind.ENVIRONMENT
    assert err.value.fields["exitcode"] == 3
    assert "boom: cannot open the frobnicator" in err.value.fields["log_tail"]
    assert "boom" in str(err.value)
    assert not os.path.exists(pid_file)


def test_daemon_not_ready_in_time_is_killed(files: tuple[str, str]) -> None:
    pid_file, log_file = files
    with pytest.raises(CorralError, match=r"did not become ready within 0\.5s"):
        _start(pid_file, log_file, mode="slow", timeout=0.5)
    assert _processes_of(pid_file) == []  # nothing of it is left


def test_unknown_program_raises(files: tuple[str, str]) -> None:
    pid_file, log_file = files
    with pytest.raises(CorralError, match="cannot start /nonexistent/corral-x"):
        daemonize.start_daemon(["/nonexistent/corral-x"], pid_file, log_file)


def test_stop_sends_sigterm_and_removes_pid_file(files: tuple[str, str]) -> None:
    pid_file, log_file = files
    pid = _start(pid_file, log_file)
    assert daemonize.stop_daemon(pid_file, timeout=10) is True
    assert not os.path.exists(pid_file)
    assert daemonize.daemon_status(pid_file) is None
    assert pid not in _processes_of(pid_file)


def test_stop_kills_a_daemon_ignoring_sigterm(files: tuple[str, str]) -> None:
    pid_file, log_file = files
    _start(pid_file, log_file, mode="ignore_term")
    start = time.monotonic()
    assert daemonize.stop_daemon(pid_file, timeout=0.5) is True
    assert time.monotonic() - start < 5
    assert not os.path.exists(pid_file)


def test_stop_when_not_running_removes_stale_pid_file(files: tuple[str, str]) -> None:
    pid_file, _ = files
    os.makedirs(os.path.dirname(pid_file))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with open(pid_file, "w") as fh:
        fh.write(f"{proc.pid}\n")
    assert daemonize.daemon_status(pid_file) is None
    assert daemonize.stop_daemon(pid_file) is False
    assert not os.path.exists(pid_file)


def test_status_ignores_a_reused_pid(files: tuple[str, str]) -> None:
    """A pid file naming a live process that is not the daemon (pid reused) is stale."""
    pid_file, _ = files
    os.makedirs(os.path.dirname(pid_file))
    with open(pid_file, "w") as fh:
        fh.write(f"{os.getpid()}\n")  # pytest is alive, but it is not corral-testd
    assert daemonize.daemon_status(pid_file) is None


@pytest.mark.parametrize("content", ["", "garbage\n", "-5\n", "0\n"])
def test_status_with_bad_pid_file(files: tuple[str, str], content: str) -> None:
    pid_file, _ = files
    os.makedirs(os.path.dirname(pid_file))
    with open(pid_file, "w") as fh:
        fh.write(content)
    assert daemonize.daemon_status(pid_file) is None


def test_claim_refuses_when_another_instance_runs(files: tuple[str, str]) -> None:
    pid_file, log_file = files
    pid = _start(pid_file, log_file)
    try:
        with pytest.raises(CorralError) as err:
            daemonize.claim_pid_file(pid_file, name=NAME)
        assert err.value.kind is ErrorKind.EXISTS
        assert err.value.fields["pid"] == pid
        daemonize.release_pid_file(pid_file)  # not ours: left alone
        assert daemonize.read_pid_file(pid_file) == pid
    finally:
        os.kill(pid, signal.SIGKILL)

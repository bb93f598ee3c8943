"""Fixtures for the store tests: a real etcd process on loopback (session-wide)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import require_tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_etcd(
    name: str, data_dir: str, client: int, peer: int, cluster: str
) -> subprocess.Popen[bytes]:
    """Start one etcd member (its own process group, output to data_dir.log)."""
    log = open(data_dir + ".log", "wb")  # noqa: SIM115 - closed with the process
    argv = [
        "etcd", "--name", name, "--data-dir", data_dir,
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", cluster,
        "--initial-cluster-state", "new",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited with {proc.returncode}")
        with contextlib.suppress(requests.RequestException):
            r = requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
            if r.ok and r.json().get("health") == "true":
                return
        time.sleep(0.1)
    raise RuntimeError(f"etcd on port {port} not healthy after {timeout}s")


def stop_etcd(proc: subprocess.Popen[bytes]) -> None:
    """Kill one etcd member by pid and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def etcd_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A single-member etcd on 127.0.0.1 with random ports; killed at the end of the session."""
    require_tool("etcd")
    data = str(tmp_path_factory.mktemp("etcd") / "data")
    client, peer = free_port(), free_port()
    proc = start_etcd("t", data, client, peer, f"t=http://127.0.0.1:{peer}")
    try:
        wait_healthy(client, proc)
        yield ("127.0.0.1", client)
    finally:
        stop_etcd(proc)

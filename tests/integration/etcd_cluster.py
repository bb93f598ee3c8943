"""A real three-member etcd cluster on loopback, for tests of the etcd store and of HA masters.

Each member is an ``etcd`` process with its own 127.x.y.z address, free client and peer ports
and data directory under a temporary directory; the members find each other through
``--initial-cluster``. :class:`EtcdCluster` starts them, waits until every member reports
healthy (which etcd only does once a leader is elected), and can kill, restart and locate the
leader::

    with EtcdCluster(tmp_path / "etcd") as etcd:
        store = open_store(etcd.store_url())
        etcd.kill(etcd.leader())          # the store fails over to the other two members
        etcd.restart("m1")

Only the processes started here are ever signalled (by pid). They run in their own sessions
and are SIGKILLed by the kernel if the thread that started them dies (``PR_SET_PDEATHSIG``),
so a crashed pytest never leaves an etcd behind; :meth:`EtcdCluster.stop` (the context exit,
the fixture's teardown) kills and reaps them in every other case. Start the cluster from the
test's main thread (a member started from a short-lived thread dies with that thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import requests

#: prctl option: signal sent to the process when its parent thread dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class EtcdMember:
    """One member: its name, address, ports, data directory and (while it runs) process."""

    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        """``http://host:client_port``."""
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """``http://host:peer_port``."""
        return f"http://{self.host}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """``host:client_port`` (as in an ``etcd://`` store URL)."""
        return f"{self.host}:{self.client_port}"

    @property
    def log_file(self) -> Path:
        """Where the member's output goes (appended across restarts)."""
        return self.data_dir.with_suffix(".log")

    def running(self) -> bool:
        """Whether the member's process is alive."""
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """Three (or ``size``) etcd members on loopback; see the module docstring.

    Args:
        base_dir: directory for the members' data directories and logs (created).
        size: number of members.
        max_request_bytes: etcd's ``--max-request-bytes`` (largest request, default 1.5 MiB);
            tests set it small to make one write fail on purpose.
        extra_args: more etcd flags for every member.
        start: start the members now and wait until they are healthy.

    Raises:
        RuntimeError: a member exited or the cluster did not become healthy in time (the
            members started so far are killed).
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = 3,
        max_request_bytes: int | None = None,
        extra_args: list[str] | None = None,
        start: bool = True,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.token = f"corral-test-{uuid.uuid4().hex[:12]}"
        self.extra_args = list(extra_args or [])
        if max_request_bytes is not None:
            self.extra_args += ["--max-request-bytes", str(max_request_bytes)]
        net = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}"
        first = random.randint(2, 240)
        self.members: list[EtcdMember] = []
        for i in range(size):
            host = f"{net}.{first + i}"
            self.members.append(
                EtcdMember(
                    name=f"m{i + 1}",
                    host=host,
                    client_port=_free_port(host),
                    peer_port=_free_port(host),
                    data_dir=self.base_dir / f"m{i + 1}",
                )
            )
        if start:
            self.start()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start every member that is not running and wait until all are healthy.

        Raises:
            RuntimeError: see the class docstring (everything started is killed).
        """
        try:
            for member in self.members:
                if not member.running():
                    self._spawn(member)
            for member in self.members:
                self.wait_healthy(member.name)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, member: EtcdMember) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        argv = [
            "etcd",
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
            *self.extra_args,
        ]  # fmt: skip
        with open(member.log_file, "ab") as log:
            member.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # only prctl: no locks taken
            )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one member (by its pid) and reap it; its data directory stays.

        Raises:
            KeyError: no member of that name.
        """
        member = self.member(name)
        proc = member.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        member.proc = None

    def restart(self, name: str, *, wait: bool = True) -> None:
        """Start a killed member again on its data directory (it rejoins the cluster).

        Raises:
            KeyError: no member of that name.
            RuntimeError: it did not become healthy in time (``wait``).
        """
        member = self.member(name)
        if member.running():
            self.kill(name)
        self._spawn(member)
        if wait:
            self.wait_healthy(name)

    def stop(self) -> None:
        """Kill every member this object started (by pid) and reap them. Idempotent."""
        for member in self.members:
            with contextlib.suppress(Exception):
                self.kill(member.name)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- queries --------------------------------------------------------------------------

    def member(self, name: str) -> EtcdMember:
        """The member called ``name``.

        Raises:
            KeyError: no such member.
        """
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every member (``http://host:port``), running or not."""
        return [m.client_url for m in self.members]

    def store_url(self, names: list[str] | None = None) -> str:
        """The Corral store URL of the cluster: ``etcd://h1:p1,h2:p2,h3:p3``.

        Args:
            names: only these members (default: all).
        """
        chosen = [m for m in self.members if names is None or m.name in names]
        return "etcd://" + ",".join(m.endpoint for m in chosen)

    def status(self, name: str) -> dict[str, Any]:
        """etcd's maintenance status of one member (raises requests errors if it is down)."""
        member = self.member(name)
        resp = requests.post(f"{member.client_url}/v3/maintenance/status", json={}, timeout=2)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def member_ids(self) -> dict[str, str]:
        """etcd's member id of every member answering now, by name."""
        ids = {}
        for member in self.members:
            if not member.running():
                continue
            with contextlib.suppress(requests.RequestException, KeyError, ValueError):
                ids[member.name] = str(self.status(member.name)["header"]["member_id"])
        return ids

    def leader(self, timeout: float = 15) -> str:
        """The name of the current leader, waiting up to ``timeout`` s for one to be elected.

        Raises:
            RuntimeError: no leader agreed on by the running members within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            ids = self.member_ids()
            by_id = {v: k for k, v in ids.items()}
            seen = set()
            for name in ids:
                with contextlib.suppress(requests.RequestException, KeyError, ValueError):
                    seen.add(str(self.status(name).get("leader", "0")))
            if len(seen) == 1:
                (leader_id,) = seen
                if leader_id in by_id:
                    return by_id[leader_id]
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no etcd leader agreed on within {timeout}s (saw {seen})")
            time.sleep(0.1)

    def healthy(self, name: str) -> bool:
        """Whether the member answers ``/health`` with true (it sees a leader)."""
        member = self.member(name)
        try:
            resp = requests.get(f"{member.client_url}/health", timeout=1)
            return resp.ok and resp.json().get("health") == "true"
        except (requests.RequestException, ValueError):
            return False

    def wait_healthy(self, name: str, timeout: float = 30) -> None:
        """Wait until the member is healthy.

        Raises:
            RuntimeError: it exited or stayed unhealthy for ``timeout`` s (with its log tail).
        """
        member = self.member(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not member.running():
                raise RuntimeError(f"etcd member {name} exited:\n{self.log_tail(name)}")
            if self.healthy(name):
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"etcd member {name} not healthy after {timeout}s:\n{self.log_tail(name)}"
        )

    def log_tail(self, name: str, size: int = 3000) -> str:
        """The end of a member's log."""
        try:
            return self.member(name).log_file.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def keys(self, prefix: str = "") -> dict[str, bytes]:
        """Every key under ``prefix`` with its value, read from any running member.

        Raises:
            RuntimeError: no member answered.
        """
        import base64

        from corral.store.etcd import _span

        body = _span(prefix.encode())
        for member in self.members:
            if not member.running():
                continue
            try:
                resp = requests.post(f"{member.client_url}/v3/kv/range", json=body, timeout=5)
                resp.raise_for_status()
            except requests.RequestException:
                continue
            return {
                base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
                for kv in resp.json().get("kvs") or []
            }
        raise RuntimeError("no etcd member answered")

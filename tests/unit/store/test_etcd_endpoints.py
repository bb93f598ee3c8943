"""EtcdStore's endpoint failover against one real etcd and small loopback servers that
misbehave on purpose (refuse connections, or take the request and hang up without answering).

The misbehaving servers stand in for an etcd member that died at a chosen moment; the
three-member tests in ``tests/integration/test_etcd_failover.py`` kill real members.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from corral.common.errors import ErrorKind, StoreError
from corral.store.base import Compare, Delete, Put
from corral.store.etcd import EtcdStore
from corral.store.url import open_store


class HangUpServer:
    """Accepts connections on 127.0.0.1, reads the request, closes without an answer."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                self.requests += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hangup() -> Iterator[HangUpServer]:
    server = HangUpServer()
    yield server
    server.close()


def refused_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def etcd(etcd_endpoint: tuple[str, int]) -> Iterator[tuple[str, int]]:
    store = EtcdStore([etcd_endpoint])
    store.txn([], [Delete("", prefix=True)])
    store.close()
    yield etcd_endpoint


def test_refused_endpoint_is_skipped_and_the_good_one_kept(etcd: tuple[str, int]) -> None:
    store = EtcdStore([("127.0.0.1", refused_port()), etcd])
    try:
        assert store.create("/f/a", b"1")  # conditional, but never sent to the dead one
        assert store.get("/f/a") is not None
        assert store._current == 1  # the answering endpoint is used first from now on
    finally:
        store.close()


def test_lost_answer_resends_only_what_is_safe(etcd: tuple[str, int], hangup: HangUpServer) -> None:
    store = EtcdStore([("127.0.0.1", hangup.port), etcd])
    try:
        # unconditional: re-sent to the next member, applied
        store.put("/f/plain", b"x")
        assert hangup.requests == 1
        assert store.get("/f/plain") is not None
        store._current = 0  # back to the member that hangs up
        with pytest.raises(StoreError) as err:
            store.txn([Compare.absent("/f/cas")], [Put("/f/cas", b"1")])
        assert err.value.kind is ErrorKind.ENVIRONMENT
        assert err.value.fields["outcome_unknown"] is True
        assert "may or may not" in str(err.value)
        # not re-sent to the good member: the key is not there
        assert EtcdStore([etcd]).get("/f/cas") is None
        store._current = 0
        assert store.get("/f/plain") is not None  # reads are re-sent
    finally:
        store.close()


def test_no_endpoint_at_all_fails_after_retry_window() -> None:
    url = f"etcd://127.0.0.1:{refused_port()},127.0.0.1:{refused_port()}"
    store = open_store(url)
    assert isinstance(store, EtcdStore)
    store._retry_for = 1.0
    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.get("/x")
    elapsed = time.monotonic() - start
    assert err.value.kind is ErrorKind.ENVIRONMENT
    assert "cannot reach etcd" in str(err.value)
    assert 0.9 <= elapsed < 5
    store.close()

"""The distributed store: etcd v3 through its JSON gateway (client ``etcd3gw``).

Used when a cluster has several master candidates. Every :class:`Store` call is one etcd
request, so the etcd semantics carry over unchanged: the store revision is etcd's header
revision, a key's ``create_revision``/``mod_revision``/``version`` are etcd's, and
:meth:`EtcdStore.txn` is one etcd ``Txn`` (all its compares, then either branch, atomically).

Several endpoints (the members of one etcd cluster) may be given; the one that answered last
is used first. A request one member cannot serve is tried on the next, round after round, for
up to ``retry_for`` seconds, so the store survives the loss of any member, the leader
included (etcd elects a new one in 1-2 s and the others answer meanwhile). What is retried
depends on what may have happened to the request:

* *not sent* (connection refused) or *not applied* (etcd said "no leader"): always retried;
* *outcome unknown* (the member died after receiving it, or etcd's proposal timed out):
  retried for reads, watches, leases and transactions without conditions (re-applying them
  leaves the same state); a conditional transaction is not re-sent and fails with
  ``outcome_unknown=True`` (a re-sent compare-and-swap would see its own write and report
  failure), so the caller re-reads and decides.

Watch is a long poll over etcd's watch stream: open a watch from ``start_revision``, return the
first batch of events (or ``[]`` at the timeout), close the stream.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import requests
import urllib3.exceptions as urllib3_exc
from etcd3gw import exceptions as etcd_exc
from etcd3gw.client import Etcd3Client

from corral.common.errors import ErrorKind, StoreError
from corral.store.base import (
    Compare,
    Event,
    EventType,
    KeyValue,
    LeaseId,
    Op,
    Put,
    Store,
    TxnResult,
)

#: Seconds one etcd request may take before it fails (watches use their own timeout).
REQUEST_TIMEOUT = 10.0
#: Seconds a watch waits for the history batch when ``start_revision`` is in the past, even if
#: the caller's timeout is shorter (etcd sends history right after the watch is created).
HISTORY_GRACE = 0.5
#: Seconds between two rounds over every endpoint when none could serve a request.
RETRY_PAUSE = 0.2
#: etcd answers (gRPC "unavailable") meaning the request was not applied, so it may be re-sent.
NOT_APPLIED = ("etcdserver: no leader", "etcdserver: not capable", "etcdserver: too many requests")

_T = TypeVar("_T")
Endpoint = tuple[str, int]

_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}
_TARGETS = {
    "version": ("VERSION", "version"),
    "mod_revision": ("MOD", "mod_revision"),
    "create_revision": ("CREATE", "create_revision"),
    "value": ("VALUE", "value"),
}

__all__ = ["EtcdStore", "LeaseId", "parse_endpoints"]


class _Transient(Exception):
    """A request an endpoint could not serve now (another endpoint or a retry may).

    ``unknown_outcome`` is set when the request may have been applied (sent, then the
    connection broke or the request timed out).
    """

    def __init__(self, reason: str, *, unknown_outcome: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unknown_outcome = unknown_outcome


def _not_sent(exc: requests.RequestException) -> bool:
    """Whether a requests error means the connection was never established."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, (urllib3_exc.NewConnectionError, urllib3_exc.ConnectTimeoutError))


def _transient(exc: requests.RequestException) -> _Transient:
    """Classify a transport failure of a request that may have been sent."""
    if _not_sent(exc):
        return _Transient(f"cannot connect: {exc}", unknown_outcome=False)
    if isinstance(exc, requests.Timeout):
        return _Transient(f"no answer in time: {exc}", unknown_outcome=True)
    return _Transient(f"connection lost: {exc}", unknown_outcome=True)


def _error_message(text: str) -> str:
    try:
        return str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        return text


def _post_once(
    client: Etcd3Client, path: str, body: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """POST one request to one endpoint and return its JSON answer.

    Raises:
        _Transient: the endpoint cannot serve it now (see :meth:`EtcdStore._call`).
        etcd3gw.exceptions.Etcd3Exception: etcd refused the request.
        ValueError: the answer is not a JSON object.
    """
    try:
        resp = client.session.post(client.get_url(path), data=json.dumps(body), timeout=timeout)
    except requests.RequestException as exc:
        raise _transient(exc) from exc
    if resp.status_code == 200:
        result: Any = resp.json()
        if not isinstance(result, dict):
            raise ValueError(f"unexpected etcd answer {result!r}")
        return result
    message = _error_message(resp.text)
    if resp.status_code in (503, 504, 408) or message.startswith("etcdserver: request timed out"):
        applied = not any(message.startswith(m) for m in NOT_APPLIED)
        raise _Transient(f"{resp.status_code} {message}", unknown_outcome=applied)
    raise etcd_exc.Etcd3Exception(resp.text, resp.reason)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _prefix_end(prefix: bytes) -> bytes:
    """The etcd range end covering every key starting with ``prefix`` (NUL: to the end)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _span(prefix: bytes) -> dict[str, str]:
    """The etcd ``key``/``range_end`` pair selecting every key under ``prefix`` ("" = all)."""
    return {"key": _b64(prefix or b"\0"), "range_end": _b64(_prefix_end(prefix))}


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(raw.get("key")).decode("utf-8"),
        value=_unb64(raw.get("value")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
    )


def parse_endpoints(spec: str) -> list[Endpoint]:
    """Parse ``host:port[,host:port...]`` (the part of an ``etcd://`` URL after the scheme).

    Raises:
        StoreError: an empty list, a missing or non-numeric port (kind INVALID).
    """
    endpoints: list[Endpoint] = []
    for item in spec.strip().strip("/").split(","):
        host, sep, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StoreError(
                f"bad etcd endpoint {item!r} (expected host:port)",
                kind=ErrorKind.INVALID,
                endpoint=item,
            )
        endpoints.append((host, int(port)))
    return endpoints


def _compare_json(c: Compare) -> dict[str, Any]:
    target, field = _TARGETS[c.target]
    if c.target == "value":
        if not isinstance(c.value, bytes):
            raise StoreError(f"value compare on {c.key} needs bytes", kind=ErrorKind.INVALID)
        value: Any = _b64(c.value)
    else:
        if not isinstance(c.value, int):
            raise StoreError(f"{c.target} compare on {c.key} needs an int", kind=ErrorKind.INVALID)
        value = c.value
    return {
        "key": _b64(c.key.encode()),
        "result": _RESULTS[c.op],
        "target": target,
        field: value,
    }


def _op_json(op: Op) -> dict[str, Any]:
    key = op.key.encode()
    if isinstance(op, Put):
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(op.value)}
        if op.lease:
            put["lease"] = op.lease
        return {"request_put": put}
    delete: dict[str, Any] = _span(key) if op.prefix else {"key": _b64(key)}
    return {"request_delete_range": delete}


class EtcdStore(Store):
    """A :class:`Store` on an etcd v3 cluster (thread-safe)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        timeout: float = REQUEST_TIMEOUT,
        retry_for: float | None = None,
    ) -> None:
        """Connect lazily to ``endpoints`` (nothing is contacted until the first call).

        Args:
            endpoints: the etcd members' client addresses, tried in this order.
            timeout: seconds one request to one member may take.
            retry_for: seconds during which a request that no member could serve is tried
                again, round after round (default: ``timeout``); an etcd election takes
                about 1-2 s, so this covers the loss of the leader.

        Raises:
            StoreError: no endpoint given (kind INVALID).
        """
        if not endpoints:
            raise StoreError("no etcd endpoint given", kind=ErrorKind.INVALID)
        self.endpoints = list(endpoints)
        self._timeout = timeout
        self._retry_for = timeout if retry_for is None else retry_for
        self._lock = threading.Lock()
        self._clients = [
            Etcd3Client(host=h, port=p, timeout=timeout, api_path="/v3/") for h, p in endpoints
        ]
        self._current = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"EtcdStore({self._names()})"

    def _names(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    # --- transport ------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[Etcd3Client], _T], *, idempotent: bool = True) -> _T:
        """Run ``fn`` on the current endpoint, failing over to the others.

        Failures are sorted into three kinds (see the module docstring): *not sent* (the
        connection was refused) and *not applied* (etcd answered "no leader" or "not
        capable", e.g. during an election) are retried on the next endpoint, round after
        round with a short pause, until ``retry_for`` seconds have passed; *unknown outcome*
        (the connection broke after the request was sent, the request or etcd's proposal
        timed out) is retried the same way only if ``idempotent`` (reads, unconditional
        writes, leases) and raised at once otherwise.

        Raises:
            StoreError: no endpoint could serve the request in time (kind ENVIRONMENT); a
                non-idempotent request's outcome is unknown (ENVIRONMENT, field
                ``outcome_unknown=True``; it may or may not have been applied); etcd refused
                the request (compacted revision: WRONG_STATE; unknown lease: NOT_FOUND;
                duplicate key in a txn or future revision: INVALID; otherwise FAULT).
        """
        if self._closed:
            raise StoreError("etcd store is closed", kind=ErrorKind.WRONG_STATE)
        with self._lock:
            start = self._current
        deadline = time.monotonic() + self._retry_for
        errors: dict[str, str] = {}
        count = len(self._clients)
        attempt = 0
        while True:
            idx = (start + attempt) % count
            client = self._clients[idx]
            endpoint = f"{client.host}:{client.port}"
            attempt += 1
            try:
                result = fn(client)
            except _Transient as exc:
                errors[endpoint] = exc.reason
                if exc.unknown_outcome and not idempotent:
                    raise StoreError(
                        f"etcd {what} at {endpoint} failed ({exc.reason}); it may or may not "
                        "have been applied",
                        kind=ErrorKind.ENVIRONMENT,
                        endpoint=endpoint,
                        outcome_unknown=True,
                    ) from exc
                if time.monotonic() >= deadline:
                    break
                if attempt % count == 0:
                    time.sleep(RETRY_PAUSE)
                continue
            except etcd_exc.Etcd3Exception as exc:
                raise _refused(what, endpoint, exc.detail_text or str(exc)) from exc
            except (requests.RequestException, ValueError, KeyError) as exc:
                raise StoreError(
                    f"etcd {what} at {endpoint} failed: {exc}",
                    kind=ErrorKind.FAULT,
                    endpoint=endpoint,
                ) from exc
            if idx != start:
                with self._lock:
                    self._current = idx
            return result
        raise StoreError(
            f"cannot reach etcd for {what} at {self._names()} within {self._retry_for:g}s: "
            + "; ".join(f"{ep}: {why}" for ep, why in errors.items()),
            kind=ErrorKind.ENVIRONMENT,
            endpoints=self._names(),
        )

    def _post(
        self, what: str, path: str, body: dict[str, Any], *, idempotent: bool = True
    ) -> dict[str, Any]:
        def run(client: Etcd3Client) -> dict[str, Any]:
            return _post_once(client, path, body, self._timeout)

        return self._call(what, run, idempotent=idempotent)

    # --- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        """See :meth:`Store.get`."""
        res = self._post("get", "/kv/range", {"key": _b64(key.encode())})
        kvs = res.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def range(self, prefix: str) -> list[KeyValue]:
        """See :meth:`Store.range`."""
        key = prefix.encode()
        res = self._post("range", "/kv/range", _span(key))
        return sorted((_kv(raw) for raw in res.get("kvs") or []), key=lambda kv: kv.key)

    @property
    def revision(self) -> int:
        """See :meth:`Store.revision` (etcd's header revision)."""
        res = self._post("revision", "/kv/range", {"key": _b64(b"\0"), "count_only": True})
        return int(res["header"]["revision"])

    # --- writes ---------------------------------------------------------------------------

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """See :meth:`Store.txn`.

        A conditional transaction whose answer was lost (the member died after receiving it,
        or etcd's proposal timed out during an election) raises StoreError with
        ``outcome_unknown=True`` instead of being re-sent. Unlike SQLite, etcd refuses a
        transaction that writes the same key twice (kind INVALID) and does not bump the
        revision for a delete of a missing key.
        """
        body = {
            "compare": [_compare_json(c) for c in compare],
            "success": [_op_json(op) for op in success],
            "failure": [_op_json(op) for op in failure],
        }
        # NOTE: a transaction without conditions may be re-sent after a lost answer (applying
        # the same puts/deletes twice leaves the same keys); a conditional one may not (the
        # second attempt would see its own writes and report the compare as failed).
        res = self._post("txn", "/kv/txn", body, idempotent=not compare)
        return TxnResult(bool(res.get("succeeded", False)), int(res["header"]["revision"]))

    def compact(self, revision: int) -> None:
        """Discard the history before ``revision`` (watches from older revisions then fail).

        Raises:
            StoreError: etcd refused (already compacted past it, future revision) or is
                unreachable.
        """
        self._post("compact", "/kv/compaction", {"revision": revision, "physical": True})

    # --- leases ---------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> LeaseId:
        """See :meth:`Store.lease_grant`."""
        if ttl <= 0:
            raise StoreError(f"lease TTL must be positive, not {ttl}", kind=ErrorKind.INVALID)
        res = self._post("lease grant", "/lease/grant", {"TTL": ttl, "ID": 0})
        return LeaseId(int(res["ID"]))

    def lease_refresh(self, lease: LeaseId) -> int:
        """See :meth:`Store.lease_refresh`."""
        res = self._post("lease refresh", "/lease/keepalive", {"ID": lease})
        ttl = int(res.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise StoreError(f"lease {lease} expired", kind=ErrorKind.NOT_FOUND, lease=lease)
        return ttl

    def lease_revoke(self, lease: LeaseId) -> None:
        """See :meth:`Store.lease_revoke`."""
        self._post("lease revoke", "/kv/lease/revoke", {"ID": lease})

    # --- watch ----------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, timeout: float) -> list[Event]:
        """See :meth:`Store.watch`.

        When ``start_revision`` is not after the current revision, waits at least
        :data:`HISTORY_GRACE` seconds for etcd to send the history, even with a shorter
        ``timeout``.
        """
        key = prefix.encode()
        request = {"create_request": {**_span(key), "start_revision": max(start_revision, 1)}}

        def run(client: Etcd3Client) -> list[Event]:
            return _watch_once(client, request, start_revision, timeout, self._timeout)

        return self._call("watch", run)

    def close(self) -> None:
        """See :meth:`Store.close`."""
        self._closed = True
        for client in self._clients:
            client.session.close()


def _refused(what: str, endpoint: str, detail: str) -> StoreError:
    try:
        message = str(json.loads(detail).get("message", detail))
    except (ValueError, AttributeError):
        message = detail
    kind = ErrorKind.FAULT
    if "compacted" in message:
        kind = ErrorKind.WRONG_STATE
    elif "not found" in message:
        kind = ErrorKind.NOT_FOUND
    elif "duplicate key" in message or "future revision" in message:
        kind = ErrorKind.INVALID
    return StoreError(f"etcd {what} at {endpoint} refused: {message}", kind=kind, endpoint=endpoint)


def _watch_once(
    client: Etcd3Client,
    request: dict[str, Any],
    start_revision: int,
    timeout: float,
    connect_timeout: float,
) -> list[Event]:
    """Open one watch stream, return its first batch of events or [] at the deadline.

    Raises:
        _Transient: the member cannot serve the watch now (the caller tries another);
        etcd3gw.exceptions.Etcd3Exception: etcd refused the watch; StoreError: WRONG_STATE
        when etcd reports the start revision compacted.
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    url = client.get_url("/watch")
    session = requests.Session()
    resp: requests.Response | None = None
    try:
        try:
            resp = session.post(
                url, json=request, stream=True, timeout=(connect_timeout, max(timeout, 0.05) + 1)
            )
        except requests.RequestException as exc:
            raise _transient(exc) from exc
        if resp.status_code in (503, 504, 408):
            raise _Transient(
                f"{resp.status_code} {_error_message(resp.text)}", unknown_outcome=True
            )
        if resp.status_code != 200:
            raise etcd_exc.Etcd3Exception(resp.text, resp.reason)
        sock = _socket_of(resp)
        chunks = resp.iter_content(chunk_size=None)
        buf = b""
        created = False
        while True:
            line, _, buf = buf.partition(b"\n") if b"\n" in buf else (b"", b"", buf)
            if line.strip():
                result = json.loads(line).get("result", {})
                if int(result.get("compact_revision", 0)) > 0:
                    raise StoreError(
                        f"revision {start_revision} was compacted",
                        kind=ErrorKind.WRONG_STATE,
                        compacted=int(result["compact_revision"]),
                    )
                if result.get("created"):
                    created = True
                    if start_revision <= int(result.get("header", {}).get("revision", 0)):
                        deadline = max(deadline, time.monotonic() + HISTORY_GRACE)
                events = result.get("events") or []
                if events:
                    return [_event(e) for e in events]
                if result.get("canceled"):
                    raise StoreError(
                        f"etcd canceled the watch: {result.get('cancel_reason', '')}",
                        kind=ErrorKind.FAULT,
                    )
                continue
            # until etcd confirms the watch (or refuses it), wait up to the request timeout
            remaining = deadline - time.monotonic() if created else connect_timeout
            if remaining <= 0:
                return []
            if sock is not None:
                sock.settimeout(remaining)
            try:
                chunk = next(chunks, b"")
            except (requests.RequestException, OSError) as exc:
                if created and ("timed out" in str(exc) or time.monotonic() >= deadline):
                    return []
                raise _Transient(f"watch stream broke: {exc}", unknown_outcome=True) from exc
            if not chunk:
                raise _Transient("etcd closed the watch stream", unknown_outcome=True)
            buf += chunk
    finally:
        if resp is not None:
            resp.close()
        session.close()


def _socket_of(resp: requests.Response) -> Any:
    """The socket under a streamed response (to set per-read deadlines), or None."""
    try:
        return resp.raw._fp.fp.raw._sock
    except AttributeError:
        return None


def _event(raw: dict[str, Any]) -> Event:
    kv = raw.get("kv", {})
    etype = EventType.DELETE if raw.get("type") == "DELETE" else EventType.PUT
    value = b"" if etype is EventType.DELETE else _unb64(kv.get("value"))
    return Event(etype, _unb64(kv.get("key")).decode("utf-8"), value, int(kv["mod_revision"]))

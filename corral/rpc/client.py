"""The master's side of the RPC: call node daemons over HTTPS with mutual TLS.

::

    client = RpcClient.from_paths(paths)
    info = await client.call(NodeAddress("n1", "127.0.0.2", 1811), NODE_INFO, NodeInfoRequest())
    answers = await client.call_many(nodes, VERSION, Empty())   # {name: response | error}
    await client.aclose()

The client trusts only the cluster CA and presents this host's node certificate. It checks the
node's certificate against the node's *name* (sent as TLS server name), so a node cannot answer
for another one even at the right address.

Errors (translated once, here, from httpx and ssl; see the module docstring of
``corral.common.errors``)::

    the node's own CorralError      rebuilt by error_from_wire (type from the allow-list, kind,
                                    message, fields) plus fields node= and call=
    RpcError(kind ENVIRONMENT)      node unreachable, TLS refused either way, no answer in time
    RpcError(kind FAULT)            the node's answer is not a valid envelope / response model

Every RpcError carries the fields ``node``, ``call``, ``host``, ``port`` and ``reason`` (one of
``unreachable``, ``tls_server_rejected``, ``tls_client_rejected``, ``timeout``, ``protocol``),
and a message an administrator understands, e.g.
``node n1 (127.0.0.2:1811) unreachable: connection refused``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import ssl
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from corral.common.errors import CorralError, ErrorKind, RpcError
from corral.common.paths import Paths
from corral.rpc import codec, tls
from corral.rpc.calls import Call, Msg

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Msg)
Resp = TypeVar("Resp", bound=Msg)

#: Longest time spent connecting (TCP + TLS handshake), whatever the call's timeout.
CONNECT_TIMEOUT = 10.0

#: Extra seconds before the overall deadline cancels a call httpx has not timed out itself.
_BACKSTOP = 5.0

#: TLS alerts a server sends when it does not accept our client certificate.
_CLIENT_CERT_ALERTS = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_ACCESS_DENIED",
    "ALERT_DECRYPT_ERROR",
    "ALERT_HANDSHAKE_FAILURE",
)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where a node daemon listens; ``name`` must be the name in the node's certificate."""

    name: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"node {self.name} ({host}:{self.port})"

    @property
    def base_url(self) -> str:
        """``https://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def _http_client(ctx: ssl.SSLContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=ctx,
        trust_env=False,  # NOTE: never send cluster RPC through an HTTP(S)_PROXY
        timeout=httpx.Timeout(60.0, connect=CONNECT_TIMEOUT),
        headers={"content-type": "application/json", "user-agent": "corral-rpc"},
    )


class RpcClient:
    """Calls node daemons; one instance is shared by all the master's operations.

    Args:
        ca_cert: the cluster CA (node certificates must be signed by it).
        cert: our certificate (a node certificate from the same CA).
        key: its private key.
        crl: the CA's revocation list; nodes whose certificate it lists are refused. The
            file may appear or change later: the client rereads it (and the other files)
            before the next call when it changed.

    Raises:
        TlsError: a file is missing or invalid.
    """

    def __init__(self, *, ca_cert: str, cert: str, key: str, crl: str | None = None) -> None:
        watch = [f for f in (crl, ca_cert, cert) if f]
        self._reloading: tls.ReloadingContext | None = tls.ReloadingContext(
            lambda: tls.client_context_from_files(ca_cert=ca_cert, cert=cert, key=key, crl=crl),
            watch,
        )
        self._ssl = self._reloading.get()
        self._http = _http_client(self._ssl)
        self._retired: list[httpx.AsyncClient] = []

    @classmethod
    def from_paths(cls, paths: Paths) -> Self:
        """A client with this host's CA, node certificate and CRL (``paths.ca_cert`` ...).

        Raises:
            TlsError: a file is missing or invalid.
        """
        return cls(ca_cert=paths.ca_cert, cert=paths.node_cert, key=paths.node_key, crl=paths.crl)

    @classmethod
    def pinned(cls, server_cert_pem: bytes) -> Self:
        """A client trusting exactly one server certificate, presenting none (join calls).

        Raises:
            TlsError: not a usable certificate.
        """
        client = cls.__new__(cls)
        client._reloading = None
        client._ssl = tls.pinned_client_context(server_cert_pem)
        client._http = _http_client(client._ssl)
        client._retired = []
        return client

    def _current_http(self) -> httpx.AsyncClient:
        if self._reloading is not None:
            ctx = self._reloading.get()
            if ctx is not self._ssl:
                # NOTE: calls running on the old connections finish there; new calls use the
                # new settings (e.g. a node just revoked is refused from now on).
                self._retired.append(self._http)
                self._ssl, self._http = ctx, _http_client(ctx)
        return self._http

    async def aclose(self) -> None:
        """Close all connections; the client cannot be used afterwards."""
        for http in [*self._retired, self._http]:
            await http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def call(
        self,
        node: NodeAddress,
        call: Call[Req, Resp],
        request: Req,
        *,
        timeout: float | None = None,
    ) -> Resp:
        """Run ``call`` on ``node`` and return its response.

        Args:
            node: the node to call.
            call: the call (from ``corral.rpc.calls``).
            request: an instance of ``call.request``.
            timeout: seconds to wait for the whole call; default ``call.timeout``.

        Raises:
            CorralError: the node's own error, rebuilt (with fields ``node`` and ``call``).
            RpcError: unreachable, TLS refused, timeout, or an invalid answer (see module doc).
        """
        limit = call.timeout if timeout is None else timeout
        body = codec.encode_request(call, request)
        start = time.monotonic()
        log.debug("--> %s %s (timeout %gs)", node, call.name, limit)
        connect_limit = min(limit, CONNECT_TIMEOUT)
        try:
            # NOTE: httpx's own timeouts do the work (connect, then each read/write: the node
            # sends nothing until the call is done, so the read timeout bounds the call).
            # asyncio.timeout is only a backstop for a peer trickling bytes: cancelling httpcore
            # in the middle of a TLS handshake leaks the socket (httpcore 1.0).
            async with asyncio.timeout(limit + _BACKSTOP):
                response = await self._current_http().post(
                    f"{node.base_url}/rpc/{call.name}",
                    content=body,
                    timeout=httpx.Timeout(limit, connect=connect_limit),
                    # NOTE: the server name is the node's name, so TLS checks the certificate
                    # against the name (a DNS SAN), not against whatever address we dialed.
                    extensions={"sni_hostname": node.name},
                )
        except TimeoutError as exc:
            raise _timeout_error(node, call, limit) from exc
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise _error(
                    node,
                    call,
                    "unreachable",
                    f"unreachable: no connection (TCP and TLS) within {connect_limit:g}s",
                ) from exc
            raise _timeout_error(node, call, limit) from exc
        except (httpx.TransportError, ssl.SSLError, OSError) as exc:
            # NOTE: httpcore's anyio backend lets ssl.SSLError raised while *reading* escape
            # unwrapped; that is where a TLS 1.3 server's "unknown ca" alert shows up.
            raise _transport_error(node, call, exc) from exc
        elapsed = time.monotonic() - start
        log.debug("<-- %s %s: HTTP %d in %.3fs", node, call.name, response.status_code, elapsed)
        try:
            answer = codec.decode_answer(call, response.content, peer=str(node))
        except RpcError as exc:
            exc.fields.update(node=node.name, host=node.host, port=node.port, reason="protocol")
            exc.fields["http_status"] = response.status_code
            raise
        if isinstance(answer, CorralError):
            answer.fields.setdefault("node", node.name)
            answer.fields.setdefault("call", call.name)
            raise answer
        return answer

    async def call_many(
        self,
        nodes: Iterable[NodeAddress],
        call: Call[Req, Resp],
        request: Req,
        *,
        timeout: float | None = None,
    ) -> dict[str, Resp | CorralError]:
        """Run the same call on several nodes at once.

        Returns:
            For each node name, its response or the :class:`CorralError` it ended with
            (unreachable nodes give an :class:`RpcError`). Nothing is raised for a node's
            failure; other exceptions (bugs, cancellation) propagate.
        """
        targets = list(nodes)

        async def one(node: NodeAddress) -> Resp | CorralError:
            try:
                return await self.call(node, call, request, timeout=timeout)
            except CorralError as exc:
                return exc

        results = await asyncio.gather(*(one(n) for n in targets))
        return {n.name: r for n, r in zip(targets, results, strict=True)}


# --- error translation -------------------------------------------------------------------------


def _error(node: NodeAddress, call: Call[Any, Any], reason: str, text: str) -> RpcError:
    return RpcError(
        f"{node} {text}",
        kind=ErrorKind.ENVIRONMENT,
        node=node.name,
        call=call.name,
        host=node.host,
        port=node.port,
        reason=reason,
    )


def _timeout_error(node: NodeAddress, call: Call[Any, Any], limit: float) -> RpcError:
    err = _error(node, call, "timeout", f"did not answer call {call.name} within {limit:g}s")
    err.fields["timeout"] = limit
    return err


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _transport_error(node: NodeAddress, call: Call[Any, Any], exc: Exception) -> RpcError:
    """Name what went wrong below HTTP: refused, TLS rejected by either side, reset."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _error(node, call, "tls_server_rejected", _server_cert_text(node, cause))
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or ""
            if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
                return _error(
                    node,
                    call,
                    "tls_client_rejected",
                    f"refused our certificate (TLS alert: {_alert_text(reason)}; "
                    "is the node in another cluster, or our certificate outdated?)",
                )
            return _error(node, call, "unreachable", f"TLS handshake failed ({cause})")
        if isinstance(cause, ConnectionRefusedError):
            return _error(node, call, "unreachable", "unreachable: connection refused")
        if isinstance(cause, ConnectionResetError | BrokenPipeError):
            # NOTE: with TLS 1.3 the client finishes its handshake before the server has
            # checked our certificate; a server that rejects it may just reset the connection.
            return _error(
                node,
                call,
                "unreachable",
                "closed the connection (connection reset; did it refuse our certificate?)",
            )
        if isinstance(cause, OSError) and cause.errno is not None:
            text = cause.strerror or errno.errorcode.get(cause.errno, str(cause.errno))
            return _error(node, call, "unreachable", f"unreachable: {text.lower()}")
    if isinstance(exc, httpx.RemoteProtocolError):
        return _error(
            node,
            call,
            "unreachable",
            "closed the connection without answering "
            "(did it refuse our certificate, or crash while running the call?)",
        )
    if isinstance(exc, httpx.ConnectError):
        return _error(node, call, "unreachable", f"unreachable: {exc}")
    return _error(node, call, "unreachable", f"connection failed: {exc}")


#: OpenSSL verify codes meaning "not issued by a CA we trust".
_UNTRUSTED_CODES = frozenset({18, 19, 20, 21})
_HOSTNAME_MISMATCH = 62


def _server_cert_text(node: NodeAddress, exc: ssl.SSLCertVerificationError) -> str:
    why = exc.verify_message or str(exc)
    if exc.verify_code == _HOSTNAME_MISMATCH:
        return (
            f"presented a certificate that is not for {node.name} "
            "(is another node at this address?)"
        )
    if exc.verify_code in _UNTRUSTED_CODES:
        return f"presented a certificate not signed by our cluster CA ({why})"
    return f"presented a certificate we do not accept ({why})"


def _alert_text(reason: str) -> str:
    """``TLSV1_ALERT_UNKNOWN_CA`` -> ``unknown ca``."""
    return reason.split("ALERT_", 1)[-1].replace("_", " ").lower()

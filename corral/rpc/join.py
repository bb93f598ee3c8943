"""The master's side of joining a node (the protocol is in ``rpc/calls_nodes.py``).

:func:`join_node` talks to a node daemon in join mode: it pins the certificate the node shows,
checks with the join token that this certificate is the node's own, checks the version,
has the node's key certified by the cluster CA and sends the cluster files. It changes
nothing on the master; the caller stores the node once this returns.

Errors::

    RpcError (ENVIRONMENT, reason unreachable)   the node cannot be reached / no TLS there
    RpcError (ENVIRONMENT)                       the node does not answer join calls
    CorralError (WRONG_STATE)                    the node is not waiting to join (no token)
    TlsError (INVALID)                           wrong token, or a man in the middle
    whatever ``check_version`` raises            another software version
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Callable

import corral
from corral.common.errors import CorralError, ErrorKind, RpcError, TlsError
from corral.rpc import tls
from corral.rpc.calls_nodes import (
    JOIN_FINISH,
    JOIN_HELLO,
    ClusterFile,
    JoinFinishRequest,
    JoinHelloRequest,
    join_mac,
    mac_ok,
)
from corral.rpc.client import CONNECT_TIMEOUT, NodeAddress, RpcClient

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Joined:
    """What a successful join produced."""

    cert_serial: int
    software_version: str
    protocol_version: int


def _bad_token(node: NodeAddress, why: str) -> TlsError:
    return TlsError(
        f"{node}: the join token does not match ({why}); check the token printed by "
        "'corral-noded --join' on that host",
        kind=ErrorKind.INVALID,
        node=node.name,
        host=node.host,
        port=node.port,
    )


async def join_node(
    node: NodeAddress,
    *,
    token: str,
    addresses: list[str],
    ca_pem: bytes,
    sign_csr: Callable[[bytes], tuple[bytes, int]],
    files: list[ClusterFile],
    check_version: Callable[[str, int], None],
) -> Joined:
    """Join the node daemon at ``node`` (in join mode) to the cluster.

    Args:
        node: name the node will have, and where its daemon listens.
        token: the node's join token.
        addresses: the node's IP addresses (its certificate's SANs).
        ca_pem: the cluster CA certificate.
        sign_csr: issues a certificate for a CSR: returns (PEM, serial).
        files: the cluster files to install on the node.
        check_version: raises when the node's (software version, protocol) is unacceptable.

    Returns:
        The serial of the certificate issued and the node's version.

    Raises:
        See the module docstring. Before the finish call nothing is sent to the node but
        the hello, so on any of these errors the node is still waiting to join.
    """
    pem = await asyncio.to_thread(
        tls.fetch_server_certificate, node.host, node.port, timeout=CONNECT_TIMEOUT
    )
    seen = tls.pem_fingerprint(pem)
    async with RpcClient.pinned(pem) as client:
        hello = JoinHelloRequest(
            node_name=node.name,
            addresses=addresses,
            master_nonce=secrets.token_hex(16),
            master_version=corral.__version__,
        )
        try:
            answer = await client.call(node, JOIN_HELLO, hello)
        except RpcError as exc:
            if exc.fields.get("reason") in ("tls_client_rejected", "unreachable", "protocol"):
                raise RpcError(
                    f"{node} does not answer join calls ({exc}); is corral-noded running "
                    "there with --join, and not a node of a cluster already?",
                    kind=ErrorKind.ENVIRONMENT,
                    node=node.name,
                    host=node.host,
                    port=node.port,
                    reason=exc.fields.get("reason"),
                ) from exc
            raise
        if not mac_ok(join_mac(token, "hello", hello, answer), answer.mac):
            raise _bad_token(node, "the node's answer is not authenticated by it")
        if answer.cert_fingerprint != seen:
            raise _bad_token(node, "the certificate we were shown is not the node's")
        check_version(answer.software_version, answer.protocol_version)
        cert_pem, serial = sign_csr(answer.csr_pem.encode("ascii"))
        finish = JoinFinishRequest(
            node_name=node.name,
            node_nonce=answer.node_nonce,
            cert_pem=cert_pem.decode("ascii"),
            ca_pem=ca_pem.decode("ascii"),
            files=files,
            mac="",
        )
        finish.mac = join_mac(token, "finish", answer.mac, finish)
        done = await client.call(node, JOIN_FINISH, finish)
        if done.node_name != node.name or not mac_ok(join_mac(token, "done", finish.mac), done.mac):
            raise CorralError(
                f"{node} confirmed the join without proof of the token",
                kind=ErrorKind.FAULT,
                node=node.name,
            )
    log.info("node %s joined (certificate serial %x)", node.name, serial)
    return Joined(serial, answer.software_version, answer.protocol_version)

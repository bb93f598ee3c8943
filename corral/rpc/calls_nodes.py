"""RPC calls of the nodes area: joining a cluster, cluster files, leaving.

Two kinds of calls live here.

**Join calls** (:data:`JOIN_CALLS`, *not* in :data:`~corral.rpc.calls.CALLS`) are the only
calls a node in join mode serves (``corral-noded --join``). The node has no cluster
certificate yet, so the TLS channel cannot be authenticated by the CA. Instead both sides
share a one-time *join token* (printed on the node, typed into ``corral node add`` by the
administrator) and authenticate every message with HMAC-SHA256 keyed by it::

    master                                              node (join mode, bootstrap cert B)
      | fetch the certificate the server presents (B'), pin it for the calls below
      | -- node_join_hello {node_name, addresses, master_nonce, master_version} -------->|
      |<-- {version, fingerprint(B), CSR, node_nonce, mac_hello} ------------------------|
      |    check mac_hello = HMAC(token, "hello", request, response) and B' == B
      |    (a man in the middle presents B' != B; without the token he cannot forge
      |    mac_hello over B'), check the version, sign the CSR with the cluster CA
      | -- node_join_finish {cert, CA, files, node_nonce, mac_finish} ------------------>|
      |    node checks mac_finish = HMAC(token, "finish", mac_hello, request), the cert
      |    (our key, our name, issued by that CA), installs it all, forgets the token
      |<-- {node_name, mac_done = HMAC(token, "done", mac_finish)} ----------------------|

The node's private key never leaves the node (only the CSR does); the CA key and other
master files travel inside TLS to the pinned certificate, i.e. only to the holder of the
bootstrap key the token vouched for.

**Membership calls** (registered, served over mutual TLS by a joined node):
``node_write_files`` (install/remove cluster files from the whitelist of
:data:`CLUSTER_FILE_NAMES`) and ``node_leave`` (drop the cluster identity, back to join mode).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from pydantic import Field

from corral.rpc.calls import Call, Empty, Msg, register_calls

#: Logical names of the files a master may write on a node, and who gets them
#: (``True``: master candidates only). The node maps them to its own paths.
CLUSTER_FILE_NAMES: dict[str, bool] = {
    "ca_cert": False,
    "crl": False,
    "cluster_conf": False,
    "ca_key": True,
    "rapi_cert": True,
    "rapi_users": True,
}

#: Environment variable that makes a joining node report another software version.
#: For tests of the version check only (``corral-noded --join`` under this variable).
TEST_VERSION_ENV = "CORRAL_TEST_OVERRIDE_VERSION"


class ClusterFile(Msg):
    """One cluster file: its logical name (see :data:`CLUSTER_FILE_NAMES`) and content."""

    name: str
    data: str  # base64

    @classmethod
    def of(cls, name: str, content: bytes) -> ClusterFile:
        """Wrap ``content`` (bytes) for the wire."""
        return cls(name=name, data=base64.b64encode(content).decode("ascii"))

    def content(self) -> bytes:
        """The file's bytes.

        Raises:
            ValueError: ``data`` is not valid base64.
        """
        return base64.b64decode(self.data.encode("ascii"), validate=True)


class JoinHelloRequest(Msg):
    """The master introduces itself and the name and addresses the node will have."""

    node_name: str
    addresses: list[str]
    master_nonce: str
    master_version: str


class JoinHelloResponse(Msg):
    """The node's version, bootstrap certificate fingerprint, CSR, nonce and MAC."""

    software_version: str
    protocol_version: int
    cert_fingerprint: str
    csr_pem: str
    node_nonce: str
    mac: str


class JoinFinishRequest(Msg):
    """The node's certificate, the cluster CA and the cluster files, authenticated."""

    node_name: str
    node_nonce: str
    cert_pem: str
    ca_pem: str
    files: list[ClusterFile] = Field(default_factory=list)
    mac: str


class JoinFinishResponse(Msg):
    """The node confirms it installed everything (the MAC proves it is the token holder)."""

    node_name: str
    mac: str


class WriteFilesRequest(Msg):
    """Cluster files to install and logical names of files to remove."""

    files: list[ClusterFile] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


class WriteFilesResponse(Msg):
    """What the node wrote and removed (logical names)."""

    written: list[str]
    removed: list[str]


class NodeLeaveRequest(Msg):
    """Why the node is told to leave (for its log)."""

    reason: str = ""


# --- message authentication --------------------------------------------------------------------


def _canonical(part: Msg | dict[str, Any] | str) -> bytes:
    if isinstance(part, str):
        return part.encode()
    data = part.model_dump(mode="json") if isinstance(part, Msg) else part
    data = {k: v for k, v in data.items() if k != "mac"}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def join_mac(token: str, label: str, *parts: Msg | dict[str, Any] | str) -> str:
    """HMAC-SHA256 (hex) keyed by the join token over a label and messages.

    Each message is serialised canonically (sorted JSON, its ``mac`` field left out), so
    both sides compute the same value from the models they sent and received.
    """
    mac = hmac.new(token.encode(), digestmod=hashlib.sha256)
    mac.update(b"corral-join/" + label.encode())
    for part in parts:
        encoded = _canonical(part)
        mac.update(len(encoded).to_bytes(8, "big"))
        mac.update(encoded)
    return mac.hexdigest()


def mac_ok(expected: str, got: str) -> bool:
    """Constant-time comparison of two MACs."""
    return hmac.compare_digest(expected.encode(), got.encode())


JOIN_HELLO = Call("node_join_hello", JoinHelloRequest, JoinHelloResponse, 30)
JOIN_FINISH = Call("node_join_finish", JoinFinishRequest, JoinFinishResponse, 60)
#: The calls a node in join mode serves (and nothing else).
JOIN_CALLS: dict[str, Call[Any, Any]] = {c.name: c for c in (JOIN_HELLO, JOIN_FINISH)}


class NodePowercycleRequest(Msg):
    """Hard-reset the node (Ganeti's ``node powercycle``) after answering.

    ``hypervisor`` is the cluster's default hypervisor, whose driver knows how to reset the
    machine (``Hypervisor.powercycle_node``); empty: Linux's way. ``delay`` is how long the
    node waits after answering, so the answer reaches the master first.
    """

    hypervisor: str = ""
    delay: float = Field(default=1.0, ge=0.0, le=60.0)


class NodePowercycleResponse(Msg):
    """What the node is about to do."""

    message: str


NODE_WRITE_FILES = Call("node_write_files", WriteFilesRequest, WriteFilesResponse, 60)
NODE_LEAVE = Call("node_leave", NodeLeaveRequest, Empty, 30)
NODE_POWERCYCLE = Call("node_powercycle", NodePowercycleRequest, NodePowercycleResponse, 30)

register_calls(NODE_WRITE_FILES, NODE_LEAVE, NODE_POWERCYCLE)

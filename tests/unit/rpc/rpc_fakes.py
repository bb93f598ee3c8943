"""Test doubles for the RPC tests.

``FakeBackend`` is a FAKE node backend: it stands in for ``corral.node.backend.NodeBackend``
(written in parallel by another engineer) so the transport can be tested on its own. It answers
``version`` and ``node_info`` from real host facts, raises real CorralErrors for a few inputs,
sleeps on request (to test timeouts), and refuses every other call. The RPC server, client,
codec and TLS around it are all real.
"""

from __future__ import annotations

import os
import time
from typing import Any

import corral
from corral.common.errors import CorralError, ErrorKind, HypervisorError
from corral.common.paths import Paths
from corral.rpc import tls
from corral.rpc.calls import (
    CALLS,
    Empty,
    HooksRunRequest,
    HooksRunResponse,
    InstanceInfoRequest,
    InstanceInfoResponse,
    NodeInfoRequest,
    NodeInfoResponse,
    VersionResponse,
)


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
        return fh.read().strip()


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) // 1024
    return out


class FakeBackend:
    """A FAKE NodeBackend (see the module docstring); constructed like the real one."""

    def __init__(self, paths: Paths, node_name: str) -> None:
        self.paths = paths
        self.node_name = node_name
        self.seen: list[tuple[str, Any]] = []

    def version(self, req: Empty) -> VersionResponse:
        self.seen.append(("version", req))
        return VersionResponse(
            software_version=corral.__version__,
            protocol_version=corral.PROTOCOL_VERSION,
            node_name=self.node_name,
        )

    def node_info(self, req: NodeInfoRequest) -> NodeInfoResponse:
        self.seen.append(("node_info", req))
        mem = _meminfo()
        return NodeInfoResponse(
            name=self.node_name,
            boot_id=_boot_id(),
            memory_total=mem["MemTotal"],
            memory_free=mem["MemAvailable"],
            cpu_total=os.cpu_count() or 1,
        )

    def instance_info(self, req: InstanceInfoRequest) -> InstanceInfoResponse:
        """``broken`` hypervisor -> HypervisorError; ``crash`` -> a bug (KeyError)."""
        self.seen.append(("instance_info", req))
        if req.hypervisor == "broken":
            raise HypervisorError(
                f"hypervisor broken cannot look up {req.name}",
                kind=ErrorKind.ENVIRONMENT,
                instance=req.name,
                hypervisor=req.hypervisor,
            )
        if req.hypervisor == "crash":
            raise KeyError("simulated bug")
        if req.hypervisor == "wrongtype":
            return Empty()  # type: ignore[return-value]
        return InstanceInfoResponse(info=None)

    def hooks_run(self, req: HooksRunRequest) -> HooksRunResponse:
        """Sleeps ``env["FAKE_SLEEP"]`` seconds, then reports no hooks."""
        self.seen.append(("hooks_run", req))
        time.sleep(float(req.env.get("FAKE_SLEEP", "0")))
        return HooksRunResponse(results=[])


def _refuse(name: str):  # type: ignore[no-untyped-def]
    def method(self: FakeBackend, req: Any) -> Any:
        raise CorralError(f"call {name} is not implemented by the test fake", kind=ErrorKind.FAULT)

    method.__name__ = name
    return method


for _name in CALLS:
    if not hasattr(FakeBackend, _name):
        setattr(FakeBackend, _name, _refuse(_name))


def make_pki(root: str, node_name: str, addresses: list[str], *, ca: Paths | None = None) -> Paths:
    """A root with a node certificate; with ``ca`` None also a new CA (a new "cluster")."""
    paths = Paths(root)
    paths.ensure()
    if ca is None:
        tls.create_ca(paths, f"cluster-of-{node_name}")
    tls.issue_node_cert(paths, node_name, addresses, ca=ca)
    return paths

"""How the master's operations reach nodes: a small runner interface over the RPC client.

Operations never build network addresses or touch TLS; they call
``await ctx.runner.call(node, INSTANCE_START, request)`` with a :class:`~corral.objects.node.Node`.
:class:`RpcNodeRunner` is the real runner (mutual-TLS HTTPS through
:class:`corral.rpc.client.RpcClient`); unit tests pass an in-process runner that calls a
``NodeBackend`` directly through the same wire codec.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol, Self, TypeVar

from corral.common.errors import CorralError
from corral.objects.node import Node
from corral.rpc.calls import Call, Msg

if TYPE_CHECKING:
    from corral.common.paths import Paths
    from corral.rpc.client import NodeAddress, RpcClient

Req = TypeVar("Req", bound=Msg)
Resp = TypeVar("Resp", bound=Msg)


class NodeRunner(Protocol):
    """Runs RPC calls on nodes (see module docstring)."""

    async def call(
        self, node: Node, call: Call[Req, Resp], request: Req, *, timeout: float | None = None
    ) -> Resp:
        """Run ``call`` on ``node``.

        Raises:
            CorralError: the node's own error (rebuilt), or RpcError when it cannot be
                reached or does not answer within ``timeout`` (default: the call's).
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


async def call_many(
    runner: NodeRunner,
    nodes: Iterable[Node],
    call: Call[Req, Resp],
    request: Req,
    *,
    timeout: float | None = None,
) -> dict[str, Resp | CorralError]:
    """Run the same call on several nodes at once (see :func:`call_each`)."""
    return await call_each(runner, nodes, call, lambda _node: request, timeout=timeout)


async def call_each(
    runner: NodeRunner,
    nodes: Iterable[Node],
    call: Call[Req, Resp],
    request_for: Callable[[Node], Req],
    *,
    timeout: float | None = None,
) -> dict[str, Resp | CorralError]:
    """Run ``call`` on several nodes at once, each with its own request.

    Returns:
        For each node name, its response or the :class:`CorralError` it failed with (an
        unreachable node gives an RpcError). Other exceptions propagate.
    """
    targets = list(nodes)

    async def one(node: Node) -> Resp | CorralError:
        try:
            return await runner.call(node, call, request_for(node), timeout=timeout)
        except CorralError as exc:
            return exc

    results = await asyncio.gather(*(one(n) for n in targets))
    return {n.name: r for n, r in zip(targets, results, strict=True)}


def node_address(node: Node) -> NodeAddress:
    """The RPC address of a node.

    Its name (checked against its certificate), primary IP and RPC port.
    """
    from corral.rpc.client import NodeAddress

    return NodeAddress(name=node.name, host=node.primary_ip, port=node.rpc_port)


class RpcNodeRunner:
    """The real runner: mutual-TLS HTTPS calls through one shared :class:`RpcClient`."""

    def __init__(self, client: RpcClient) -> None:
        self._client = client

    @classmethod
    def from_paths(cls, paths: Paths) -> Self:
        """A runner using this host's CA and node certificate.

        Raises:
            TlsError: a certificate or key is missing or invalid.
        """
        from corral.rpc.client import RpcClient

        return cls(RpcClient.from_paths(paths))

    async def call(
        self, node: Node, call: Call[Req, Resp], request: Req, *, timeout: float | None = None
    ) -> Resp:
        """See :meth:`NodeRunner.call`."""
        return await self._client.call(node_address(node), call, request, timeout=timeout)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()

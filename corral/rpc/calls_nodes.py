"""RPC calls of the nodes area (registered into :data:`corral.rpc.calls.CALLS`)."""

from __future__ import annotations

"""RPC calls of the cluster area (registered into :data:`corral.rpc.calls.CALLS`)."""

from __future__ import annotations

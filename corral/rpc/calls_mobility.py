"""RPC calls of the mobility area (registered into :data:`corral.rpc.calls.CALLS`)."""

from __future__ import annotations

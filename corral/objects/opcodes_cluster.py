"""Cluster-wide opcodes (verify, watcher, master failover, store moves)."""

from __future__ import annotations

from pydantic import Field

from corral.objects.opcodes import OpCode

# --- cluster verify and the watcher (master/ops/cluster.py) ----------------------------------


class OpClusterVerify(OpCode):
    """Check the whole cluster (Ganeti's ``gnt-cluster verify``); read-only.

    The result is ``{"ok": bool, "findings": [{"severity", "code", "item_type", "item",
    "message"}, ...]}``; ``ok`` is False when there is at least one ERROR finding.

    Attributes:
        error_codes: write the findings into the job log in Ganeti's machine-parseable form
            ``ETYPE:ECODE:ITEM_TYPE:ITEM:MSG`` (``gnt-cluster verify --error-codes``).
        ignore_errors: error codes (``ENODEORPHANINSTANCE``...) reported as warnings.
        skip_checks: checks to skip; ``nplusone_mem`` (Ganeti's name) skips ENODEN1.
        verbose: also report each check that passed in the job log.
    """

    OP_ID = "OP_CLUSTER_VERIFY"
    error_codes: bool = False
    ignore_errors: list[str] = Field(default_factory=list)
    skip_checks: list[str] = Field(default_factory=list)
    verbose: bool = False


class OpClusterSetWatcherPause(OpCode):
    """Pause the watcher for ``duration`` seconds from now, or resume it (``duration`` None).

    The pause is kept in the store (``/corral/watcher/pause``), so it holds whichever master
    leads. The result is the pause state after the change (see :class:`OpClusterWatcherInfo`).
    """

    OP_ID = "OP_CLUSTER_SET_WATCHER_PAUSE"
    duration: float | None = None


class OpClusterWatcherInfo(OpCode):
    """The watcher's pause state and restart bookkeeping (no change).

    Result: ``{"paused": bool, "paused_until": float | None, "restarts": {instance:
    {"attempts": n, "last": ts, "gave_up": bool}}}``.
    """

    OP_ID = "OP_CLUSTER_WATCHER_INFO"

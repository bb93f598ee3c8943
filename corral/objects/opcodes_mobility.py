"""Opcodes that move instances between nodes (migrate, failover, move, node evacuate/migrate).

Field names follow Ganeti's opcodes (``OP_INSTANCE_MIGRATE``, ``OP_INSTANCE_FAILOVER``,
``OP_INSTANCE_MOVE``, ``OP_NODE_EVACUATE``, ``OP_NODE_MIGRATE``) so RAPI clients written for
Ganeti send the bodies they always sent. Fields Corral accepts but has no use for (allocator
names, policy overrides without instance policies) are accepted and ignored, as documented in
``docs/operations/mobility.md``.
"""

from __future__ import annotations

from typing import Literal

from corral.objects.opcodes import OpCode

#: ``live`` or ``non-live``; None = the hypervisor's ``migration_mode`` (live).
MigrationMode = Literal["live", "non-live"] | None


class OpInstanceMigrate(OpCode):
    """Move a running instance to another node without stopping it (shared storage)."""

    OP_ID = "OP_INSTANCE_MIGRATE"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    mode: MigrationMode = None
    #: Ganeti's older boolean spelling of ``mode`` (None: use ``mode``).
    live: bool | None = None
    #: Recover from a failed migration instead of migrating: find where it runs, fix the
    #: configuration and stop the stray copy.
    cleanup: bool = False
    target_node: str | None = None
    #: A stopped instance is failed over (its configuration moves) instead of refused.
    allow_failover: bool = False
    ignore_ipolicy: bool = False
    iallocator: str | None = None
    allow_runtime_changes: bool = True
    #: Migrate even when the hypervisor versions of the two nodes differ.
    ignore_hvversions: bool = False


class OpInstanceFailover(OpCode):
    """Stop an instance on its node and start it on another (shared storage, cold)."""

    OP_ID = "OP_INSTANCE_FAILOVER"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    shutdown_timeout: float = 120.0
    #: Go on when the current primary node cannot be reached (it is assumed down).
    ignore_consistency: bool = False
    target_node: str | None = None
    iallocator: str | None = None
    ignore_ipolicy: bool = False
    cleanup: bool = False


class OpInstanceMove(OpCode):
    """Copy a stopped instance's disks to another node and make that node its primary."""

    OP_ID = "OP_INSTANCE_MOVE"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    target_node: str
    shutdown_timeout: float = 120.0
    ignore_consistency: bool = False
    ignore_ipolicy: bool = False
    compress: str = "none"


class OpNodeEvacuate(OpCode):
    """Move every primary instance off a node (migrate, else failover, else move)."""

    OP_ID = "OP_NODE_EVACUATE"
    SUMMARY_FIELD = "node_name"
    node_name: str
    #: Where to put every instance (default: the node with the most free memory, each time).
    remote_node: str | None = None
    iallocator: str | None = None
    #: Ganeti's ``all``/``primary-only``/``secondary-only``; Corral has no secondaries, so
    #: ``secondary-only`` has nothing to do.
    mode: Literal["all", "primary-only", "secondary-only"] = "all"
    early_release: bool = False
    ignore_soft_errors: bool = False
    #: Stop after the first instance that cannot be moved (default: try every instance).
    stop_on_error: bool = False
    shutdown_timeout: float = 120.0


class OpNodeMigrate(OpCode):
    """Live-migrate every primary instance of a node (stopped ones are failed over)."""

    OP_ID = "OP_NODE_MIGRATE"
    SUMMARY_FIELD = "node_name"
    node_name: str
    mode: MigrationMode = None
    live: bool | None = None
    target_node: str | None = None
    iallocator: str | None = None
    ignore_ipolicy: bool = False
    allow_runtime_changes: bool = True
    ignore_hvversions: bool = False

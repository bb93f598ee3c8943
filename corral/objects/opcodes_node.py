"""Opcodes of nodes and node groups (``node add/remove/readd/modify``, ``group ...``).

Field names follow Ganeti's opcodes (``OP_NODE_ADD``, ``OP_GROUP_ASSIGN_NODES`` ...); Corral
additions are marked. ``readd`` of ``OP_NODE_ADD`` is how ``node readd`` is submitted, as in
Ganeti.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from corral.objects.opcodes import OpCode

AllocPolicy = Literal["preferred", "last_resort", "unallocable"]


class OpNodeAdd(OpCode):
    """Add a node (or re-add a known one with ``readd``) through the join protocol."""

    OP_ID = "OP_NODE_ADD"
    SUMMARY_FIELD = "node_name"
    node_name: str
    primary_ip: str | None = None
    secondary_ip: str | None = None
    readd: bool = False
    group: str | None = None
    master_capable: bool | None = None
    vm_capable: bool | None = None
    #: Corral: make the node a master candidate (Ganeti decides by candidate_pool_size).
    master_candidate: bool | None = None
    ndparams: dict[str, Any] = Field(default_factory=dict)
    #: Corral: the one-time token the node printed in join mode.
    join_token: str | None = None
    #: Corral: the node daemon's port (default: the cluster's ``noded_port``).
    port: int | None = None


class OpNodeRemove(OpCode):
    """Remove a node: refuse while it holds instances or is the master; revoke its cert."""

    OP_ID = "OP_NODE_REMOVE"
    SUMMARY_FIELD = "node_name"
    node_name: str


class OpNodeSetParams(OpCode):
    """Change a node's roles and flags (``node modify``)."""

    OP_ID = "OP_NODE_SET_PARAMS"
    SUMMARY_FIELD = "node_name"
    node_name: str
    force: bool = False
    master_candidate: bool | None = None
    offline: bool | None = None
    drained: bool | None = None
    master_capable: bool | None = None
    vm_capable: bool | None = None
    auto_promote: bool = False
    secondary_ip: str | None = None
    ndparams: dict[str, Any] = Field(default_factory=dict)
    powered: bool | None = None


class OpNodePowercycle(OpCode):
    """Hard-reset a node at once, without a clean shutdown (``node powercycle``)."""

    OP_ID = "OP_NODE_POWERCYCLE"
    SUMMARY_FIELD = "node_name"
    node_name: str
    #: needed to powercycle the master node itself
    force: bool = False


class OpGroupAdd(OpCode):
    """Create a node group."""

    OP_ID = "OP_GROUP_ADD"
    SUMMARY_FIELD = "group_name"
    group_name: str
    alloc_policy: AllocPolicy | None = None
    ndparams: dict[str, Any] = Field(default_factory=dict)
    diskparams: dict[str, Any] = Field(default_factory=dict)
    ipolicy: dict[str, Any] = Field(default_factory=dict)
    hv_state: dict[str, Any] = Field(default_factory=dict)
    disk_state: dict[str, Any] = Field(default_factory=dict)


class OpGroupRemove(OpCode):
    """Remove an empty node group."""

    OP_ID = "OP_GROUP_REMOVE"
    SUMMARY_FIELD = "group_name"
    group_name: str


class OpGroupRename(OpCode):
    """Rename a node group (its nodes follow)."""

    OP_ID = "OP_GROUP_RENAME"
    SUMMARY_FIELD = "group_name"
    group_name: str
    new_name: str


class OpGroupAssignNodes(OpCode):
    """Move nodes into a group."""

    OP_ID = "OP_GROUP_ASSIGN_NODES"
    SUMMARY_FIELD = "group_name"
    group_name: str
    nodes: list[str]
    force: bool = False


class OpGroupSetParams(OpCode):
    """Change a group's allocation policy and node parameters."""

    OP_ID = "OP_GROUP_SET_PARAMS"
    SUMMARY_FIELD = "group_name"
    group_name: str
    alloc_policy: AllocPolicy | None = None
    ndparams: dict[str, Any] = Field(default_factory=dict)
    diskparams: dict[str, Any] = Field(default_factory=dict)
    ipolicy: dict[str, Any] = Field(default_factory=dict)
    hv_state: dict[str, Any] = Field(default_factory=dict)
    disk_state: dict[str, Any] = Field(default_factory=dict)

"""Operations: node groups (``group add|remove|rename|assign-nodes|modify``).

Groups are stored at ``/corral/groups/<name>`` (:class:`~corral.objects.group.Group`); a node
names its group in ``Node.group``. The group ``default`` exists in every cluster: it is
created the first time something needs it (:func:`ensure_default_group`), so clusters
initialised before groups existed get it too.

All group operations take the cluster lock exclusively: they are rare and touch several
nodes at once.
"""

from __future__ import annotations

import contextlib
from typing import Any

from corral.common.errors import ErrorKind, OpError, ParamError, RevisionConflict
from corral.master.config import ClusterConfig, DeleteKey, PutObject, node_key
from corral.master.locking import CLUSTER_LOCK, LockMode
from corral.master.ops.base import Operation, register
from corral.objects.group import DEFAULT_GROUP, Group
from corral.objects.opcodes_node import (
    OpGroupAdd,
    OpGroupAssignNodes,
    OpGroupRemove,
    OpGroupRename,
    OpGroupSetParams,
)
from corral.objects.units import check_name

GROUPS_PREFIX = "/corral/groups/"


def group_key(name: str) -> str:
    """The store key of a group."""
    return GROUPS_PREFIX + name


def ensure_default_group(config: ClusterConfig) -> None:
    """Create the ``default`` group if it does not exist (idempotent, race-free).

    Raises:
        StoreError: the store cannot be written.
    """
    if config.read(group_key(DEFAULT_GROUP), Group) is not None:
        return
    with contextlib.suppress(RevisionConflict):  # somebody else created it
        config.commit([PutObject(group_key(DEFAULT_GROUP), Group(name=DEFAULT_GROUP), 0)])


def groups(config: ClusterConfig) -> list[Group]:
    """Every group, sorted by name (``default`` is created first if missing).

    Raises:
        StoreError: the store cannot be read.
    """
    ensure_default_group(config)
    return [v.value for v in config.read_all(GROUPS_PREFIX, Group)]


def get_group(config: ClusterConfig, name: str) -> Group:
    """One group.

    Raises:
        OpError: no such group (kind NOT_FOUND).
    """
    if name == DEFAULT_GROUP:
        ensure_default_group(config)
    found = config.read(group_key(name), Group)
    if found is None:
        raise OpError(f"node group {name!r} does not exist", kind=ErrorKind.NOT_FOUND, group=name)
    return found.value


def _check_group_name(name: str, field: str = "group_name") -> None:
    why = check_name(name, "group name")
    if why:
        raise ParamError({field: why})


def _group_params(op: OpGroupAdd | OpGroupSetParams) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if op.alloc_policy is not None:
        changes["alloc_policy"] = op.alloc_policy
    for field in ("ndparams", "diskparams", "ipolicy"):
        value = getattr(op, field)
        if value:
            changes[field] = value
    return changes


class _GroupOp(Operation[Any]):
    def declare_locks(self) -> dict[str, LockMode]:
        """The cluster lock, exclusively (groups change several nodes at once)."""
        return {CLUSTER_LOCK: LockMode.EXCLUSIVE}

    def check_arguments(self) -> None:
        """A valid group name."""
        _check_group_name(self.op.group_name)


@register
class GroupAdd(_GroupOp):
    """Create a group (``gnt-group add``)."""

    OPCODE = OpGroupAdd

    async def check_prereq(self) -> None:
        """The name is free.

        Raises:
            OpError: a group of that name exists (kind EXISTS).
        """
        ensure_default_group(self.ctx.config)
        if self.ctx.config.read(group_key(self.op.group_name), Group) is not None:
            raise OpError(
                f"node group {self.op.group_name!r} already exists",
                kind=ErrorKind.EXISTS,
                group=self.op.group_name,
            )

    async def execute(self) -> Any:
        """Store the group.

        Raises:
            OpError: created concurrently (kind EXISTS).
        """
        group = Group(name=self.op.group_name, **_group_params(self.op))
        try:
            self.ctx.config.commit([PutObject(group_key(group.name), group, 0)])
        except RevisionConflict as exc:
            raise OpError(
                f"node group {group.name!r} already exists", kind=ErrorKind.EXISTS
            ) from exc
        return None


@register
class GroupRemove(_GroupOp):
    """Remove an empty group (never the last one)."""

    OPCODE = OpGroupRemove

    async def check_prereq(self) -> None:
        """The group exists, has no nodes, and is not the only group.

        Raises:
            OpError: NOT_FOUND, or WRONG_STATE naming the nodes still in it.
        """
        config = self.ctx.config
        get_group(config, self.op.group_name)
        members = [n.name for n in config.nodes() if n.group == self.op.group_name]
        if members:
            raise OpError(
                f"node group {self.op.group_name!r} is not empty: it holds "
                f"{', '.join(members)}; move them first (group assign-nodes)",
                kind=ErrorKind.WRONG_STATE,
                group=self.op.group_name,
                nodes=members,
            )
        if len(groups(config)) == 1:
            raise OpError(
                f"node group {self.op.group_name!r} is the last group", kind=ErrorKind.WRONG_STATE
            )

    async def execute(self) -> Any:
        """Delete the group."""
        self.ctx.config.commit([DeleteKey(group_key(self.op.group_name), None)])
        return None


@register
class GroupRename(_GroupOp):
    """Rename a group; its nodes are moved to the new name in the same transaction."""

    OPCODE = OpGroupRename

    def check_arguments(self) -> None:
        """Both names valid."""
        super().check_arguments()
        _check_group_name(self.op.new_name, "new_name")

    async def check_prereq(self) -> None:
        """The group exists and the new name is free.

        Raises:
            OpError: NOT_FOUND or EXISTS.
        """
        get_group(self.ctx.config, self.op.group_name)
        if self.ctx.config.read(group_key(self.op.new_name), Group) is not None:
            raise OpError(
                f"node group {self.op.new_name!r} already exists",
                kind=ErrorKind.EXISTS,
                group=self.op.new_name,
            )

    async def execute(self) -> Any:
        """Write the renamed group and its nodes, delete the old key, atomically.

        Raises:
            RevisionConflict: something changed meanwhile; nothing was written.
        """
        config = self.ctx.config
        old = config.read(group_key(self.op.group_name), Group)
        assert old is not None
        renamed = old.value.model_copy(update={"name": self.op.new_name})
        renamed.touch()
        changes: list[PutObject | DeleteKey] = [
            DeleteKey(group_key(self.op.group_name), old.revision),
            PutObject(group_key(self.op.new_name), renamed, 0),
        ]
        for node in config.nodes():
            if node.group == self.op.group_name:
                current = config.node_versioned(node.name)
                moved = current.value.model_copy(update={"group": self.op.new_name})
                moved.touch()
                changes.append(PutObject(node_key(node.name), moved, current.revision))
        config.commit(changes)
        return None


@register
class GroupAssignNodes(_GroupOp):
    """Move nodes into a group."""

    OPCODE = OpGroupAssignNodes

    async def check_prereq(self) -> None:
        """The group and every node exist.

        Raises:
            OpError: NOT_FOUND naming the group or node.
        """
        get_group(self.ctx.config, self.op.group_name)
        for name in self.op.nodes:
            self.ctx.config.node(name)

    async def execute(self) -> Any:
        """Set each node's group (one transaction).

        Raises:
            RevisionConflict: a node changed meanwhile; nothing was written.
        """
        config = self.ctx.config
        changes: list[PutObject | DeleteKey] = []
        for name in dict.fromkeys(self.op.nodes):
            current = config.node_versioned(name)
            if current.value.group == self.op.group_name:
                continue
            moved = current.value.model_copy(update={"group": self.op.group_name})
            moved.touch()
            changes.append(PutObject(node_key(name), moved, current.revision))
            self.feedback(f"node {name}: group {current.value.group} -> {self.op.group_name}")
        if changes:
            config.commit(changes)
        return None


@register
class GroupSetParams(_GroupOp):
    """Change a group's allocation policy and parameters."""

    OPCODE = OpGroupSetParams

    async def check_prereq(self) -> None:
        """The group exists and something is to change.

        Raises:
            OpError: NOT_FOUND; ParamError: nothing to change.
        """
        get_group(self.ctx.config, self.op.group_name)
        if not _group_params(self.op):
            raise ParamError({"group_name": "no changes given"})

    async def execute(self) -> Any:
        """Apply the changes; return Ganeti's ``[(param, value), ...]`` list."""
        changes = _group_params(self.op)

        def change(group: Group) -> None:
            for key, value in changes.items():
                if isinstance(value, dict):
                    merged = {**getattr(group, key), **value}
                    setattr(group, key, {k: v for k, v in merged.items() if v is not None})
                else:
                    setattr(group, key, value)

        self.ctx.config.modify(
            group_key(self.op.group_name),
            Group,
            change,
            missing=lambda: OpError(
                f"node group {self.op.group_name!r} does not exist", kind=ErrorKind.NOT_FOUND
            ),
        )
        return [[k, v] for k, v in changes.items()]

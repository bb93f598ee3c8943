"""Operations moving instances between nodes (issue 4); the steps are in ``mobility_steps.py``.

=====================  ================  ========================================================
opcode                 hooks path        what
=====================  ================  ========================================================
OP_INSTANCE_MIGRATE    instance-migrate  live/non-live migration (shared storage); ``cleanup``
                                         recovers from a failed one
OP_INSTANCE_FAILOVER   instance-failover stop, switch node, start (shared storage, cold)
OP_INSTANCE_MOVE       instance-move     stop, copy the disks, switch node, start
OP_NODE_MIGRATE        node-migrate      migrate every primary instance of a node
OP_NODE_EVACUATE       node-evacuate     every primary instance off a node: migrate when it
                                         runs on shared storage, failover when stopped, move
                                         when its disks are local
=====================  ================  ========================================================

Everything that can be checked is checked before anything moves (``check_prereq``): the
target is online, not drained and vm_capable, has the memory, runs the same hypervisor
version (migration), reaches the shared disks or has the space (move). Node locks are taken
exclusively on the source and target (all nodes when the target is chosen by free memory), so
two moves onto one node never race for its memory or its migration port.

None of these operations is idempotent: after a master failover a running one is failed,
and ``corral instance migrate --cleanup`` repairs a migration cut short.
"""

from __future__ import annotations

from typing import Any

from corral.common.errors import CorralError, ErrorKind, OpError, ParamError
from corral.master.locking import LockMode, instance_lock, node_lock
from corral.master.ops.base import Operation, register
from corral.master.ops.common import live_info
from corral.master.ops.instance import InstanceOperation
from corral.master.ops.mobility_move import check_move_target, move
from corral.master.ops.mobility_steps import (
    Migration,
    check_target,
    check_target_flags,
    failover,
    instance_memory,
    migration_cleanup,
    pick_target,
    refuse_local_storage,
    storage_kind,
)
from corral.objects.instance import AdminState, Instance
from corral.objects.node import Node
from corral.objects.opcodes_mobility import (
    OpInstanceFailover,
    OpInstanceMigrate,
    OpInstanceMove,
    OpNodeEvacuate,
    OpNodeMigrate,
)
from corral.objects.params.fill import filled_beparams, filled_hvparams


def migration_live(mode: str | None, live: bool | None, hvparams: dict[str, Any]) -> bool:
    """Live or not: ``mode`` first, then Ganeti's ``live`` flag, then the hvparam.

    Raises:
        ParamError: ``mode`` and ``live`` contradict each other.
    """
    if mode is not None and live is not None and (mode == "live") != live:
        raise ParamError({"live": f"contradicts mode={mode}"})
    if mode is not None:
        return mode == "live"
    if live is not None:
        return live
    return str(hvparams.get("migration_mode", "live")) != "non-live"


def _node_locks(config_nodes: list[Node], names: list[str] | None) -> dict[str, LockMode]:
    chosen = names if names is not None else [n.name for n in config_nodes]
    return {node_lock(n): LockMode.EXCLUSIVE for n in chosen}


class _MobilityOperation(InstanceOperation[Any]):
    """Locks: the instance, its node and the target exclusive (every node without a target)."""

    target: Node
    source: Node

    def _target_name(self) -> str | None:
        name = getattr(self.op, "target_node", None)
        return None if name is None else str(name)

    def declare_locks(self) -> dict[str, LockMode]:
        """The instance, and its node plus the target (or every node) exclusive."""
        locks = super().declare_locks()
        found = self.ctx.config.find_instance(self.instance_name)
        target = self._target_name()
        names = None
        if target is not None and found is not None:
            names = [found.value.primary_node, target]
        locks.update(_node_locks(self.ctx.config.nodes(), names))
        return locks

    def _given_target(self) -> Node | None:
        name = self._target_name()
        if name is None:
            return None
        if self.ctx.config.read_node(name) is None:
            raise OpError(f"node {name} does not exist", kind=ErrorKind.NOT_FOUND, node=name)
        return self.ctx.config.node(name)

    def hooks_nodes(self) -> tuple[list[str], list[str]]:
        """Master, source and target."""
        nodes = [self.cluster.master_node, self.source.name]
        if getattr(self, "target", None) is not None:
            nodes.append(self.target.name)
        return nodes, nodes

    def _move_vars(self) -> dict[str, str]:
        return {
            "OLD_PRIMARY": self.source.name,
            "NEW_PRIMARY": self.target.name if getattr(self, "target", None) else "",
            "OLD_SECONDARY": "",
            "NEW_SECONDARY": "",
        }


@register
class InstanceMigrate(_MobilityOperation):
    """Live (or non-live) migration to another node, or ``cleanup`` after a failed one."""

    OPCODE = OpInstanceMigrate
    HPATH = "instance-migrate"

    _live: bool = True
    _failover: bool = False
    _memory: int = 0

    def check_arguments(self) -> None:
        """``mode`` and ``live`` agree; cleanup takes no mode."""
        if self.op.mode is not None and self.op.live is not None:
            migration_live(self.op.mode, self.op.live, {})

    def hook_vars(self) -> dict[str, str]:
        """MIGRATE_LIVE, MIGRATE_CLEANUP, the old and new nodes."""
        return {
            "MIGRATE_LIVE": str(self._live),
            "MIGRATE_CLEANUP": str(self.op.cleanup),
            **self._move_vars(),
        }

    async def check_prereq(self) -> None:
        """The instance, its storage, the target and (unless cleanup) that it runs."""
        await super().check_prereq()
        inst = self.instance
        self.source = self.pnode
        if self.op.cleanup:
            given = self._given_target()
            if given is not None:
                self.target = given
            return
        refuse_local_storage(inst, "migrate")
        self._live = migration_live(self.op.mode, self.op.live, filled_hvparams(self.cluster, inst))
        info = await live_info(self.ctx, self.pnode, inst)
        running = info is not None and info.state.value in ("running", "paused")
        if not running:
            if not self.op.allow_failover:
                raise OpError(
                    f"instance {inst.name} is not running on {self.pnode.name}; only a running "
                    "instance can be migrated (allow_failover moves a stopped one)",
                    kind=ErrorKind.WRONG_STATE,
                    instance=inst.name,
                )
            self._failover = True
        self._memory = instance_memory(self.cluster, inst, info) if running else 0
        target = self._given_target() or await pick_target(self.ctx, inst, self._memory)
        await check_target(
            self.ctx,
            inst,
            self.source,
            target,
            memory=self._memory,
            check_version=running and not self.op.ignore_hvversions,
        )
        self.target = target

    async def execute(self) -> Any:
        """Migrate (or fail over a stopped instance, or clean up)."""
        if self.op.cleanup:
            nodes = [
                n
                for n in self.ctx.config.nodes()
                if n.vm_capable
                and not n.offline
                and (self._target_name() is None or n.name in (self.source.name, self.target.name))
            ]
            return await migration_cleanup(self.ctx, self.cluster, self.instance, nodes)
        if self._failover:
            self.feedback(f"instance {self.instance.name} is not running: failing it over")
            return await failover(
                self.ctx,
                self.cluster,
                self.instance,
                self.source,
                self.target,
                shutdown_timeout=0,
                ignore_consistency=False,
                op_id=self.op.OP_ID,
            )
        migration = Migration(
            self.ctx, self.cluster, self.instance, self.source, self.target, self._live
        )
        try:
            return await migration.run()
        finally:
            self.instance = migration.instance


@register
class InstanceFailover(_MobilityOperation):
    """Cold move to another node with shared storage: stop, switch node, start."""

    OPCODE = OpInstanceFailover
    HPATH = "instance-failover"

    def hook_vars(self) -> dict[str, str]:
        """IGNORE_CONSISTENCY, SHUTDOWN_TIMEOUT, the old and new nodes."""
        return {
            "IGNORE_CONSISTENCY": str(self.op.ignore_consistency),
            "SHUTDOWN_TIMEOUT": str(self.op.shutdown_timeout),
            **self._move_vars(),
        }

    def check_arguments(self) -> None:
        """A non-negative shutdown timeout."""
        if self.op.shutdown_timeout < 0:
            raise ParamError({"shutdown_timeout": "must not be negative"})

    async def check_prereq(self) -> None:
        """Storage shared, target usable with memory if the instance should run.

        With ``ignore_consistency`` the current node may be offline or unreachable.
        """
        found = self.ctx.config.instance_versioned(self.instance_name)
        self.instance, self.instance_rev = found.value, found.revision
        self.pnode = self.source = self.ctx.config.node(self.instance.primary_node)
        inst = self.instance
        if self.pnode.offline and not self.op.ignore_consistency:
            raise OpError(
                f"primary node {self.pnode.name} of {inst.name} is offline; use "
                "--ignore-consistency to fail over anyway",
                kind=ErrorKind.WRONG_STATE,
                node=self.pnode.name,
            )
        refuse_local_storage(inst, "fail over")
        memory = 0
        if inst.admin_state is AdminState.UP:
            memory = int(filled_beparams(self.cluster, inst)["maxmem"])
        target = self._given_target() or await pick_target(self.ctx, inst, memory)
        await check_target(self.ctx, inst, None, target, memory=memory, check_version=False)
        self.target = target

    def hooks_nodes(self) -> tuple[list[str], list[str]]:
        """Master and target; the source too unless it may be down."""
        nodes = [self.cluster.master_node, self.target.name]
        if not self.op.ignore_consistency:
            nodes.append(self.source.name)
        return nodes, nodes

    async def execute(self) -> Any:
        """Stop on the source, record the target, start there if it should run."""
        result = await failover(
            self.ctx,
            self.cluster,
            self.instance,
            self.source,
            self.target,
            shutdown_timeout=self.op.shutdown_timeout,
            ignore_consistency=self.op.ignore_consistency,
            op_id=self.op.OP_ID,
        )
        self.instance = self.ctx.config.instance(self.instance.name)
        return result


@register
class InstanceMove(_MobilityOperation):
    """Copy the disks to another node and run the instance there (it is stopped meanwhile)."""

    OPCODE = OpInstanceMove
    HPATH = "instance-move"

    _running: bool = False

    def hook_vars(self) -> dict[str, str]:
        """TARGET_NODE, SHUTDOWN_TIMEOUT, the old and new nodes."""
        return {
            "TARGET_NODE": self.op.target_node,
            "SHUTDOWN_TIMEOUT": str(self.op.shutdown_timeout),
            **self._move_vars(),
        }

    def check_arguments(self) -> None:
        """A non-negative shutdown timeout; compression is not supported."""
        if self.op.shutdown_timeout < 0:
            raise ParamError({"shutdown_timeout": "must not be negative"})
        if self.op.compress not in ("none", ""):
            raise ParamError({"compress": "only 'none' is supported"})

    async def check_prereq(self) -> None:
        """Target usable with room for the disks (and memory if the instance should run)."""
        await super().check_prereq()
        self.source = self.pnode
        target = self._given_target()
        assert target is not None  # target_node is required by the opcode
        await check_move_target(self.ctx, self.cluster, self.instance, target)
        self.target = target
        info = await live_info(self.ctx, self.pnode, self.instance)
        self._running = info is not None

    async def execute(self) -> Any:
        """Stop, copy and verify every disk, switch, remove the old disks, start."""
        result = await move(
            self.ctx,
            self.cluster,
            self.instance,
            self.source,
            self.target,
            shutdown_timeout=self.op.shutdown_timeout,
            running=self._running,
            op_id=self.op.OP_ID,
        )
        self.instance = self.ctx.config.instance(self.instance.name)
        return result


# --- node level ----------------------------------------------------------------------------------


class _NodeMobility(Operation[Any]):
    """Common parts of node evacuate/migrate: locks, the node, per-instance reports."""

    HTYPE = "NODE"
    node: Node
    instances: list[Instance]

    def _target_name(self) -> str | None:
        raise NotImplementedError

    def declare_locks(self) -> dict[str, LockMode]:
        """Every primary instance of the node, and all nodes, exclusive."""
        locks: dict[str, LockMode] = {"cluster": LockMode.SHARED}
        for inst in self.ctx.config.instances():
            if inst.primary_node == self.op.node_name:
                locks[instance_lock(inst.name)] = LockMode.EXCLUSIVE
        locks.update(_node_locks(self.ctx.config.nodes(), None))
        return locks

    async def check_prereq(self) -> None:
        """The node exists; a given target is usable."""
        if self.ctx.config.read_node(self.op.node_name) is None:
            raise OpError(
                f"node {self.op.node_name} does not exist",
                kind=ErrorKind.NOT_FOUND,
                node=self.op.node_name,
            )
        self.node = self.ctx.config.node(self.op.node_name)
        self.instances = sorted(
            (i for i in self.ctx.config.instances() if i.primary_node == self.node.name),
            key=lambda i: i.name,
        )
        target = self._target_name()
        if target is not None:
            if self.ctx.config.read_node(target) is None:
                raise OpError(f"node {target} does not exist", kind=ErrorKind.NOT_FOUND)
            check_target_flags(self.ctx.config.node(target), self.node.name)

    def hooks_env(self) -> dict[str, str]:
        """NODE_NAME."""
        return {"NODE_NAME": self.op.node_name}

    def hooks_target(self) -> str:
        """The node's name."""
        return str(self.op.node_name)

    async def _one(self, inst: Instance, reserved: dict[str, int]) -> dict[str, Any]:
        raise NotImplementedError

    async def execute(self) -> Any:
        """Handle each primary instance in turn; report each one.

        Raises:
            OpError: at least one instance could not be moved (the message lists them; the
                others were moved).
        """
        if not self.instances:
            self.feedback(f"node {self.node.name} has no primary instances")
            return []
        reserved: dict[str, int] = {}
        results: list[dict[str, Any]] = []
        for inst in self.instances:
            try:
                result = await self._one(self.ctx.config.instance(inst.name), reserved)
                result.setdefault("status", "ok")
            except CorralError as exc:
                result = {"instance": inst.name, "status": "failed", "error": str(exc)}
                self.feedback(f"{inst.name}: FAILED: {exc}")
                if getattr(self.op, "stop_on_error", False):
                    results.append(result)
                    break
            results.append(result)
        failed = [r for r in results if r["status"] == "failed"]
        for r in results:
            where = f"-> {r.get('target')}" if r.get("target") else ""
            self.feedback(f"{r['instance']}: {r.get('action', '')} {where} {r['status']}")
        if failed:
            raise OpError(
                f"{len(failed)} of {len(self.instances)} instances of node {self.node.name} "
                "could not be moved: "
                + "; ".join(f"{r['instance']}: {r['error']}" for r in failed),
                kind=ErrorKind.ENVIRONMENT,
                node=self.node.name,
                results=results,
            )
        return results

    async def _target_for(self, inst: Instance, memory: int, reserved: dict[str, int]) -> Node:
        name = self._target_name()
        if name is not None:
            return self.ctx.config.node(name)
        return await pick_target(self.ctx, inst, memory, reserved=reserved)


@register
class NodeMigrate(_NodeMobility):
    """Migrate every primary instance of a node (stopped ones are failed over)."""

    OPCODE = OpNodeMigrate
    HPATH = "node-migrate"

    def _target_name(self) -> str | None:
        name = self.op.target_node
        return None if name is None else str(name)

    def check_arguments(self) -> None:
        """``mode`` and ``live`` agree."""
        if self.op.mode is not None and self.op.live is not None:
            migration_live(self.op.mode, self.op.live, {})

    async def _one(self, inst: Instance, reserved: dict[str, int]) -> dict[str, Any]:
        refuse_local_storage(inst, "migrate")
        info = await live_info(self.ctx, self.node, inst)
        running = info is not None and info.state.value in ("running", "paused")
        memory = instance_memory(self.cluster, inst, info) if running else 0
        target = await self._target_for(inst, memory, reserved)
        await check_target(
            self.ctx,
            inst,
            self.node,
            target,
            memory=memory,
            check_version=running and not self.op.ignore_hvversions,
        )
        if not running:
            result = await failover(
                self.ctx,
                self.cluster,
                inst,
                self.node,
                target,
                shutdown_timeout=0,
                ignore_consistency=False,
                op_id=self.op.OP_ID,
            )
            result["action"] = "failover"
        else:
            live = migration_live(self.op.mode, self.op.live, filled_hvparams(self.cluster, inst))
            result = await Migration(
                self.ctx, self.cluster, inst, self.node, target, live, op_id=self.op.OP_ID
            ).run()
            result["action"] = "migrate"
        reserved[target.name] = reserved.get(target.name, 0) + memory
        return result


@register
class NodeEvacuate(_NodeMobility):
    """Move every primary instance off a node: migrate, failover or move, per instance."""

    OPCODE = OpNodeEvacuate
    HPATH = "node-evacuate"

    def _target_name(self) -> str | None:
        name = self.op.remote_node
        return None if name is None else str(name)

    async def check_prereq(self) -> None:
        """As for every node operation; ``secondary-only`` has nothing to do in Corral."""
        await super().check_prereq()
        if self.op.mode == "secondary-only":
            self.instances = []

    async def _one(self, inst: Instance, reserved: dict[str, int]) -> dict[str, Any]:
        kind = storage_kind(inst)
        node_down = self.node.offline
        info = None if node_down else await live_info(self.ctx, self.node, inst)
        running = info is not None and info.state.value in ("running", "paused")
        wants_up = inst.admin_state is AdminState.UP
        memory = (
            instance_memory(self.cluster, inst, info)
            if running
            else int(filled_beparams(self.cluster, inst)["maxmem"])
            if wants_up
            else 0
        )
        target = await self._target_for(inst, memory, reserved)
        result: dict[str, Any]
        if kind == "local":
            if node_down:
                raise OpError(
                    f"node {self.node.name} is offline: the local disks of {inst.name} "
                    "cannot be copied",
                    kind=ErrorKind.WRONG_STATE,
                    instance=inst.name,
                )
            await check_move_target(self.ctx, self.cluster, inst, target)
            result = await move(
                self.ctx,
                self.cluster,
                inst,
                self.node,
                target,
                shutdown_timeout=self.op.shutdown_timeout,
                running=info is not None,
                op_id=self.op.OP_ID,
            )
            result["action"] = "move"
        elif running:
            await check_target(self.ctx, inst, self.node, target, memory=memory, check_version=True)
            live = migration_live(None, None, filled_hvparams(self.cluster, inst))
            result = await Migration(
                self.ctx, self.cluster, inst, self.node, target, live, op_id=self.op.OP_ID
            ).run()
            result["action"] = "migrate"
        else:
            await check_target(self.ctx, inst, None, target, memory=memory, check_version=False)
            result = await failover(
                self.ctx,
                self.cluster,
                inst,
                self.node,
                target,
                shutdown_timeout=self.op.shutdown_timeout,
                ignore_consistency=node_down,
                op_id=self.op.OP_ID,
            )
            result["action"] = "failover"
        reserved[target.name] = reserved.get(target.name, 0) + memory
        return result

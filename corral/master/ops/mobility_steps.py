"""The steps of instance mobility, shared by the instance and the node operations.

* :func:`pick_target` and :func:`check_target` — where an instance may go (prerequisites that
  hold before anything moves: target online, not drained, vm_capable, enough free memory, same
  hypervisor version, the instance's storage reachable from it);
* :class:`Migration` — a live (or non-live) migration through the node RPCs, with the rule
  that a failed migration leaves the instance running on exactly one node;
* :func:`migration_cleanup` — recovery after a migration that failed half-way;
* :func:`failover` and :func:`move` — the cold moves (shared storage, or copying the disks).

Every function reports progress with ``ctx.feedback`` and raises the error of the step that
failed; what it undid and where the instance runs afterwards is in the message.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from corral.common.errors import CorralError, ErrorKind, OpError, RpcError
from corral.hypervisor.base import InstanceInfo, InstanceState, MigrationStatus
from corral.master.ops.base import OpContext
from corral.master.ops.common import (
    disk_refs,
    instance_spec,
    is_running,
    live_info,
    node_info,
    reason_text,
    volume_spec,
)
from corral.objects.cluster import Cluster
from corral.objects.instance import AdminState, Instance
from corral.objects.node import Node
from corral.objects.params.fill import filled_beparams, filled_hvparams
from corral.rpc.calls import (
    ABORT_MIGRATION,
    ACCEPT_INSTANCE,
    BLOCKDEV_FIND,
    FINALIZE_MIGRATION_DST,
    FINALIZE_MIGRATION_SRC,
    INSTANCE_INFO,
    INSTANCE_SHUTDOWN,
    INSTANCE_START,
    MIGRATE_INSTANCE,
    MIGRATION_INFO,
    MIGRATION_STATUS,
    AbortMigrationRequest,
    AcceptInstanceRequest,
    BlockdevRequest,
    FinalizeMigrationDstRequest,
    FinalizeMigrationSrcRequest,
    InstanceInfoRequest,
    InstanceShutdownRequest,
    InstanceStartRequest,
    MigrateInstanceRequest,
    MigrationInfoRequest,
    MigrationStatusRequest,
)

#: Disk types every node reaches at the same path (no copy needed to change node).
SHARED_DEV_TYPES = frozenset({"sharedfile"})
#: Disk types whose volumes ``instance move`` copies (shared ones need no copy).
COPYABLE_DEV_TYPES = frozenset({"file"})
#: Where a migration destination listens when the hvparams name no ``migration_port``.
DEFAULT_MIGRATION_PORT = 8102
#: Seconds each migration status call may wait for the migration to end (the target is
#: checked between two calls).
STATUS_WAIT = 2.0
#: Seconds the target's node daemon has to answer the liveness check during a migration.
TARGET_CHECK_TIMEOUT = 10.0
#: Migration states after which nothing changes any more.
FINAL = frozenset({"completed", "failed", "cancelled"})
#: QEMU run states of a copy left behind by a migration (not executing the guest).
LEFTOVER_STATES = frozenset({"inmigrate", "postmigrate", "finish-migrate", "prelaunch"})

StorageKind = Literal["shared", "local", "none"]


def storage_kind(instance: Instance) -> StorageKind:
    """``none`` (diskless), ``shared`` (every disk reachable from all nodes) or ``local``."""
    if not instance.disks:
        return "none"
    if all(d.dev_type in SHARED_DEV_TYPES for d in instance.disks):
        return "shared"
    return "local"


def refuse_local_storage(instance: Instance, what: str) -> None:
    """Refuse to migrate/fail over an instance whose disks only its node reaches.

    Raises:
        OpError: kind INVALID, pointing to ``instance move``.
    """
    if storage_kind(instance) == "local":
        types = ", ".join(sorted({d.dev_type for d in instance.disks}))
        raise OpError(
            f"cannot {what} instance {instance.name}: its disks ({types}) are local to node "
            f"{instance.primary_node} and no other node reaches them; use 'corral instance "
            "move --target-node NODE' (copies the disks, the instance is stopped meanwhile), "
            "or put its disks on shared storage (sharedfile)",
            kind=ErrorKind.INVALID,
            instance=instance.name,
        )


def instance_memory(cluster: Cluster, instance: Instance, info: InstanceInfo | None) -> int:
    """MiB the instance needs on a new node: what it uses now, else its maxmem."""
    if info is not None and info.memory > 0:
        return info.memory
    return int(filled_beparams(cluster, instance)["maxmem"])


# --- targets -----------------------------------------------------------------------------------


def target_problem(node: Node, source: str) -> str | None:
    """Why ``node`` cannot receive instances from ``source`` (pure), or None."""
    if node.name == source:
        return f"node {node.name} is the instance's current node"
    if node.offline:
        return f"node {node.name} is offline"
    if node.drained:
        return f"node {node.name} is drained"
    if not node.vm_capable:
        return f"node {node.name} is not vm_capable"
    return None


def check_target_flags(node: Node, source: str) -> None:
    """Refuse a target that is the source, offline, drained or not vm_capable.

    Raises:
        OpError: kind WRONG_STATE (INVALID for the source itself), naming the node.
    """
    problem = target_problem(node, source)
    if problem is not None:
        kind = ErrorKind.INVALID if node.name == source else ErrorKind.WRONG_STATE
        raise OpError(f"cannot use {problem}", kind=kind, node=node.name)


async def free_memory(ctx: OpContext, node: Node, hypervisor: str) -> tuple[int, str]:
    """(free MiB, hypervisor version) of ``node`` as its hypervisor reports them.

    Raises:
        CorralError: the node cannot be asked.
    """
    info = await node_info(ctx, node, hypervisors=[hypervisor])
    hv = info.hypervisors.get(hypervisor)
    if hv is None:
        return info.memory_free, ""
    return hv.memory_free, hv.hv_version


def choose_target(
    candidates: Mapping[str, int], needed: int, reserved: Mapping[str, int] | None = None
) -> str | None:
    """The candidate with the most free memory left after ``reserved``, if ``needed`` fits (pure).

    Ties go to the first name in sorted order, so the choice is deterministic.
    """
    reserved = reserved or {}
    best: tuple[int, str] | None = None
    for name in sorted(candidates):
        left = candidates[name] - reserved.get(name, 0)
        if left >= needed and (best is None or left > best[0]):
            best = (left, name)
    return None if best is None else best[1]


async def pick_target(
    ctx: OpContext,
    instance: Instance,
    needed: int,
    *,
    reserved: Mapping[str, int] | None = None,
    exclude: Iterable[str] = (),
) -> Node:
    """The usable node with the most free memory for ``instance`` (``needed`` MiB).

    Unreachable nodes are skipped.

    Raises:
        OpError: no node can take it (NO_RESOURCES), with each candidate's reason.
    """
    skip = set(exclude)
    free: dict[str, int] = {}
    why: list[str] = []
    for node in ctx.config.nodes():
        if node.name in skip:
            continue
        problem = target_problem(node, instance.primary_node)
        if problem is not None:
            if node.name != instance.primary_node:
                why.append(problem)
            continue
        try:
            free[node.name], _ = await free_memory(ctx, node, instance.hypervisor)
        except CorralError as exc:
            why.append(f"node {node.name} cannot be asked ({exc})")
    choice = choose_target(free, needed, reserved)
    if choice is None:
        for name, mib in sorted(free.items()):
            left = mib - (reserved or {}).get(name, 0)
            why.append(f"node {name} has {left} MiB free")
        raise OpError(
            f"no node can take instance {instance.name} ({needed} MiB): "
            + ("; ".join(why) or "the cluster has no other node"),
            kind=ErrorKind.NO_RESOURCES,
            instance=instance.name,
        )
    return ctx.config.node(choice)


async def check_target(
    ctx: OpContext,
    instance: Instance,
    source: Node | None,
    target: Node,
    *,
    memory: int,
    check_version: bool,
) -> None:
    """Check, before anything moves, that ``target`` can run ``instance``.

    Flags (online, not drained, vm_capable), free memory >= ``memory`` (0 = no check), the
    same hypervisor version as ``source`` (when ``check_version`` and the source answers),
    and every shared disk found from the target.

    Raises:
        OpError: the first check that fails (WRONG_STATE, NO_RESOURCES, INVALID or
            NOT_FOUND), naming the target.
        CorralError: the target cannot be asked.
    """
    check_target_flags(target, instance.primary_node)
    free, version = await free_memory(ctx, target, instance.hypervisor)
    if memory and free < memory:
        raise OpError(
            f"not enough memory on node {target.name} for instance {instance.name}: "
            f"needed {memory} MiB, free {free} MiB",
            kind=ErrorKind.NO_RESOURCES,
            node=target.name,
            needed=memory,
            free=free,
        )
    if check_version and source is not None:
        _, src_version = await free_memory(ctx, source, instance.hypervisor)
        if src_version != version:
            raise OpError(
                f"hypervisor versions differ: {instance.hypervisor} {src_version or '?'} on "
                f"{source.name}, {version or '?'} on {target.name}; a migration between "
                "them may fail or corrupt the guest (use --ignore-hvversions to try anyway)",
                kind=ErrorKind.INVALID,
                node=target.name,
                source_version=src_version,
                target_version=version,
            )
    for idx, disk in enumerate(instance.disks):
        if disk.dev_type not in SHARED_DEV_TYPES:
            continue
        found = await ctx.runner.call(
            target, BLOCKDEV_FIND, BlockdevRequest(volume=volume_spec(disk))
        )
        if found.info is None:
            raise OpError(
                f"disk {idx} of {instance.name} ({disk.logical_id}) is not reachable from "
                f"node {target.name}: is the shared storage mounted there?",
                kind=ErrorKind.NOT_FOUND,
                node=target.name,
                disk_index=idx,
            )


def set_primary(ctx: OpContext, name: str, node: str) -> Instance:
    """Record ``node`` as the instance's primary node (one store write)."""

    def change(inst: Instance) -> None:
        inst.primary_node = node

    return ctx.config.modify_instance(name, change)


# --- live migration ------------------------------------------------------------------------------


def _not_delivered(exc: CorralError) -> bool:
    """Whether a failed call surely did not run on the node (refused before it got there).

    A node's own error means it ran and refused; a refused connection or TLS rejection
    means the request never reached the node. Timeouts and resets are unknown outcomes.
    """
    if not isinstance(exc, RpcError):
        return True
    reason = exc.fields.get("reason")
    if reason in ("tls_server_rejected", "tls_client_rejected"):
        return True
    return reason == "unreachable" and "connection refused" in exc.message


@dataclasses.dataclass(slots=True)
class Migration:
    """One migration of ``instance`` from ``source`` to ``target`` (see module docstring).

    The order: ``migration_info`` (source) -> ``accept_instance`` (target, paused) ->
    ``migrate_instance`` (source) -> ``migration_status`` until final -> ``finalize`` on the
    target (the guest runs there) -> the primary node changes in the store -> ``finalize``
    on the source (it quits). Before the target runs the guest, any failure aborts: the
    target copy is removed and the source resumed, so the guest runs on the source only.
    """

    ctx: OpContext
    cluster: Cluster
    instance: Instance
    source: Node
    target: Node
    live: bool
    op_id: str = "OP_INSTANCE_MIGRATE"
    status: MigrationStatus | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    def _feedback(self, text: str) -> None:
        self.ctx.feedback(text)

    async def run(self) -> dict[str, Any]:
        """Migrate; returns a summary (nodes, mode, QEMU's figures, warnings).

        Raises:
            OpError: the migration failed; the message says where the instance runs now
                and what (if anything) must be cleaned up.
            CorralError: a step failed before anything started (nothing changed).
        """
        inst, src, dst, runner = self.instance, self.source, self.target, self.ctx.runner
        spec = instance_spec(self.cluster, inst)
        hv = filled_hvparams(self.cluster, inst)
        port = int(hv.get("migration_port") or DEFAULT_MIGRATION_PORT)
        listen = dst.secondary_ip or dst.primary_ip
        mode = "live" if self.live else "non-live"
        self._feedback(f"migrating {inst.name} from {src.name} to {dst.name} ({mode})")
        info = await runner.call(
            src, MIGRATION_INFO, MigrationInfoRequest(name=inst.name, hypervisor=inst.hypervisor)
        )
        await runner.call(
            dst,
            ACCEPT_INSTANCE,
            AcceptInstanceRequest(
                instance=spec, disks=disk_refs(inst), info=info.info, listen_host=listen, port=port
            ),
        )
        try:
            await runner.call(
                src,
                MIGRATE_INSTANCE,
                MigrateInstanceRequest(
                    name=inst.name,
                    hypervisor=inst.hypervisor,
                    target_host=listen,
                    port=port,
                    live=self.live,
                ),
            )
            self.status = await self._wait()
            if self.status.status != "completed":
                raise OpError(
                    f"the migration of {inst.name} {self.status.status}"
                    + (f": {self.status.error}" if self.status.error else ""),
                    kind=ErrorKind.ENVIRONMENT,
                    instance=inst.name,
                )
            await runner.call(
                dst,
                FINALIZE_MIGRATION_DST,
                FinalizeMigrationDstRequest(instance=spec, success=True),
            )
        except CorralError as exc:
            raise await self._abort(exc, spec) from exc
        # the guest runs on the target now: record it, then let the source go
        try:
            self.instance = set_primary(self.ctx, inst.name, dst.name)
        except CorralError as exc:
            raise OpError(
                f"{inst.name} runs on {dst.name} now, but recording that failed ({exc}); "
                f"the stopped copy on {src.name} is kept: run 'corral instance migrate "
                f"--cleanup {inst.name}'",
                kind=ErrorKind.FAULT,
                instance=inst.name,
                node=dst.name,
            ) from exc
        try:
            await runner.call(
                src,
                FINALIZE_MIGRATION_SRC,
                FinalizeMigrationSrcRequest(
                    name=inst.name, hypervisor=inst.hypervisor, success=True
                ),
            )
        except CorralError as exc:
            self._warn(
                f"the stopped copy of {inst.name} on {src.name} was not removed ({exc}); "
                f"run 'corral instance migrate --cleanup {inst.name}'"
            )
        self._feedback(f"instance {inst.name} now runs on {dst.name}")
        st = self.status
        return {
            "instance": inst.name,
            "source": src.name,
            "target": dst.name,
            "mode": mode,
            "transferred": st.transferred if st else 0,
            "downtime_ms": st.downtime_ms if st else None,
            "total_time_ms": st.total_time_ms if st else None,
            "warnings": list(self.warnings),
        }

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        self._feedback(f"warning: {text}")

    async def _wait(self) -> MigrationStatus:
        inst = self.instance
        last_report = -1
        while True:
            resp = await self.ctx.runner.call(
                self.source,
                MIGRATION_STATUS,
                MigrationStatusRequest(
                    name=inst.name, hypervisor=inst.hypervisor, wait=STATUS_WAIT
                ),
            )
            st = resp.status
            if st.status in FINAL:
                return st
            await self._check_target_alive()
            mib = st.transferred // (1024 * 1024)
            if mib != last_report:
                last_report = mib
                total = st.total // (1024 * 1024)
                self._feedback(f"migration {st.status}: {mib} of {total} MiB sent")

    async def _check_target_alive(self) -> None:
        """Refuse to let a migration complete towards a node daemon that stopped answering.

        NOTE: once QEMU's migration completed, the paused destination holds the shared disks'
        image locks and the source cannot run again until the destination is gone; without
        its node daemon nobody can remove it. Cancelling while the transfer still runs keeps
        the source able to resume.

        Raises:
            CorralError: the target does not answer (RpcError) or fails the check.
        """
        inst = self.instance
        await self.ctx.runner.call(
            self.target,
            INSTANCE_INFO,
            InstanceInfoRequest(name=inst.name, hypervisor=inst.hypervisor),
            timeout=TARGET_CHECK_TIMEOUT,
        )

    async def _abort(self, cause: CorralError, spec: Any) -> OpError:
        """Put the guest back on the source only; the error to raise says where it runs."""
        inst, src, dst, runner = self.instance, self.source, self.target, self.ctx.runner
        self._feedback(f"migration of {inst.name} failed ({cause}); rolling back")
        if (
            not _not_delivered(cause)
            and isinstance(cause, RpcError)
            and cause.fields.get("call") == FINALIZE_MIGRATION_DST.name
        ):
            # NOTE: the target may have got the order to run the guest before the connection
            # broke; resuming the source now could run the guest twice on shared disks.
            return OpError(
                f"migration of {inst.name} failed while the target {dst.name} was told to run "
                f"it ({cause}); whether it runs there is unknown, so the source copy on "
                f"{src.name} is kept stopped: run 'corral instance migrate --cleanup "
                f"{inst.name}' once {dst.name} answers",
                kind=ErrorKind.ENVIRONMENT,
                instance=inst.name,
            )
        leftovers: list[str] = []
        # NOTE: fails when the migration completed or never started; the finalize below
        # resumes the source in both cases.
        with contextlib.suppress(CorralError):
            await runner.call(
                src,
                ABORT_MIGRATION,
                AbortMigrationRequest(name=inst.name, hypervisor=inst.hypervisor),
            )
        try:
            await runner.call(
                dst,
                FINALIZE_MIGRATION_DST,
                FinalizeMigrationDstRequest(instance=spec, success=False),
            )
        except CorralError as exc:
            leftovers.append(f"a paused copy may remain on {dst.name} ({exc})")
        try:
            await runner.call(
                src,
                FINALIZE_MIGRATION_SRC,
                FinalizeMigrationSrcRequest(
                    name=inst.name, hypervisor=inst.hypervisor, success=False
                ),
            )
        except CorralError as exc:
            return OpError(
                f"migration of {inst.name} to {dst.name} failed ({cause}) and the source on "
                f"{src.name} could not be resumed ({exc}); run 'corral instance migrate "
                f"--cleanup {inst.name}'",
                kind=ErrorKind.ENVIRONMENT,
                instance=inst.name,
            )
        tail = ""
        if leftovers:
            tail = (
                "; " + "; ".join(leftovers) + f": run 'corral instance migrate --cleanup "
                f"{inst.name}' once {dst.name} answers"
            )
        return OpError(
            f"migration of {inst.name} to {dst.name} failed: {cause}; the instance runs on "
            f"{src.name}{tail}",
            kind=cause.kind if cause.kind is not ErrorKind.FAULT else ErrorKind.ENVIRONMENT,
            instance=inst.name,
            node=src.name,
        )


# --- cleanup after a failed migration ------------------------------------------------------------


def _copy_kind(info: InstanceInfo) -> Literal["running", "leftover"]:
    """Whether a copy executes the guest or is a stopped migration leftover."""
    details = info.details or {}
    if details.get("migration") or str(details.get("status", "")) in LEFTOVER_STATES:
        return "leftover"
    return "running" if info.state is not InstanceState.SHUTDOWN else "leftover"


async def migration_cleanup(
    ctx: OpContext, cluster: Cluster, instance: Instance, nodes: list[Node]
) -> dict[str, Any]:
    """Find where the instance runs after a failed migration and make it consistent.

    Looks at every given node (unreachable ones are reported and skipped). One executing
    copy: it becomes the primary, any other copy is stopped. No executing copy: the copy on
    the configured primary is resumed (else a leftover elsewhere is run), the rest stopped.
    Two executing copies: refused (the administrator must decide which one to keep).

    Raises:
        OpError: several executing copies (WRONG_STATE), or a step failed.
    """
    copies: dict[str, InstanceInfo] = {}
    unreachable: list[str] = []
    for node in nodes:
        try:
            info = await live_info(ctx, node, instance)
        except CorralError as exc:
            unreachable.append(f"{node.name} ({exc})")
            continue
        if info is not None:
            copies[node.name] = info
    for what in unreachable:
        ctx.feedback(f"warning: cannot look for {instance.name} on {what}")
    running = sorted(n for n, i in copies.items() if _copy_kind(i) == "running")
    ctx.feedback(
        f"{instance.name}: "
        + (
            ", ".join(f"{n}: {_copy_kind(i)} ({i.state.value})" for n, i in copies.items())
            or "no copy found"
        )
    )
    if len(running) > 1:
        raise OpError(
            f"instance {instance.name} runs on several nodes ({', '.join(running)}); stop "
            "the wrong copies by hand (their disks are shared: do it now)",
            kind=ErrorKind.WRONG_STATE,
            instance=instance.name,
        )
    runner, spec = ctx.runner, instance_spec(cluster, instance)
    keep: str | None = running[0] if running else None
    if keep is None and instance.primary_node in copies:
        ctx.feedback(f"resuming the copy on {instance.primary_node}")
        await runner.call(
            ctx.config.node(instance.primary_node),
            FINALIZE_MIGRATION_SRC,
            FinalizeMigrationSrcRequest(
                name=instance.name, hypervisor=instance.hypervisor, success=False
            ),
        )
        keep = instance.primary_node
    elif keep is None and copies:
        keep = sorted(copies)[0]
        ctx.feedback(f"running the copy on {keep}")
        await runner.call(
            ctx.config.node(keep),
            FINALIZE_MIGRATION_DST,
            FinalizeMigrationDstRequest(instance=spec, success=True),
        )
    stopped = []
    for name in sorted(copies):
        if name == keep:
            continue
        ctx.feedback(f"stopping the stray copy of {instance.name} on {name}")
        await runner.call(
            ctx.config.node(name),
            INSTANCE_SHUTDOWN,
            InstanceShutdownRequest(
                name=instance.name, hypervisor=instance.hypervisor, timeout=0, force=True
            ),
        )
        stopped.append(name)
    changed = keep is not None and keep != instance.primary_node
    if changed and keep is not None:
        set_primary(ctx, instance.name, keep)
        ctx.feedback(f"recorded {keep} as the primary node of {instance.name}")
    return {
        "instance": instance.name,
        "runs_on": keep,
        "primary_changed": changed,
        "stopped_copies": stopped,
        "unreachable": unreachable,
    }


# --- failover (cold, shared storage) -------------------------------------------------------------


async def failover(
    ctx: OpContext,
    cluster: Cluster,
    instance: Instance,
    source: Node,
    target: Node,
    *,
    shutdown_timeout: float,
    ignore_consistency: bool,
    op_id: str = "OP_INSTANCE_FAILOVER",
) -> dict[str, Any]:
    """Stop on ``source`` (unless unreachable and ``ignore_consistency``), move, start on target.

    The instance is started on the target only when its admin state is up.

    Raises:
        CorralError: the shutdown failed (nothing changed), or the start on the target
            failed (the instance is recorded on the target, stopped; the message says so).
    """
    runner = ctx.runner
    reason = reason_text(ctx.job_id, op_id)
    ctx.feedback(f"failing over {instance.name} from {source.name} to {target.name}")
    try:
        await runner.call(
            source,
            INSTANCE_SHUTDOWN,
            InstanceShutdownRequest(
                name=instance.name,
                hypervisor=instance.hypervisor,
                timeout=shutdown_timeout,
                reason=reason,
            ),
            timeout=INSTANCE_SHUTDOWN.timeout + shutdown_timeout,
        )
    except RpcError as exc:
        if not ignore_consistency:
            raise OpError(
                f"cannot shut down {instance.name} on {source.name} ({exc}); if that node is "
                "down for sure, use --ignore-consistency",
                kind=ErrorKind.ENVIRONMENT,
                instance=instance.name,
                node=source.name,
            ) from exc
        ctx.feedback(f"warning: {source.name} unreachable, assuming {instance.name} is down")
    moved = set_primary(ctx, instance.name, target.name)
    started = False
    if moved.admin_state is AdminState.UP:
        ctx.feedback(f"starting {instance.name} on {target.name}")
        try:
            await runner.call(
                target,
                INSTANCE_START,
                InstanceStartRequest(
                    instance=instance_spec(cluster, moved), disks=disk_refs(moved), reason=reason
                ),
            )
        except CorralError as exc:
            raise OpError(
                f"{instance.name} now belongs to {target.name} but could not be started "
                f"there: {exc}",
                kind=exc.kind,
                instance=instance.name,
                node=target.name,
            ) from exc
        started = True
    return {
        "instance": instance.name,
        "source": source.name,
        "target": target.name,
        "started": started,
    }


async def is_running_on(ctx: OpContext, node: Node, instance: Instance) -> bool:
    """Whether the instance runs (or is paused) on ``node``.

    Raises:
        CorralError: the node cannot be asked.
    """
    return is_running(await live_info(ctx, node, instance))

"""Moving an instance by copying its disks (``instance move``, local disks in evacuations).

The volume copy itself runs between the two node daemons (``node/backend/transfer.py``): the
destination opens a one-shot TLS import, the source streams the image into it, both report a
SHA-256 and the copy counts only when they agree.
"""

from __future__ import annotations

import functools
from typing import Any

from corral.common.errors import CorralError, ErrorKind, OpError
from corral.master.ops.base import OpContext
from corral.master.ops.common import (
    AsyncUndo,
    check_storage_space,
    disk_refs,
    instance_spec,
    reason_text,
    volume_spec,
)
from corral.master.ops.mobility_steps import (
    COPYABLE_DEV_TYPES,
    check_target,
    check_target_flags,
    set_primary,
    storage_kind,
)
from corral.objects.cluster import Cluster
from corral.objects.instance import AdminState, Instance
from corral.objects.node import Node
from corral.objects.params.fill import filled_beparams
from corral.rpc.calls import (
    BLOCKDEV_CREATE,
    BLOCKDEV_REMOVE,
    INSTANCE_SHUTDOWN,
    INSTANCE_START,
    BlockdevRequest,
    InstanceShutdownRequest,
    InstanceStartRequest,
)
from corral.rpc.calls_mobility import (
    TRANSFER_EXPORT,
    TRANSFER_IMPORT_ABORT,
    TRANSFER_IMPORT_START,
    TRANSFER_IMPORT_WAIT,
    TransferExportRequest,
    TransferImportAbortRequest,
    TransferImportStartRequest,
    TransferImportWaitRequest,
)
from corral.storage.base import VolumeSpec


async def copy_volume(ctx: OpContext, source: Node, target: Node, vol: VolumeSpec) -> str:
    """Copy one existing volume's image from ``source`` into the same volume on ``target``.

    Returns:
        The SHA-256 both sides agreed on.

    Raises:
        StorageError / OpError: the transfer failed or the checksums differ (ENVIRONMENT).
    """
    runner = ctx.runner
    opened = await runner.call(
        target,
        TRANSFER_IMPORT_START,
        TransferImportStartRequest(
            volume=vol, listen_host=target.secondary_ip or target.primary_ip
        ),
    )
    try:
        sent = await runner.call(
            source,
            TRANSFER_EXPORT,
            TransferExportRequest(
                volume=vol,
                dest_node=target.name,
                dest_host=target.secondary_ip or target.primary_ip,
                port=opened.port,
                token=opened.token,
            ),
        )
        got = await runner.call(
            target, TRANSFER_IMPORT_WAIT, TransferImportWaitRequest(import_id=opened.import_id)
        )
    except BaseException:
        try:
            await runner.call(
                target,
                TRANSFER_IMPORT_ABORT,
                TransferImportAbortRequest(import_id=opened.import_id),
            )
        except CorralError as exc:
            ctx.log.warning("closing import %s failed: %s", opened.import_id, exc)
        raise
    if (sent.bytes, sent.sha256) != (got.bytes, got.sha256):
        raise OpError(
            f"copy of {vol.logical_id} is corrupt: {sent.bytes} bytes sha256 {sent.sha256} "
            f"sent, {got.bytes} bytes sha256 {got.sha256} written",
            kind=ErrorKind.ENVIRONMENT,
            logical_id=vol.logical_id,
        )
    return got.sha256


async def move(
    ctx: OpContext,
    cluster: Cluster,
    instance: Instance,
    source: Node,
    target: Node,
    *,
    shutdown_timeout: float,
    running: bool,
    op_id: str = "OP_INSTANCE_MOVE",
) -> dict[str, Any]:
    """Stop the instance (if ``running``), copy its disks, switch nodes, remove the old disks.

    The source disks are removed only after every copy was verified (checksums) and the
    store records the target; the instance starts on the target if its admin state is up.
    On a failure before the switch the target's volumes are removed and the instance is
    started again on the source if it ran.

    Raises:
        CorralError: the step that failed (see above for the state left behind).
    """
    runner, reason = ctx.runner, reason_text(ctx.job_id, op_id)
    undo = AsyncUndo(ctx)
    checksums: list[str] = []
    try:
        if running:
            ctx.feedback(f"shutting down {instance.name} on {source.name}")
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
            undo.add(
                f"start {instance.name} on {source.name}",
                functools.partial(
                    runner.call,
                    source,
                    INSTANCE_START,
                    InstanceStartRequest(
                        instance=instance_spec(cluster, instance),
                        disks=disk_refs(instance),
                        reason=reason,
                    ),
                ),
            )
        for idx, disk in enumerate(instance.disks):
            vol = volume_spec(disk)
            ctx.feedback(f"creating disk {idx} ({disk.size} MiB) on {target.name}")
            await runner.call(target, BLOCKDEV_CREATE, BlockdevRequest(volume=vol))
            undo.add(
                f"disk {idx} on {target.name}",
                functools.partial(
                    runner.call, target, BLOCKDEV_REMOVE, BlockdevRequest(volume=vol)
                ),
            )
            ctx.feedback(f"copying disk {idx} to {target.name}")
            checksums.append(await copy_volume(ctx, source, target, vol))
            ctx.feedback(f"disk {idx} copied and verified (sha256 {checksums[-1][:16]}...)")
        moved = set_primary(ctx, instance.name, target.name)
        undo.clear()
    except BaseException:
        await undo.rollback()
        raise
    for idx, disk in enumerate(instance.disks):
        try:
            await runner.call(source, BLOCKDEV_REMOVE, BlockdevRequest(volume=volume_spec(disk)))
        except CorralError as exc:
            ctx.feedback(f"warning: disk {idx} could not be removed from {source.name}: {exc}")
    started = False
    if moved.admin_state is AdminState.UP:
        ctx.feedback(f"starting {instance.name} on {target.name}")
        await runner.call(
            target,
            INSTANCE_START,
            InstanceStartRequest(
                instance=instance_spec(cluster, moved), disks=disk_refs(moved), reason=reason
            ),
        )
        started = True
    return {
        "instance": instance.name,
        "source": source.name,
        "target": target.name,
        "checksums": checksums,
        "started": started,
    }


async def check_move_target(
    ctx: OpContext, cluster: Cluster, instance: Instance, target: Node
) -> None:
    """A move target: usable flags, disk space for every disk, memory if it should run.

    Raises:
        OpError: as :func:`check_target`, or not enough disk space (NO_RESOURCES).
    """
    check_target_flags(target, instance.primary_node)
    if storage_kind(instance) == "shared":
        raise OpError(
            f"the disks of {instance.name} are on shared storage, which every node reaches: "
            "use 'corral instance failover' (or migrate) instead of move",
            kind=ErrorKind.INVALID,
            instance=instance.name,
        )
    bad = sorted({d.dev_type for d in instance.disks} - COPYABLE_DEV_TYPES)
    if bad:
        raise OpError(
            f"disks of type {', '.join(bad)} cannot be copied",
            kind=ErrorKind.INVALID,
            instance=instance.name,
        )
    if instance.disks:
        location = str(instance.disks[0].params.get("storage_dir") or cluster.file_storage_dir)
        await check_storage_space(ctx, target, location, sum(d.size for d in instance.disks))
    if instance.admin_state is AdminState.UP:
        needed = int(filled_beparams(cluster, instance)["maxmem"])
        await check_target(ctx, instance, None, target, memory=needed, check_version=False)

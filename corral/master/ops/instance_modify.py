"""Instance changes: set_params (incl. runtime memory), grow_disk, rename, reinstall."""

from __future__ import annotations

from typing import Any

from corral.common.errors import ErrorKind, OpError, ParamError
from corral.master.config import Versioned
from corral.master.locking import LockMode, instance_lock
from corral.master.ops.base import register
from corral.master.ops.common import (
    AsyncUndo,
    check_beparams,
    check_hvparams,
    check_instance_name,
    check_memory_range,
    check_node_memory,
    check_os_name,
    check_osparams,
    check_storage_space,
    disk_refs,
    ensure_not_running,
    instance_spec,
    is_running,
    live_info,
    merge_params,
    renamed_disk_path,
    volume_spec,
)
from corral.master.ops.instance import InstanceOperation
from corral.master.ops.instance_devices import DeviceChanges, DeviceMod, parse_mods
from corral.objects.instance import Instance
from corral.objects.opcodes import (
    OpInstanceGrowDisk,
    OpInstanceReinstall,
    OpInstanceRename,
    OpInstanceSetParams,
)
from corral.objects.params.cpumask import cpu_mask_problem
from corral.objects.params.fill import filled_beparams, filled_hvparams
from corral.rpc.calls import (
    BLOCKDEV_GROW,
    BLOCKDEV_RENAME,
    HV_VALIDATE,
    INSTANCE_BALLOON,
    INSTANCE_PIN_CPUS,
    OS_CREATE,
    OS_RENAME,
    OS_VERIFY,
    BlockdevGrowRequest,
    BlockdevRenameRequest,
    HvValidateRequest,
    InstanceBalloonRequest,
    InstancePinCpusRequest,
    OsCreateRequest,
    OsRenameRequest,
    OsVerifyRequest,
)


def _filled_osparams(
    cluster_osparams: dict[str, dict[str, Any]], os_name: str, own: dict[str, Any]
) -> dict[str, str]:
    merged = dict(cluster_osparams.get(os_name.split("+", 1)[0], {}))
    merged.update(own)
    return {k: str(v) for k, v in merged.items()}


@register
class InstanceSetParams(InstanceOperation[OpInstanceSetParams]):
    """Change beparams/hvparams/osparams/OS of an instance, or balloon its memory."""

    OPCODE = OpInstanceSetParams
    HPATH = "instance-modify"

    _be: dict[str, Any]
    _hv: dict[str, Any]
    _os: dict[str, str]
    _mods: list[DeviceMod]
    _devices: DeviceChanges | None = None
    _pin: str | None = None  # a new cpu_mask to apply to the running guest

    def check_arguments(self) -> None:
        """Something to change; syntax of params, OS name, runtime memory, disk/NIC changes."""
        op = self.op
        if not (
            op.hvparams
            or op.beparams
            or op.osparams
            or op.os_name
            or op.runtime_mem is not None
            or op.disks
            or op.nics
        ):
            raise OpError("no changes submitted", kind=ErrorKind.INVALID)
        self._mods = parse_mods("disk", op.disks) + parse_mods("nic", op.nics)
        self._be = check_beparams(op.beparams)
        self._os = check_osparams({k: v for k, v in op.osparams.items() if v is not None})
        if op.os_name is not None:
            check_os_name(op.os_name, "os_name")
        if op.runtime_mem is not None and op.runtime_mem <= 0:
            raise ParamError({"runtime_mem": f"must be positive, got {op.runtime_mem}"})
        if op.hotplug is True and not self._mods:
            raise ParamError({"hotplug": "only disk and NIC changes can be hot-plugged"})

    def hook_vars(self) -> dict[str, str]:
        """RUNTIME_MEMORY (when ballooning) and NEW_DISK_TEMPLATE (never changed here)."""
        env = {"NEW_DISK_TEMPLATE": ""}
        if self.op.runtime_mem is not None:
            env["RUNTIME_MEMORY"] = str(self.op.runtime_mem)
        return env

    def _apply(self, inst: Instance) -> None:
        inst.beparams = merge_params(inst.beparams, self._be)
        inst.hvparams = merge_params(inst.hvparams, self._hv)
        removed = {k: None for k, v in self.op.osparams.items() if v is None}
        inst.osparams = merge_params(inst.osparams, {**self._os, **removed})
        if self.op.os_name:
            inst.os = self.op.os_name
        if self._devices is not None:
            self._devices.apply(inst)

    async def check_prereq(self) -> None:
        """Check the changed parameters; the node must accept them.

        Runtime memory needs a running instance and must lie within the [minmem, maxmem]
        the guest was started with.
        """
        await super().check_prereq()
        inst, op, cluster = self.instance, self.op, self.cluster
        self._hv = check_hvparams(inst.hypervisor, op.hvparams)
        future = inst.model_copy(deep=True)
        self._apply(future)
        be = filled_beparams(cluster, future)
        check_memory_range(be)
        hv_filled = filled_hvparams(cluster, future)
        mask = hv_filled.get("cpu_mask")
        if isinstance(mask, str) and (self._hv.get("cpu_mask") or "vcpus" in self._be):
            problem = cpu_mask_problem(mask, int(be["vcpus"]))
            if problem:
                raise ParamError({"cpu_mask": problem}, context="hvparams")
        running: bool | None = None
        if "cpu_mask" in self._hv and isinstance(mask, str):
            running = is_running(await live_info(self.ctx, self.pnode, inst))
            self._pin = mask if running else None
        if self._mods:
            if running is None:
                running = is_running(await live_info(self.ctx, self.pnode, inst))
            self._devices = DeviceChanges(
                self.ctx,
                cluster,
                inst,
                self.pnode,
                self._mods,
                None if op.hotplug_if_possible and not op.hotplug else op.hotplug,
            )
            await self._devices.prepare(running)
        if self._hv:
            await self.ctx.runner.call(
                self.pnode,
                HV_VALIDATE,
                HvValidateRequest(
                    hypervisor=inst.hypervisor, hvparams=filled_hvparams(cluster, future)
                ),
            )
        if (op.os_name or op.osparams) and not op.force:
            await self.ctx.runner.call(
                self.pnode,
                OS_VERIFY,
                OsVerifyRequest(
                    os=future.os,
                    osparams=_filled_osparams(cluster.osparams, future.os, future.osparams),
                ),
            )
        if op.runtime_mem is not None:
            info = await live_info(self.ctx, self.pnode, inst)
            if info is None or not is_running(info):
                raise OpError(
                    f"instance {inst.name} is not running; runtime_mem needs a running guest",
                    kind=ErrorKind.WRONG_STATE,
                    instance=inst.name,
                )
            low, high = int(be["minmem"]), int(be["maxmem"])
            # NOTE: a running guest keeps the bounds it was started with (QEMU's -m is
            # fixed); new minmem/maxmem values apply at its next start.
            started_max = info.details.get("max_memory")
            started_min = info.details.get("min_memory")
            if isinstance(started_max, int) and started_max < high:
                high = started_max
            if isinstance(started_min, int) and started_min > low:
                low = started_min
            if not low <= op.runtime_mem <= high:
                raise ParamError(
                    {
                        "runtime_mem": f"must be between {low} and {high} MiB for the running "
                        f"guest (got {op.runtime_mem}); changed minmem/maxmem apply at the "
                        "next start"
                    },
                )
            delta = op.runtime_mem - info.memory
            if delta > 0 and not op.force:
                await check_node_memory(
                    self.ctx,
                    self.pnode,
                    inst.hypervisor,
                    delta,
                    f"growing {inst.name} to {op.runtime_mem} MiB",
                )

    async def execute(self) -> Any:
        """Disk/NIC changes, then ballooning and a new CPU mask, then one store transaction.

        Node steps (created disks, hotplug, pinning) are undone in reverse order when a later
        step or the store update fails; volumes of removed disks are deleted only after the
        store was updated (instance_devices.py).

        Returns:
            Ganeti-style list of ``[parameter, new value]`` pairs.
        """
        op, inst = self.op, self.instance
        changes: list[list[Any]] = []
        undo = AsyncUndo(self.ctx)
        try:
            if self._devices is not None:
                changes += await self._devices.execute(undo)
            if op.runtime_mem is not None:
                self.feedback(f"setting the memory of {inst.name} to {op.runtime_mem} MiB")
                resp = await self.ctx.runner.call(
                    self.pnode,
                    INSTANCE_BALLOON,
                    InstanceBalloonRequest(
                        name=inst.name, hypervisor=inst.hypervisor, memory=op.runtime_mem
                    ),
                )
                changes.append(["runtime_memory", resp.memory])
            if self._pin is not None:
                await self._pin_cpus(self._pin, undo)
            if self._be or self._hv or op.osparams or op.os_name or self._devices is not None:
                self.instance = self.ctx.config.modify_instance(inst.name, self._apply)
            undo.clear()
        except BaseException:
            await undo.rollback()
            raise
        if self._devices is not None:
            await self._devices.after_commit()
        changes += [[f"be/{k}", v if v is not None else "default"] for k, v in self._be.items()]
        changes += [[f"hv/{k}", v if v is not None else "default"] for k, v in self._hv.items()]
        changes += [[f"os/{k}", v if v is not None else "default"] for k, v in op.osparams.items()]
        if op.os_name:
            changes.append(["os", op.os_name])
        if self._be or self._hv or op.osparams or op.os_name:
            later = "other hypervisor changes" if self._pin is not None else "hypervisor changes"
            self.feedback(f"parameters stored; {later} apply at the next start")
        return changes

    async def _pin_cpus(self, mask: str, undo: AsyncUndo) -> None:
        """Apply a new ``cpu_mask`` to the running guest; undo restores the old one."""
        inst = self.instance
        old = str(filled_hvparams(self.cluster, inst).get("cpu_mask", "all"))

        async def pin(value: str) -> None:
            await self.ctx.runner.call(
                self.pnode,
                INSTANCE_PIN_CPUS,
                InstancePinCpusRequest(name=inst.name, hypervisor=inst.hypervisor, cpu_mask=value),
            )

        self.feedback(f"pinning the vCPUs of {inst.name}: cpu_mask {mask}")
        await pin(mask)
        undo.add("CPU pinning", lambda: pin(old))


@register
class InstanceGrowDisk(InstanceOperation[OpInstanceGrowDisk]):
    """Grow one disk by an amount (or to an absolute size)."""

    OPCODE = OpInstanceGrowDisk
    HPATH = "disk-grow"

    _delta: int = 0

    def check_arguments(self) -> None:
        """Disk index not negative, amount positive."""
        if self.op.disk < 0:
            raise ParamError({"disk": f"must not be negative, got {self.op.disk}"})
        if self.op.amount <= 0:
            raise ParamError({"amount": f"must be positive, got {self.op.amount}"})

    def hook_vars(self) -> dict[str, str]:
        """DISK, AMOUNT, ABSOLUTE."""
        return {
            "DISK": str(self.op.disk),
            "AMOUNT": str(self.op.amount),
            "ABSOLUTE": str(self.op.absolute),
        }

    async def check_prereq(self) -> None:
        """The disk exists, the new size is larger, the node has the space."""
        await super().check_prereq()
        inst, op = self.instance, self.op
        if op.disk >= len(inst.disks):
            raise ParamError(
                {"disk": f"instance {inst.name} has no disk {op.disk} ({len(inst.disks)} disk(s))"}
            )
        disk = inst.disks[op.disk]
        if op.absolute:
            if op.amount <= disk.size:
                raise ParamError(
                    {
                        "amount": f"new size {op.amount} MiB is not larger than the current "
                        f"{disk.size} MiB"
                    }
                )
            self._delta = op.amount - disk.size
        else:
            self._delta = op.amount
        storage_dir = disk.params.get("storage_dir")
        if storage_dir:
            await check_storage_space(self.ctx, self.pnode, str(storage_dir), self._delta)

    async def execute(self) -> Any:
        """Grow on the node, then record the new size."""
        idx, inst = self.op.disk, self.instance
        disk = inst.disks[idx]
        self.feedback(f"growing disk {idx} of {inst.name} by {self._delta} MiB")
        resp = await self.ctx.runner.call(
            self.pnode,
            BLOCKDEV_GROW,
            BlockdevGrowRequest(
                volume=volume_spec(disk),
                amount=self._delta,
                # the node grows a running instance's disk through its hypervisor
                instance=inst.name,
                hypervisor=inst.hypervisor,
                disk_index=idx,
            ),
        )
        new_size = resp.info.size if resp.info is not None else disk.size + self._delta

        def change(current: Instance) -> None:
            current.disks[idx].size = new_size

        self.instance = self.ctx.config.modify_instance(inst.name, change)
        self.feedback(f"disk {idx} is now {new_size} MiB")
        return None


@register
class InstanceRename(InstanceOperation[OpInstanceRename]):
    """Rename a stopped instance: its file disks move, the OS rename script runs."""

    OPCODE = OpInstanceRename
    HPATH = "instance-rename"

    def check_arguments(self) -> None:
        """A valid, different new name."""
        check_instance_name(self.op.new_name, "new_name")
        if self.op.new_name == self.op.instance_name:
            raise ParamError({"new_name": "is the instance's current name"})

    def declare_locks(self) -> dict[str, LockMode]:
        """The usual locks plus the new name, exclusive."""
        locks = super().declare_locks()
        locks[instance_lock(self.op.new_name)] = LockMode.EXCLUSIVE
        return locks

    def hook_vars(self) -> dict[str, str]:
        """INSTANCE_NEW_NAME."""
        return {"INSTANCE_NEW_NAME": self.op.new_name}

    def hooks_target(self) -> str:
        """The old name."""
        return self.op.instance_name

    async def check_prereq(self) -> None:
        """Stopped, and the new name is free."""
        await super().check_prereq()
        await ensure_not_running(self.ctx, self.pnode, self.instance, "renaming it")
        if self.ctx.config.find_instance(self.op.new_name) is not None:
            raise OpError(
                f"instance {self.op.new_name!r} already exists (new_name)",
                kind=ErrorKind.EXISTS,
                instance=self.op.new_name,
            )

    async def execute(self) -> Any:
        """Move the disks, store the new name (one transaction), run the OS rename script.

        A failure moving disks moves the ones already moved back; the store is unchanged. A
        failing OS rename script is reported but does not undo the rename (Ganeti behaviour).

        Returns:
            The new name.
        """
        old, new_name, runner = self.instance, self.op.new_name, self.ctx.runner
        renamed = old.model_copy(deep=True)
        renamed.name = new_name
        undo = AsyncUndo(self.ctx)
        try:
            for idx, disk in enumerate(old.disks):
                if disk.dev_type not in ("file", "sharedfile"):
                    continue
                new_path = renamed_disk_path(disk.logical_id, new_name)
                self.feedback(f"moving disk {idx} to {new_path}")
                await runner.call(
                    self.pnode,
                    BLOCKDEV_RENAME,
                    BlockdevRenameRequest(volume=volume_spec(disk), new_logical_id=new_path),
                )
                moved = disk.model_copy(update={"logical_id": new_path})
                renamed.disks[idx] = moved

                async def back(moved: Any = moved, orig: str = disk.logical_id) -> None:
                    await runner.call(
                        self.pnode,
                        BLOCKDEV_RENAME,
                        BlockdevRenameRequest(volume=volume_spec(moved), new_logical_id=orig),
                    )

                undo.add(f"move of disk {idx}", back)
            self.ctx.config.rename_instance(Versioned(old, self.instance_rev), renamed)
            undo.clear()
        except BaseException:
            await undo.rollback()
            raise
        self.instance = renamed
        if old.os:
            try:
                await runner.call(
                    self.pnode,
                    OS_RENAME,
                    OsRenameRequest(
                        instance=instance_spec(self.cluster, renamed),
                        disks=disk_refs(renamed),
                        os=renamed.os,
                        old_name=old.name,
                        osparams=_filled_osparams(
                            self.cluster.osparams, renamed.os, renamed.osparams
                        ),
                        debug=self.op.debug_level,
                    ),
                )
            except Exception as exc:
                self.feedback(
                    f"warning: the OS rename script failed (the instance is renamed): {exc}"
                )
        self.feedback(f"instance {old.name} renamed to {new_name}")
        return new_name


@register
class InstanceReinstall(InstanceOperation[OpInstanceReinstall]):
    """Run the OS create script again on a stopped instance (optionally another OS)."""

    OPCODE = OpInstanceReinstall
    HPATH = "instance-reinstall"

    _os: str = ""
    _osparams: dict[str, Any]

    def check_arguments(self) -> None:
        """OS name and parameter syntax."""
        if self.op.os_type is not None:
            check_os_name(self.op.os_type)
        check_osparams(self.op.osparams)

    async def check_prereq(self) -> None:
        """Stopped; the (new) OS exists on the node and accepts the parameters."""
        await super().check_prereq()
        inst = self.instance
        await ensure_not_running(self.ctx, self.pnode, inst, "reinstalling it")
        self._os = self.op.os_type or inst.os
        if not self._os:
            raise ParamError({"os_type": f"instance {inst.name} has no OS; give one"})
        self._osparams = merge_params(inst.osparams, check_osparams(self.op.osparams))
        await self.ctx.runner.call(
            self.pnode,
            OS_VERIFY,
            OsVerifyRequest(
                os=self._os,
                osparams=_filled_osparams(self.cluster.osparams, self._os, self._osparams),
            ),
        )

    async def execute(self) -> Any:
        """Run the create script with ``INSTANCE_REINSTALL=1``, then store OS and params."""
        inst = self.instance.model_copy(deep=True)
        inst.os = self._os
        inst.osparams = self._osparams
        self.feedback(f"reinstalling {inst.name} with OS {inst.os}")
        result = await self.ctx.runner.call(
            self.pnode,
            OS_CREATE,
            OsCreateRequest(
                instance=instance_spec(self.cluster, inst),
                disks=disk_refs(inst),
                os=inst.os,
                osparams=_filled_osparams(self.cluster.osparams, inst.os, inst.osparams),
                reinstall=True,
                debug=self.op.debug_level,
            ),
        )
        self.feedback(f"OS reinstalled (log on {self.pnode.name}: {result.log_file})")

        def change(current: Instance) -> None:
            current.os = inst.os
            current.osparams = inst.osparams

        self.instance = self.ctx.config.modify_instance(inst.name, change)
        return None

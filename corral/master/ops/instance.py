"""Instance lifecycle operations: create, remove, startup, shutdown, reboot.

Parameter changes, disk growth, rename and reinstall are in ``instance_modify.py``; console
and query_data in ``instance_query.py``.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from corral.common.errors import ErrorKind, OpError, ParamError
from corral.hypervisor.base import InstanceState
from corral.master.locking import LockMode, instance_lock, node_lock
from corral.master.ops.base import Operation, register
from corral.master.ops.common import (
    FILE_TEMPLATES,
    HV_NEEDS_PORT,
    AsyncUndo,
    allocate_port,
    check_beparams,
    check_hvparams,
    check_instance_name,
    check_ip,
    check_memory_range,
    check_node_memory,
    check_os_name,
    check_osparams,
    check_storage_space,
    disk_refs,
    file_disk_path,
    generate_mac,
    instance_locks,
    instance_spec,
    is_running,
    live_info,
    normalize_mac,
    reason_text,
    template_storage_dir,
    volume_spec,
)
from corral.master.ops.hooks import instance_env
from corral.objects.instance import NIC, AdminState, AdminStateSource, Disk, DiskMode, Instance
from corral.objects.node import Node
from corral.objects.opcodes import (
    OpCode,
    OpInstanceCreate,
    OpInstanceReboot,
    OpInstanceRemove,
    OpInstanceShutdown,
    OpInstanceStartup,
)
from corral.objects.params.cpumask import cpu_mask_problem
from corral.objects.params.fill import filled_beparams, filled_diskparams, filled_hvparams
from corral.objects.params.schemas import DISKPARAMS, NICPARAMS
from corral.objects.units import MAX_SIZE_MIB, check_name
from corral.rpc.calls import (
    BLOCKDEV_CREATE,
    BLOCKDEV_REMOVE,
    FILE_DRIVERS,
    HV_VALIDATE,
    INSTANCE_REBOOT,
    INSTANCE_SHUTDOWN,
    INSTANCE_START,
    OS_CREATE,
    OS_VERIFY,
    BlockdevRequest,
    HvValidateRequest,
    InstanceRebootRequest,
    InstanceShutdownRequest,
    InstanceStartRequest,
    OsCreateRequest,
    OsVerifyRequest,
)
from corral.storage.base import VolumeSpec

#: hvparams naming boot files that an OS installation may provide (checked again after it).
BOOT_FILE_PARAMS = frozenset({"kernel_path", "initrd_path"})

IOpT = TypeVar("IOpT", bound=OpCode)

#: Disk templates this master can create.
SUPPORTED_TEMPLATES = ("file", "sharedfile", "diskless")


class InstanceOperation(Operation[IOpT]):
    """Common parts of operations on one existing instance (``op.instance_name``)."""

    HTYPE = "INSTANCE"
    #: Operation-specific hook variables are built by :meth:`hook_vars`.
    instance: Instance
    instance_rev: int
    pnode: Node

    @property
    def instance_name(self) -> str:
        """The name of the instance the opcode is about."""
        return str(getattr(self.op, "instance_name"))  # noqa: B009 - every subclass has it

    def declare_locks(self) -> dict[str, LockMode]:
        """Cluster shared, the instance exclusive, its nodes shared."""
        found = self.ctx.config.find_instance(self.instance_name)
        return instance_locks(found.value if found else None, self.instance_name)

    async def check_prereq(self) -> None:
        """Load the instance (NOT_FOUND if it does not exist) and its primary node."""
        found = self.ctx.config.instance_versioned(self.instance_name)
        self.instance, self.instance_rev = found.value, found.revision
        self.pnode = self.ctx.config.node(self.instance.primary_node)
        if self.pnode.offline:
            raise OpError(
                f"primary node {self.pnode.name} of {self.instance.name} is offline",
                kind=ErrorKind.WRONG_STATE,
                node=self.pnode.name,
            )

    def hook_vars(self) -> dict[str, str]:
        """Variables specific to this operation (without prefix)."""
        return {}

    def hooks_env(self) -> dict[str, str]:
        """``INSTANCE_*`` variables plus :meth:`hook_vars`."""
        env = instance_env(self.cluster, self.instance)
        env.update(self.hook_vars())
        return env

    def hooks_nodes(self) -> tuple[list[str], list[str]]:
        """Master, primary and secondaries, before and after."""
        nodes = [self.cluster.master_node, self.instance.primary_node]
        nodes += self.instance.secondary_nodes
        return nodes, nodes

    def hooks_target(self) -> str:
        """The instance name."""
        return self.instance.name

    def reason(self) -> str:
        """The reason sent with node RPCs."""
        return reason_text(self.ctx.job_id, self.op.OP_ID)

    def set_admin_state(
        self, state: AdminState, source: AdminStateSource = AdminStateSource.ADMIN
    ) -> None:
        """Record the wish for the instance in the store (``source``: who wants it)."""

        def change(inst: Instance) -> None:
            inst.admin_state = state
            inst.admin_state_source = source

        self.instance = self.ctx.config.modify_instance(self.instance.name, change)


@register
class InstanceCreate(Operation[OpInstanceCreate]):
    """Create an instance: disks, OS install, store entry, optional start (all or nothing)."""

    OPCODE = OpInstanceCreate
    HPATH = "instance-add"
    HTYPE = "INSTANCE"

    instance: Instance
    pnode: Node

    def check_arguments(self) -> None:
        """Names, template, disk sizes, NICs and parameter syntax."""
        op = self.op
        check_instance_name(op.instance_name)
        if op.mode != "create":
            raise ParamError({"mode": "only 'create' is supported (import is not yet)"})
        if op.os_type is None:
            raise ParamError({"os_type": "an OS is required (e.g. -o busybox)"})
        check_os_name(op.os_type)
        if op.disk_template not in SUPPORTED_TEMPLATES:
            raise ParamError(
                {
                    "disk_template": f"{op.disk_template!r} is not supported "
                    f"(supported: {', '.join(SUPPORTED_TEMPLATES)})"
                }
            )
        if op.iallocator and not op.pnode:
            raise ParamError({"iallocator": "allocators are not supported yet; give pnode"})
        if op.snode:
            raise ParamError({"snode": f"the {op.disk_template} template has no secondary node"})
        if op.disk_template == "diskless" and op.disks:
            raise ParamError({"disks": "a diskless instance cannot have disks"})
        if op.disk_template in FILE_TEMPLATES and not op.disks:
            raise ParamError({"disks": "a file-based instance needs at least one disk"})
        problems: dict[str, str] = {}
        for idx, disk in enumerate(op.disks):
            if disk.size <= 0 or disk.size > MAX_SIZE_MIB:
                problems[f"disks.{idx}.size"] = f"must be between 1 MiB and 1 PiB, got {disk.size}"
            if disk.name and check_name(disk.name, "disk name"):
                problems[f"disks.{idx}.name"] = str(check_name(disk.name, "disk name"))
            if disk.format is not None and disk.format not in ("raw", "qcow2"):
                problems[f"disks.{idx}.format"] = f"must be raw or qcow2, got {disk.format!r}"
        if op.file_driver is not None and op.file_driver not in FILE_DRIVERS:
            problems["file_driver"] = (
                f"must be one of {', '.join(FILE_DRIVERS)}, got {op.file_driver!r}"
            )
        if op.file_storage_dir is not None:
            sub = op.file_storage_dir
            if sub.startswith("/") or any(p in ("", ".", "..") for p in sub.split("/")):
                problems["file_storage_dir"] = (
                    "must be a relative sub-directory of the cluster's file storage dir"
                )
        if problems:
            raise ParamError(problems, context=op.OP_ID)
        for idx, nic in enumerate(op.nics):
            if nic.mac not in ("auto", "generate"):
                normalize_mac(nic.mac, f"nics.{idx}.mac")
            check_ip(nic.ip, f"nics.{idx}.ip")
            if nic.network:
                raise ParamError({f"nics.{idx}.network": "networks are not supported yet"})
            NICPARAMS.check_syntax(_nic_params(nic.mode, nic.link, nic.vlan))
        check_beparams(op.beparams)
        check_osparams(op.osparams)
        if op.hypervisor is not None:
            check_hvparams(op.hypervisor, op.hvparams)

    def _pnode_name(self) -> str:
        if self.op.pnode:
            return self.op.pnode
        candidates = [n for n in self.ctx.config.nodes() if n.vm_capable and not n.offline]
        if len(candidates) == 1:
            return candidates[0].name
        if not candidates:
            raise OpError("no node can run instances", kind=ErrorKind.NO_RESOURCES)
        raise ParamError({"pnode": "the cluster has several nodes; choose one with pnode"})

    def declare_locks(self) -> dict[str, LockMode]:
        """The new name exclusive, the primary node shared."""
        return {
            "cluster": LockMode.SHARED,
            instance_lock(self.op.instance_name): LockMode.EXCLUSIVE,
            node_lock(self._pnode_name()): LockMode.SHARED,
        }

    async def check_prereq(self) -> None:
        """Check everything before touching the node; build the instance to create.

        Name free, node usable, hypervisor and template enabled, OS and parameters accepted
        by the node, enough memory and disk space.
        """
        op, cfg, cluster = self.op, self.ctx.config, self.cluster
        if cfg.find_instance(op.instance_name) is not None:
            raise OpError(
                f"instance {op.instance_name!r} already exists",
                kind=ErrorKind.EXISTS,
                instance=op.instance_name,
            )
        self.pnode = cfg.node(self._pnode_name())
        if self.pnode.offline or not self.pnode.vm_capable:
            raise OpError(
                f"node {self.pnode.name} cannot run instances (offline or not vm_capable)",
                kind=ErrorKind.WRONG_STATE,
                node=self.pnode.name,
            )
        hypervisor = op.hypervisor or cluster.default_hypervisor
        if hypervisor not in cluster.enabled_hypervisors:
            raise OpError(
                f"hypervisor {hypervisor!r} is not enabled in the cluster "
                f"(enabled: {', '.join(cluster.enabled_hypervisors)})",
                kind=ErrorKind.WRONG_STATE,
            )
        if op.disk_template not in cluster.enabled_disk_templates:
            raise OpError(
                f"disk template {op.disk_template!r} is not enabled in the cluster "
                f"(enabled: {', '.join(cluster.enabled_disk_templates)})",
                kind=ErrorKind.WRONG_STATE,
            )
        hvparams = {
            k: v for k, v in check_hvparams(hypervisor, op.hvparams).items() if v is not None
        }
        beparams = {k: v for k, v in check_beparams(op.beparams).items() if v is not None}
        osparams = check_osparams(op.osparams)
        instances = cfg.instances()
        self.instance = Instance(
            name=op.instance_name,
            primary_node=self.pnode.name,
            os=op.os_type or "",
            hypervisor=hypervisor,
            hvparams=hvparams,
            beparams=beparams,
            osparams=osparams,
            disk_template=op.disk_template,
            disks=self._new_disks(),
            nics=self._new_nics(instances),
            admin_state=AdminState.UP if op.start else AdminState.DOWN,
            tags=list(op.tags),
            network_port=allocate_port(instances) if hypervisor in HV_NEEDS_PORT else None,
        )
        be = filled_beparams(cluster, self.instance)
        check_memory_range(be)
        mask_problem = cpu_mask_problem(
            str(filled_hvparams(cluster, self.instance).get("cpu_mask", "all")), int(be["vcpus"])
        )
        if mask_problem:
            raise ParamError({"cpu_mask": mask_problem}, context="hvparams")
        runner = self.ctx.runner
        self._hv_check_after_install = False
        try:
            await self._validate_hvparams()
        except ParamError as exc:
            # NOTE: an OS definition may provide the boot files (the busybox OS installs the
            # kernel and initrd that the default kernel_path/initrd_path point to), so when
            # only those are missing and an OS will be installed, check again after it.
            if op.no_install or not set(exc.problems) <= BOOT_FILE_PARAMS:
                raise
            self._hv_check_after_install = True
        if not op.no_install:
            await runner.call(
                self.pnode,
                OS_VERIFY,
                OsVerifyRequest(os=self.instance.os, osparams=self._os_params()),
            )
        if self.instance.disks:
            await check_storage_space(
                self.ctx,
                self.pnode,
                self.instance.disks[0].params["storage_dir"],
                sum(d.size for d in self.instance.disks),
            )
        if op.start:
            await check_node_memory(
                self.ctx, self.pnode, hypervisor, int(be["maxmem"]), f"instance {op.instance_name}"
            )

    def _os_params(self) -> dict[str, str]:
        merged = dict(self.cluster.osparams.get(self.instance.os_name, {}))
        merged.update(self.instance.osparams)
        return {k: str(v) for k, v in merged.items()}

    def _new_disks(self) -> list[Disk]:
        cluster = self.cluster
        disks: list[Disk] = []
        if not self.op.disks:
            return disks
        base = template_storage_dir(cluster, self.op.disk_template)
        for idx, arg in enumerate(self.op.disks):
            fmt = arg.format or filled_diskparams(cluster, self.op.disk_template).get("format")
            DISKPARAMS[self.op.disk_template].check_syntax({"format": fmt})
            disks.append(
                Disk(
                    name=arg.name,
                    size=arg.size,
                    mode=DiskMode(arg.mode),
                    dev_type=self.op.disk_template,
                    format=str(fmt),
                    logical_id=file_disk_path(
                        base,
                        self.op.file_storage_dir,
                        self.op.instance_name,
                        idx,
                    ),
                    params={"storage_dir": base},
                    file_driver=self.op.file_driver,
                )
            )
        return disks

    def _new_nics(self, instances: list[Instance]) -> list[NIC]:
        used = {nic.mac for inst in instances for nic in inst.nics}
        nics = []
        for idx, arg in enumerate(self.op.nics):
            if arg.mac in ("auto", "generate"):
                mac = generate_mac(self.cluster.mac_prefix, used)
            else:
                mac = normalize_mac(arg.mac, f"nics.{idx}.mac")
                if mac in used:
                    raise OpError(
                        f"MAC address {mac} (nics.{idx}.mac) is already in use",
                        kind=ErrorKind.NOT_UNIQUE,
                    )
                used.add(mac)
            params = NICPARAMS.check_syntax(_nic_params(arg.mode, arg.link, arg.vlan))
            nics.append(
                NIC(
                    name=arg.name,
                    mac=mac,
                    ip=check_ip(arg.ip, f"nics.{idx}.ip"),
                    nicparams={k: v for k, v in params.items() if v is not None},
                )
            )
        return nics

    def hooks_env(self) -> dict[str, str]:
        """Instance variables of the new instance plus ADD_MODE and the source fields."""
        env = instance_env(self.cluster, self.instance)
        env.update(
            {
                "INSTANCE_ADD_MODE": self.op.mode,
                "INSTANCE_SRC_NODE": "",
                "INSTANCE_SRC_PATH": "",
                "INSTANCE_SRC_IMAGES": "",
            }
        )
        return env

    def hooks_nodes(self) -> tuple[list[str], list[str]]:
        """Master and the new instance's nodes."""
        nodes = [self.cluster.master_node, self.instance.primary_node]
        return nodes, nodes

    def hooks_target(self) -> str:
        """The new instance's name."""
        return self.op.instance_name

    async def execute(self) -> Any:
        """Create disks, install the OS, store the instance, start it; undo all on failure.

        Returns:
            The node names used (Ganeti's result).
        """
        inst, node, runner = self.instance, self.pnode, self.ctx.runner
        undo = AsyncUndo(self.ctx)
        try:
            for idx, disk in enumerate(inst.disks):
                self.feedback(
                    f"creating disk {idx} ({disk.size} MiB, {disk.format}) on {node.name}"
                )
                vol = volume_spec(disk)
                await runner.call(node, BLOCKDEV_CREATE, BlockdevRequest(volume=vol))
                undo.add(f"disk {idx}", functools.partial(self._remove_volume, vol))
            if not self.op.no_install:
                self.feedback(f"installing OS {inst.os} on {inst.name}")
                result = await runner.call(
                    node,
                    OS_CREATE,
                    OsCreateRequest(
                        instance=instance_spec(self.cluster, inst),
                        disks=disk_refs(inst),
                        os=inst.os,
                        osparams=self._os_params(),
                        debug=self.op.debug_level,
                    ),
                )
                self.feedback(f"OS installed (log on {node.name}: {result.log_file})")
                if self._hv_check_after_install:
                    await self._validate_hvparams()
            self.ctx.config.add_instance(inst)
            undo.add("store entry", self._forget)
            if self.op.start:
                self.feedback(f"starting instance {inst.name}")
                await runner.call(
                    node,
                    INSTANCE_START,
                    InstanceStartRequest(
                        instance=instance_spec(self.cluster, inst),
                        disks=disk_refs(inst),
                        reason=reason_text(self.ctx.job_id, self.op.OP_ID),
                    ),
                )
                undo.add("start", self._stop)
            undo.clear()
        except BaseException:
            await undo.rollback()
            raise
        return [node.name]

    async def _validate_hvparams(self) -> None:
        """Environment-phase check of the new instance's hvparams on its primary node.

        Raises:
            ParamError: a parameter cannot work on the node (by key).
        """
        await self.ctx.runner.call(
            self.pnode,
            HV_VALIDATE,
            HvValidateRequest(
                hypervisor=self.instance.hypervisor,
                hvparams=filled_hvparams(self.cluster, self.instance),
            ),
        )

    async def _remove_volume(self, vol: VolumeSpec) -> None:
        await self.ctx.runner.call(self.pnode, BLOCKDEV_REMOVE, BlockdevRequest(volume=vol))

    async def _forget(self) -> None:
        self.ctx.config.remove_instance(self.instance.name)

    async def _stop(self) -> None:
        await self.ctx.runner.call(
            self.pnode,
            INSTANCE_SHUTDOWN,
            InstanceShutdownRequest(
                name=self.instance.name, hypervisor=self.instance.hypervisor, timeout=0, force=True
            ),
        )


def _nic_params(mode: str | None, link: str | None, vlan: str | None) -> dict[str, Any]:
    return {k: v for k, v in (("mode", mode), ("link", link), ("vlan", vlan)) if v is not None}


@register
class InstanceRemove(InstanceOperation[OpInstanceRemove]):
    """Stop the instance, remove its disks, forget it."""

    OPCODE = OpInstanceRemove
    HPATH = "instance-remove"

    def hook_vars(self) -> dict[str, str]:
        """SHUTDOWN_TIMEOUT."""
        return {"SHUTDOWN_TIMEOUT": str(self.op.shutdown_timeout)}

    def hooks_nodes(self) -> tuple[list[str], list[str]]:
        """Pre: master only; post: master, primary and secondaries."""
        _, post = super().hooks_nodes()
        return [self.cluster.master_node], post

    async def execute(self) -> Any:
        """Shut down, remove disks, delete from the store.

        With ``ignore_failures`` a failing shutdown or disk removal is reported and the
        removal goes on; otherwise it stops there (the instance stays in the store).
        """
        inst, node, runner = self.instance, self.pnode, self.ctx.runner
        self.feedback(f"shutting down instance {inst.name} (timeout {self.op.shutdown_timeout:g}s)")
        try:
            await runner.call(
                node,
                INSTANCE_SHUTDOWN,
                InstanceShutdownRequest(
                    name=inst.name,
                    hypervisor=inst.hypervisor,
                    timeout=self.op.shutdown_timeout,
                    reason=self.reason(),
                ),
                timeout=INSTANCE_SHUTDOWN.timeout + self.op.shutdown_timeout,
            )
        except Exception as exc:
            if not self.op.ignore_failures:
                raise
            self.feedback(f"warning: could not shut down {inst.name} (ignored): {exc}")
        if inst.admin_state is AdminState.UP:
            self.set_admin_state(AdminState.DOWN)
        for idx, disk in enumerate(inst.disks):
            self.feedback(f"removing disk {idx}")
            try:
                await runner.call(node, BLOCKDEV_REMOVE, BlockdevRequest(volume=volume_spec(disk)))
            except Exception as exc:
                if not self.op.ignore_failures:
                    raise
                self.feedback(f"warning: could not remove disk {idx} (ignored): {exc}")
        self.ctx.config.remove_instance(inst.name)
        self.feedback(f"instance {inst.name} removed")
        return None


@register
class InstanceStartup(InstanceOperation[OpInstanceStartup]):
    """Start an instance (no-op if it runs); remember it should run unless ``no_remember``."""

    OPCODE = OpInstanceStartup
    HPATH = "instance-start"
    IDEMPOTENT = True

    _running: bool = False
    _hv: dict[str, Any]
    _be: dict[str, Any]

    def check_arguments(self) -> None:
        """One-off beparams overrides syntax (hvparams need the hypervisor: checked later)."""
        check_beparams(self.op.beparams)

    def hook_vars(self) -> dict[str, str]:
        """FORCE."""
        return {"FORCE": str(self.op.force)}

    async def check_prereq(self) -> None:
        """Not offline; running already (no-op) or enough free memory on the node."""
        await super().check_prereq()
        inst = self.instance
        if inst.admin_state is AdminState.OFFLINE:
            raise OpError(f"instance {inst.name} is marked offline", kind=ErrorKind.WRONG_STATE)
        if inst.suspended:
            raise OpError(
                f"instance {inst.name} is suspended; use unsuspend to restore it (or stop it "
                "first to discard its saved state)",
                kind=ErrorKind.WRONG_STATE,
                instance=inst.name,
            )
        self._hv = {
            k: v
            for k, v in check_hvparams(inst.hypervisor, self.op.hvparams).items()
            if v is not None
        }
        self._be = {k: v for k, v in check_beparams(self.op.beparams).items() if v is not None}
        be = filled_beparams(self.cluster, inst) | self._be
        check_memory_range(be)
        # NOTE: a guest that powered itself off (state shutdown) is not running; the node
        # cleans it up before starting it again.
        self._running = is_running(await live_info(self.ctx, self.pnode, inst))
        if self._running:
            return
        if self._hv:
            hv = filled_hvparams(self.cluster, inst) | self._hv
            await self.ctx.runner.call(
                self.pnode, HV_VALIDATE, HvValidateRequest(hypervisor=inst.hypervisor, hvparams=hv)
            )
        await check_node_memory(
            self.ctx, self.pnode, inst.hypervisor, int(be["maxmem"]), f"instance {inst.name}"
        )

    async def execute(self) -> Any:
        """Start the guest, then record admin state ``up`` (unless ``no_remember``)."""
        inst, runner = self.instance, self.ctx.runner
        if self._running:
            self.feedback(f"instance {inst.name} is already running")
        else:
            self.feedback(f"starting instance {inst.name} on {self.pnode.name}")
            await runner.call(
                self.pnode,
                INSTANCE_START,
                InstanceStartRequest(
                    instance=instance_spec(
                        self.cluster, inst, hvparams=self._hv, beparams=self._be
                    ),
                    disks=disk_refs(inst),
                    paused=self.op.startup_paused,
                    reason=self.reason(),
                ),
            )
        if not self.op.no_remember and (
            inst.admin_state is not AdminState.UP
            or inst.admin_state_source is not AdminStateSource.ADMIN
        ):
            self.set_admin_state(AdminState.UP)
        return None


@register
class InstanceShutdown(InstanceOperation[OpInstanceShutdown]):
    """Stop an instance; remember it should be down unless ``no_remember``."""

    OPCODE = OpInstanceShutdown
    HPATH = "instance-stop"
    IDEMPOTENT = True

    _running: bool = False
    _powered_off: bool = False

    def check_arguments(self) -> None:
        """A non-negative timeout."""
        if self.op.timeout < 0:
            raise ParamError({"timeout": "must not be negative"})

    def hook_vars(self) -> dict[str, str]:
        """TIMEOUT."""
        return {"TIMEOUT": str(self.op.timeout)}

    async def check_prereq(self) -> None:
        """Find out whether it runs."""
        await super().check_prereq()
        info = await live_info(self.ctx, self.pnode, self.instance)
        self._running = is_running(info)
        self._powered_off = info is not None and info.state is InstanceState.SHUTDOWN

    async def execute(self) -> Any:
        """Mark down (unless ``no_remember``), then stop: soft for ``timeout`` s, then hard.

        If the stop fails the admin state is put back as it was. With
        ``admin_state_source=user`` (the watcher, after the guest powered itself off) nothing
        happens unless the guest is still powered off: an instance started again meanwhile
        is left alone. A suspended instance loses its saved state.
        """
        inst = self.instance
        source = AdminStateSource(self.op.admin_state_source)
        if source is AdminStateSource.USER and not self._powered_off:
            self.feedback(f"instance {inst.name} is not powered off by its user; nothing to do")
            return None
        before = inst.admin_state
        if not self.op.no_remember and (
            before is not AdminState.DOWN or inst.admin_state_source is not source
        ):
            self.set_admin_state(AdminState.DOWN, source)
        if not self._running:
            self.feedback(f"instance {inst.name} is not running")
        else:
            self.feedback(f"shutting down instance {inst.name} (timeout {self.op.timeout:g}s)")
        try:
            await self.ctx.runner.call(
                self.pnode,
                INSTANCE_SHUTDOWN,
                InstanceShutdownRequest(
                    name=inst.name,
                    hypervisor=inst.hypervisor,
                    timeout=self.op.timeout,
                    force=self.op.timeout == 0,
                    reason=self.reason(),
                ),
                timeout=INSTANCE_SHUTDOWN.timeout + self.op.timeout,
            )
        except BaseException:
            if self.instance.admin_state is not before:
                self.set_admin_state(before)
            raise
        if self.instance.suspended:

            def forget(i: Instance) -> None:
                i.suspended = False
                i.suspend_file = ""

            self.instance = self.ctx.config.modify_instance(inst.name, forget)
            self.feedback(f"discarded the saved state of {inst.name}")
        return None


@register
class InstanceReboot(InstanceOperation[OpInstanceReboot]):
    """Reboot a running instance: soft (guest), hard (reset) or full (stop + start)."""

    OPCODE = OpInstanceReboot
    HPATH = "instance-reboot"

    def hook_vars(self) -> dict[str, str]:
        """IGNORE_SECONDARIES, REBOOT_TYPE, SHUTDOWN_TIMEOUT."""
        return {
            "IGNORE_SECONDARIES": str(self.op.ignore_secondaries),
            "REBOOT_TYPE": self.op.reboot_type,
            "SHUTDOWN_TIMEOUT": str(self.op.shutdown_timeout),
        }

    async def check_prereq(self) -> None:
        """The instance must be running (WRONG_STATE otherwise)."""
        await super().check_prereq()
        if not is_running(await live_info(self.ctx, self.pnode, self.instance)):
            raise OpError(
                f"instance {self.instance.name} is not running; start it instead",
                kind=ErrorKind.WRONG_STATE,
                instance=self.instance.name,
            )

    async def execute(self) -> Any:
        """Reboot on the node; the instance is then marked up."""
        inst = self.instance
        self.feedback(f"rebooting instance {inst.name} ({self.op.reboot_type})")
        await self.ctx.runner.call(
            self.pnode,
            INSTANCE_REBOOT,
            InstanceRebootRequest(
                instance=instance_spec(self.cluster, inst),
                disks=disk_refs(inst),
                reboot_type=self.op.reboot_type,
                shutdown_timeout=self.op.shutdown_timeout,
                reason=self.reason(),
            ),
            timeout=INSTANCE_REBOOT.timeout + self.op.shutdown_timeout,
        )
        if inst.admin_state is not AdminState.UP:
            self.set_admin_state(AdminState.UP)
        return None

"""Disk and NIC changes of ``OP_INSTANCE_SET_PARAMS`` (Ganeti's ``--disk``/``--net`` modify).

Format (Ganeti's opcode): ``disks`` and ``nics`` are lists of ``[action, identifier, params]``:

* ``action``: ``add``, ``remove`` or ``modify`` (Ganeti's ``attach``/``detach`` are refused);
* ``identifier``: an index (``-1`` = the last one; for ``add``, ``-1`` appends and ``N``
  inserts before the current item ``N``), or the device's name or UUID;
* ``params``: disks ``add``: ``size`` (MiB, required), ``mode``, ``name``, ``format``;
  disks ``modify``: ``mode``, ``name``; NICs ``add``/``modify``: ``mac``, ``ip``, ``mode``,
  ``link``, ``name``, ``vlan``. ``remove`` takes none.

The legacy two-element form ``[action_or_identifier, params]`` is accepted as Ganeti does
(``["add", {...}]`` appends, ``["remove", {}]`` removes the last item, ``[2, {...}]``
modifies item 2).

Hotplug (``hotplug`` / ``hotplug_if_possible`` of the opcode). Ganeti's semantics, with one
difference in the default:

* ``hotplug=True`` (``--hotplug``): the instance must run and its hypervisor must be able to
  hotplug the device kinds involved, else the job fails before anything changes
  (WRONG_STATE / INVALID), as Ganeti's ``hotplug_supported`` check does.
* ``hotplug=False`` (``--no-hotplug``; what Ganeti does without ``--hotplug``): nothing is
  hot-plugged; additions and NIC changes apply at the next start, and removing a disk from a
  running instance is refused (Ganeti: "can't remove volume from a running instance without
  using hotplug").
* ``hotplug=None`` (the default) or ``hotplug_if_possible=True`` (``--hotplug-if-possible``):
  hotplug when the instance runs and the hypervisor can, otherwise apply at the next start.
  Ganeti's default is ``False``; the ``gnt-instance`` command keeps Ganeti's default, the
  ``corral`` command and the API use this one.

Failure: Ganeti logs a failed hotplug as a warning and keeps the configuration change. Corral
rolls back instead: every step of the job (a created disk, a hot-added or hot-removed device,
a NIC moved to another bridge) is undone in reverse order and the store is left unchanged. The
store gets all changes in one transaction at the end; volumes of removed disks are deleted only
after that transaction (a failure there is reported, the instance is already changed).

NIC ``modify`` of ``link``/``mode`` on a running instance moves the NIC's host side to the new
bridge without unplugging it (Ganeti unplugs and re-plugs it); a new MAC applies at the next
start.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Literal

from corral.common.errors import CorralError, ErrorKind, OpError, ParamError
from corral.hypervisor.base import NicSpec
from corral.master.ops.base import OpContext
from corral.master.ops.common import (
    FILE_TEMPLATES,
    AsyncUndo,
    check_ip,
    check_storage_space,
    file_disk_path,
    generate_mac,
    normalize_mac,
    template_storage_dir,
    volume_spec,
)
from corral.objects.cluster import Cluster
from corral.objects.instance import NIC, Disk, DiskMode, Instance
from corral.objects.node import Node
from corral.objects.params.fill import filled_diskparams, filled_nicparams
from corral.objects.params.schemas import DISKPARAMS, NICPARAMS
from corral.objects.units import MAX_SIZE_MIB, check_name, parse_size_mib
from corral.rpc.calls import (
    BLOCKDEV_CREATE,
    BLOCKDEV_REMOVE,
    INSTANCE_HOTPLUG,
    BlockdevRequest,
    DiskRef,
    InstanceHotplugRequest,
)

Kind = Literal["disk", "nic"]
ACTIONS = ("add", "remove", "modify")
DISK_ADD_KEYS = frozenset({"size", "mode", "name", "format"})
DISK_MODIFY_KEYS = frozenset({"mode", "name"})
NIC_KEYS = frozenset({"mac", "ip", "mode", "link", "name", "vlan", "network"})


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceMod:
    """One requested change: ``disks.N``/``nics.N`` of the opcode, checked for syntax."""

    kind: Kind
    action: str
    ident: int | str
    params: dict[str, Any]
    field: str  # "disks.0", for messages


def _ident(raw: Any, field: str) -> int | str:
    if isinstance(raw, bool):
        raise ParamError({field: f"identifier must be an index, name or UUID, got {raw!r}"})
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip():
        text = raw.strip()
        return int(text) if text.lstrip("-").isdigit() else text
    raise ParamError({field: f"identifier must be an index, name or UUID, got {raw!r}"})


def parse_mods(kind: Kind, raw: Sequence[Sequence[Any]]) -> list[DeviceMod]:
    """Check the syntax of ``disks`` or ``nics`` modifications (no store, no RPC).

    Raises:
        ParamError: naming ``disks.N``/``nics.N`` and what is wrong (unknown action or
            parameter, missing or bad size, parameters given to ``remove``, ...).
    """
    name = f"{kind}s"
    mods: list[DeviceMod] = []
    legacy_add_remove = 0
    for n, item in enumerate(raw):
        field = f"{name}.{n}"
        if not isinstance(item, list | tuple) or len(item) not in (2, 3):
            raise ParamError({field: "expected [action, identifier, params] (or [action, params])"})
        if len(item) == 2:
            head, params = item
            ident: int | str
            if head in ("add", "remove", "attach", "detach"):
                action, ident = str(head), -1
                legacy_add_remove += 1
                if legacy_add_remove > 1:
                    raise ParamError(
                        {field: f"only one {kind} add/remove at a time in the legacy format"}
                    )
            else:
                action, ident = "modify", _ident(head, field)
        else:
            action, ident, params = str(item[0]), _ident(item[1], field), item[2]
        if action in ("attach", "detach"):
            raise ParamError({field: f"{action} of existing disks is not supported"})
        if action not in ACTIONS:
            raise ParamError({field: f"unknown action {action!r} (add, remove or modify)"})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ParamError({field: f"parameters must be an object, got {params!r}"})
        mods.append(
            DeviceMod(kind, action, ident, _check_params(kind, action, params, field), field)
        )
    return mods


def _check_params(kind: Kind, action: str, params: dict[str, Any], field: str) -> dict[str, Any]:
    if action == "remove":
        if params:
            raise ParamError({field: f"remove takes no parameters, got {sorted(params)}"})
        return {}
    if kind == "disk":
        allowed = DISK_ADD_KEYS if action == "add" else DISK_MODIFY_KEYS
    else:
        allowed = NIC_KEYS
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ParamError(
            {
                field: f"unknown parameter(s) {', '.join(unknown)} for {kind} {action} "
                f"(allowed: {', '.join(sorted(allowed))})"
            }
        )
    out = dict(params)
    if kind == "disk":
        if action == "add":
            if "size" not in out:
                raise ParamError({f"{field}.size": "a new disk needs a size (e.g. size=1G)"})
            try:
                out["size"] = parse_size_mib(out["size"])
            except (TypeError, ValueError) as exc:
                raise ParamError({f"{field}.size": str(exc)}) from None
            if not 0 < out["size"] <= MAX_SIZE_MIB:
                raise ParamError(
                    {f"{field}.size": f"must be between 1 MiB and 1 PiB, got {out['size']}"}
                )
            if out.get("format") not in (None, "raw", "qcow2"):
                raise ParamError(
                    {f"{field}.format": f"must be raw or qcow2, got {out['format']!r}"}
                )
        if "mode" in out and out["mode"] not in ("rw", "ro"):
            raise ParamError({f"{field}.mode": f"must be rw or ro, got {out['mode']!r}"})
        if out.get("name"):
            why = check_name(str(out["name"]), "disk name")
            if why:
                raise ParamError({f"{field}.name": why})
    else:
        if out.get("network"):
            raise ParamError({f"{field}.network": "networks are not supported yet"})
        if out.get("mac") not in (None, "auto", "generate"):
            out["mac"] = normalize_mac(str(out["mac"]), f"{field}.mac")
        if "ip" in out:
            out["ip"] = check_ip(out["ip"], f"{field}.ip")
        nicparams = {k: out[k] for k in ("mode", "link", "vlan") if out.get(k) is not None}
        try:
            NICPARAMS.check_syntax(nicparams)
        except ParamError as exc:
            raise ParamError({f"{field}.{k}": v for k, v in exc.problems.items()}) from None
    return out


def _resolve(items: Sequence[Disk | NIC], ident: int | str, mod: DeviceMod) -> int:
    """The index ``ident`` names in ``items``.

    Raises:
        OpError: kind NOT_FOUND.
    """
    if isinstance(ident, int):
        idx = len(items) - 1 if ident == -1 else ident
        if 0 <= idx < len(items):
            return idx
    else:
        for pos, item in enumerate(items):
            if ident in (item.name, item.uuid):
                return pos
    raise OpError(
        f"{mod.field}: the instance has no {mod.kind} {ident!r} ({len(items)} {mod.kind}(s))",
        kind=ErrorKind.NOT_FOUND,
    )


def nic_spec(cluster: Cluster, index: int, nic: NIC) -> NicSpec:
    """A NIC as the hypervisor driver sees it (filled nicparams)."""
    params = filled_nicparams(cluster, nic)
    return NicSpec(
        index=index,
        uuid=nic.uuid,
        mac=nic.mac,
        mode=str(params.get("mode") or "bridged"),
        link=str(params.get("link") or ""),
        ip=nic.ip,
        name=nic.name,
    )


@dataclasses.dataclass(slots=True)
class _Step:
    """One planned change, in order: what to do on the node and what it means."""

    mod: DeviceMod
    index: int  # the device's index when the step runs
    new: Disk | NIC | None = None
    old: Disk | NIC | None = None
    hot: bool = False


class DeviceChanges:
    """Plans (``prepare``, no side effects) and carries out (``execute``) device changes.

    Args:
        ctx: the operation's context (store, runner, feedback).
        cluster: the cluster object.
        instance: the instance as read under its lock.
        pnode: its primary node.
        mods: from :func:`parse_mods`, disks first, then NICs (the order of the opcode's
            lists; Ganeti applies its disk changes before its NIC changes too).
        hotplug: ``True`` / ``False`` / ``None`` (if possible); see the module docstring.
    """

    def __init__(
        self,
        ctx: OpContext,
        cluster: Cluster,
        instance: Instance,
        pnode: Node,
        mods: Sequence[DeviceMod],
        hotplug: bool | None,
    ) -> None:
        self.ctx = ctx
        self.cluster = cluster
        self.instance = instance
        self.pnode = pnode
        self.mods = list(mods)
        self.hotplug = hotplug
        self.steps: list[_Step] = []
        self.disks: list[Disk] = list(instance.disks)
        self.nics: list[NIC] = list(instance.nics)
        self.removed_disks: list[Disk] = []
        self._hot_kinds: set[Kind] = set()
        self.running = False

    # --- planning ------------------------------------------------------------------------

    async def _hot_possible(self, kind: Kind) -> tuple[bool, str]:
        resp = await self.ctx.runner.call(
            self.pnode,
            INSTANCE_HOTPLUG,
            InstanceHotplugRequest(
                name=self.instance.name,
                hypervisor=self.instance.hypervisor,
                action="check",
                device=kind,
            ),
        )
        return resp.supported, resp.reason

    async def prepare(self, running: bool) -> None:
        """Check every change against the instance and plan the steps (no side effects).

        Raises:
            OpError / ParamError: an unknown device (NOT_FOUND), a name or MAC in use
                (NOT_UNIQUE), disks on a diskless instance, the last disk removed, hotplug
                demanded but impossible (WRONG_STATE/INVALID), a disk removed from a running
                instance without hotplug, not enough disk space (NO_RESOURCES).
        """
        inst = self.instance
        needs_hot: set[Kind] = set()
        for mod in self.mods:
            if mod.kind == "disk":
                self._plan_disk(mod)
            else:
                self._plan_nic(mod)
            if mod.action != "modify" or self.steps[-1].hot:
                needs_hot.add(mod.kind)
        if inst.disk_template in FILE_TEMPLATES and not self.disks:
            raise OpError(
                f"cannot remove the last disk of {inst.name} (a file-based instance needs one)",
                kind=ErrorKind.INVALID,
            )
        names = [d.name for d in self.disks if d.name]
        if len(names) != len(set(names)):
            raise OpError("two disks would have the same name", kind=ErrorKind.NOT_UNIQUE)
        names = [n.name for n in self.nics if n.name]
        if len(names) != len(set(names)):
            raise OpError("two NICs would have the same name", kind=ErrorKind.NOT_UNIQUE)
        added = [s.new for s in self.steps if s.mod.action == "add" and isinstance(s.new, Disk)]
        if added:
            storage_dir = added[0].params.get("storage_dir") or self.cluster.file_storage_dir
            await check_storage_space(
                self.ctx, self.pnode, str(storage_dir), sum(d.size for d in added)
            )
        self.running = running
        await self._decide_hotplug(running, needs_hot)
        for step in self.steps:
            step.hot = step.mod.kind in self._hot_kinds and (
                step.mod.action != "modify" or step.hot
            )

    async def _decide_hotplug(self, running: bool, needs: set[Kind]) -> None:
        inst = self.instance
        if not needs or self.hotplug is False:
            self._hot_kinds = set()
        elif self.hotplug is True:
            if not running:
                raise OpError(
                    f"cannot hotplug: instance {inst.name} is not running (drop --hotplug to "
                    "apply the change at its next start)",
                    kind=ErrorKind.WRONG_STATE,
                    instance=inst.name,
                )
            for kind in sorted(needs):
                ok, reason = await self._hot_possible(kind)
                if not ok:
                    raise OpError(
                        f"hotplug not supported: {reason}",
                        kind=ErrorKind.INVALID,
                        instance=inst.name,
                    )
            self._hot_kinds = set(needs)
        elif running:
            for kind in sorted(needs):
                ok, reason = await self._hot_possible(kind)
                if ok:
                    self._hot_kinds.add(kind)
                else:
                    self.ctx.feedback(
                        f"{kind} hotplug not possible ({reason}); "
                        "the change applies at the next start"
                    )
        removing_disk = any(s.mod.kind == "disk" and s.mod.action == "remove" for s in self.steps)
        if running and removing_disk and "disk" not in self._hot_kinds:
            raise OpError(
                f"cannot remove a disk from the running instance {inst.name} without hotplug "
                "(shut it down first, or use --hotplug)",
                kind=ErrorKind.WRONG_STATE,
                instance=inst.name,
            )

    def _plan_disk(self, mod: DeviceMod) -> None:
        inst = self.instance
        if inst.disk_template == "diskless":
            raise OpError(
                f"{mod.field}: {inst.name} is diskless; its disks cannot be changed",
                kind=ErrorKind.INVALID,
            )
        if mod.action == "add":
            index = self._add_index(len(self.disks), mod)
            disk = self._new_disk(mod.params)
            self.disks.insert(index, disk)
            self.steps.append(_Step(mod, index, new=disk))
        elif mod.action == "remove":
            index = _resolve(self.disks, mod.ident, mod)
            old = self.disks.pop(index)
            self.removed_disks.append(old)
            self.steps.append(_Step(mod, index, old=old))
        else:
            index = _resolve(self.disks, mod.ident, mod)
            old = self.disks[index]
            update: dict[str, Any] = {}
            if "mode" in mod.params:
                update["mode"] = DiskMode(mod.params["mode"])
            if "name" in mod.params:
                update["name"] = str(mod.params["name"] or "")
            new = old.model_copy(update=update)
            self.disks[index] = new
            self.steps.append(_Step(mod, index, new=new, old=old))

    @staticmethod
    def _add_index(length: int, mod: DeviceMod) -> int:
        if mod.ident == -1:
            return length
        if isinstance(mod.ident, int) and 0 <= mod.ident <= length:
            return mod.ident
        raise OpError(
            f"{mod.field}: cannot add a {mod.kind} at {mod.ident!r} (use -1 to append, or an "
            f"index from 0 to {length})",
            kind=ErrorKind.INVALID,
        )

    def _new_disk(self, params: dict[str, Any]) -> Disk:
        inst, cluster = self.instance, self.cluster
        fmt = params.get("format") or filled_diskparams(cluster, inst.disk_template).get("format")
        DISKPARAMS[inst.disk_template].check_syntax({"format": fmt})
        if inst.disks:
            directory = os.path.dirname(inst.disks[0].logical_id)
            base_params = dict(inst.disks[0].params)
        else:
            base = template_storage_dir(cluster, inst.disk_template)
            directory = os.path.dirname(file_disk_path(base, None, inst.name, 0))
            base_params = {"storage_dir": base}
        taken = {os.path.basename(d.logical_id) for d in [*inst.disks, *self.disks]}
        n = 0
        while f"disk{n}" in taken:
            n += 1
        return Disk(
            name=str(params.get("name") or ""),
            size=int(params["size"]),
            mode=DiskMode(params.get("mode", "rw")),
            dev_type=inst.disk_template if inst.disk_template in FILE_TEMPLATES else "file",
            format=str(fmt),
            logical_id=os.path.join(directory, f"disk{n}"),
            params=base_params,
        )

    def _plan_nic(self, mod: DeviceMod) -> None:
        if mod.action == "add":
            index = self._add_index(len(self.nics), mod)
            nic = self._new_nic(mod.params, mod)
            self.nics.insert(index, nic)
            self.steps.append(_Step(mod, index, new=nic))
        elif mod.action == "remove":
            index = _resolve(self.nics, mod.ident, mod)
            old = self.nics.pop(index)
            self.steps.append(_Step(mod, index, old=old))
        else:
            index = _resolve(self.nics, mod.ident, mod)
            old = self.nics[index]
            new = self._changed_nic(old, mod)
            self.nics[index] = new
            before, after = nic_spec(self.cluster, index, old), nic_spec(self.cluster, index, new)
            moved = (before.mode, before.link) != (after.mode, after.link)
            self.steps.append(_Step(mod, index, new=new, old=old, hot=moved))

    def _used_macs(self, exclude: NIC | None = None) -> set[str]:
        used = {
            n.mac
            for i in self.ctx.config.instances()
            if i.name != self.instance.name
            for n in i.nics
        }
        return used | {n.mac for n in self.nics if n is not exclude}

    def _new_nic(self, params: dict[str, Any], mod: DeviceMod) -> NIC:
        used = self._used_macs()
        mac = params.get("mac") or "auto"
        if mac in ("auto", "generate"):
            mac = generate_mac(self.cluster.mac_prefix, used)
        elif mac in used:
            raise OpError(
                f"MAC address {mac} ({mod.field}.mac) is already in use", kind=ErrorKind.NOT_UNIQUE
            )
        nicparams = {k: params[k] for k in ("mode", "link", "vlan") if params.get(k) is not None}
        return NIC(
            name=str(params.get("name") or ""), mac=mac, ip=params.get("ip"), nicparams=nicparams
        )

    def _changed_nic(self, old: NIC, mod: DeviceMod) -> NIC:
        params = mod.params
        update: dict[str, Any] = {}
        if "mac" in params and params["mac"] not in (None, "auto", "generate"):
            if params["mac"] != old.mac and params["mac"] in self._used_macs(exclude=old):
                raise OpError(
                    f"MAC address {params['mac']} ({mod.field}.mac) is already in use",
                    kind=ErrorKind.NOT_UNIQUE,
                )
            update["mac"] = params["mac"]
        elif params.get("mac") in ("auto", "generate"):
            update["mac"] = generate_mac(self.cluster.mac_prefix, self._used_macs())
        if "ip" in params:
            update["ip"] = params["ip"]
        if "name" in params:
            update["name"] = str(params["name"] or "")
        nicparams = dict(old.nicparams)
        for key in ("mode", "link", "vlan"):
            if key in params:
                if params[key] is None:
                    nicparams.pop(key, None)
                else:
                    nicparams[key] = params[key]
        update["nicparams"] = nicparams
        return old.model_copy(update=update)

    # --- carrying out ---------------------------------------------------------------------------

    async def _hotplug(self, **fields: Any) -> None:
        await self.ctx.runner.call(
            self.pnode,
            INSTANCE_HOTPLUG,
            InstanceHotplugRequest(
                name=self.instance.name, hypervisor=self.instance.hypervisor, **fields
            ),
        )

    def _disk_ref(self, index: int, disk: Disk) -> DiskRef:
        return DiskRef(
            index=index,
            volume=volume_spec(disk),
            mode=disk.mode.value,
            name=disk.name,
            file_driver=disk.file_driver,
        )

    async def _try_hot(self, step: _Step, what: str, **fields: Any) -> bool:
        """Run a hot step; True when it ran.

        In "if possible" mode a hypervisor that refuses the device as unsupported (kind
        INVALID) turns it into a change for the next start (not for a removal).

        Raises:
            CorralError: the node failed.
        """
        try:
            await self._hotplug(**fields)
        except CorralError as exc:
            fallback = (
                self.hotplug is None
                and exc.kind is ErrorKind.INVALID
                and step.mod.action != "remove"
            )
            if not fallback:
                raise
            self.ctx.feedback(f"{what}: hotplug not possible ({exc}); it applies at the next start")
            return False
        return True

    async def execute(self, undo: AsyncUndo) -> list[list[Any]]:
        """Carry out the planned node steps; every step registers its undo in ``undo``.

        Returns:
            Ganeti-style ``[change, value]`` pairs (``["disk/1", "add:size=1024,mode=rw"]``,
            ``["disk/1", "hotplug:done"]``, ``["nic.link/0", "br1"]``...).

        Raises:
            CorralError: the step that failed (the caller rolls ``undo`` back).
        """
        changes: list[list[Any]] = []
        for step in self.steps:
            if step.mod.kind == "disk":
                changes += await self._run_disk(step, undo)
            else:
                changes += await self._run_nic(step, undo)
        return changes

    async def _run_disk(self, step: _Step, undo: AsyncUndo) -> list[list[Any]]:
        runner, node, idx = self.ctx.runner, self.pnode, step.index
        out: list[list[Any]] = []
        if step.mod.action == "add":
            assert isinstance(step.new, Disk)
            disk = step.new
            vol = volume_spec(disk)
            self.ctx.feedback(f"creating disk {idx} ({disk.size} MiB, {disk.format})")
            await runner.call(node, BLOCKDEV_CREATE, BlockdevRequest(volume=vol))

            async def remove_volume() -> None:
                await runner.call(node, BLOCKDEV_REMOVE, BlockdevRequest(volume=vol))

            undo.add(f"creation of disk {idx}", remove_volume)
            out.append([f"disk/{idx}", f"add:size={disk.size},mode={disk.mode.value}"])
            if step.hot:
                self.ctx.feedback(f"hot-adding disk {idx} to {self.instance.name}")
                if await self._try_hot(
                    step, f"disk {idx}", action="add", device="disk", disk=self._disk_ref(idx, disk)
                ):

                    async def unplug() -> None:
                        await self._hotplug(
                            action="remove", device="disk", index=idx, uuid=disk.uuid
                        )

                    undo.add(f"hot-add of disk {idx}", unplug)
                    out.append([f"disk/{idx}", "hotplug:done"])
        elif step.mod.action == "remove":
            assert isinstance(step.old, Disk)
            disk = step.old
            if step.hot:
                self.ctx.feedback(f"hot-removing disk {idx} from {self.instance.name}")
                await self._hotplug(action="remove", device="disk", index=idx, uuid=disk.uuid)
                ref = self._disk_ref(idx, disk)

                async def replug() -> None:
                    await self._hotplug(action="add", device="disk", disk=ref)

                undo.add(f"hot-removal of disk {idx}", replug)
                out.append([f"disk/{idx}", "hotplug:done"])
            out.append([f"disk/{idx}", "remove"])
        else:
            assert isinstance(step.new, Disk) and isinstance(step.old, Disk)
            if step.new.mode != step.old.mode:
                out.append([f"disk.mode/{idx}", step.new.mode.value])
                if self.running:
                    self.ctx.feedback(f"disk {idx}: the new mode applies at the next start")
            if step.new.name != step.old.name:
                out.append([f"disk.name/{idx}", step.new.name])
        return out

    async def _run_nic(self, step: _Step, undo: AsyncUndo) -> list[list[Any]]:
        idx, cluster = step.index, self.cluster
        out: list[list[Any]] = []
        if step.mod.action == "add":
            assert isinstance(step.new, NIC)
            spec = nic_spec(cluster, idx, step.new)
            out.append(
                [
                    f"nic.{idx}",
                    f"add:mac={spec.mac},ip={spec.ip},mode={spec.mode},link={spec.link}",
                ]
            )
            if step.hot:
                self.ctx.feedback(f"hot-adding NIC {idx} to {self.instance.name}")
                if await self._try_hot(step, f"NIC {idx}", action="add", device="nic", nic=spec):

                    async def unplug() -> None:
                        await self._hotplug(
                            action="remove", device="nic", index=idx, uuid=spec.uuid
                        )

                    undo.add(f"hot-add of NIC {idx}", unplug)
                    out.append([f"nic.{idx}", "hotplug:done"])
        elif step.mod.action == "remove":
            assert isinstance(step.old, NIC)
            spec = nic_spec(cluster, idx, step.old)
            if step.hot:
                self.ctx.feedback(f"hot-removing NIC {idx} from {self.instance.name}")
                await self._hotplug(action="remove", device="nic", index=idx, uuid=spec.uuid)

                async def replug() -> None:
                    await self._hotplug(action="add", device="nic", nic=spec)

                undo.add(f"hot-removal of NIC {idx}", replug)
                out.append([f"nic.{idx}", "hotplug:done"])
            out.append([f"nic.{idx}", "remove"])
        else:
            assert isinstance(step.new, NIC) and isinstance(step.old, NIC)
            before, after = nic_spec(cluster, idx, step.old), nic_spec(cluster, idx, step.new)
            for key in ("mac", "ip", "mode", "link", "name"):
                if getattr(before, key) != getattr(after, key):
                    out.append([f"nic.{key}/{idx}", getattr(after, key)])
            if step.hot:
                self.ctx.feedback(
                    f"moving NIC {idx} of {self.instance.name} to {after.mode} {after.link!r}"
                )
                if await self._try_hot(
                    step, f"NIC {idx}", action="modify", device="nic", nic=after
                ):

                    async def move_back() -> None:
                        await self._hotplug(action="modify", device="nic", nic=before)

                    undo.add(f"move of NIC {idx}", move_back)
                    out.append([f"nic.{idx}", "hotplug:done"])
            if before.mac != after.mac and self.running:
                self.ctx.feedback(f"NIC {idx}: the new MAC address applies at the next start")
        return out

    def apply(self, instance: Instance) -> None:
        """Put the new disk and NIC lists into ``instance`` (inside the store transaction)."""
        instance.disks = [d.model_copy(deep=True) for d in self.disks]
        instance.nics = [n.model_copy(deep=True) for n in self.nics]

    async def after_commit(self) -> None:
        """Delete the volumes of removed disks; failures are reported, not raised."""
        for disk in self.removed_disks:
            try:
                await self.ctx.runner.call(
                    self.pnode, BLOCKDEV_REMOVE, BlockdevRequest(volume=volume_spec(disk))
                )
            except CorralError as exc:
                self.ctx.feedback(
                    f"warning: could not delete the volume of removed disk {disk.logical_id}: {exc}"
                )

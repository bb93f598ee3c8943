"""Hotplug of disks and NICs into running KVM guests, through QMP.

Every operation holds the instance's lock (so it never races a stop, a reboot or another
hotplug), works on the runtime file and saves it at the end. PCI placement and the argv edits
are in :mod:`corral.hypervisor.kvm.pci` (see there for pc slots and q35 spare ports).

Adding (disk: ``blockdev-add`` file node, format node, then ``device_add``; NIC: tap, then
``netdev_add``, then ``device_add``) runs under a :class:`~corral.common.revert.Reverter`:
when a step fails, the steps before it are undone (device unplugged, block nodes deleted,
netdev deleted, tap removed) and the runtime is not touched, so a failed hot-add leaves
nothing behind and consumes no slot or port.

Removing registers for QEMU's ``DEVICE_DELETED`` event *before* ``device_del`` and waits for
it (``unplug_timeout`` seconds): the guest must release the device first. If it does not (a
guest without hotplug support, or a paused one), the operation fails and the device stays
attached *and* recorded. Only after the event are the backend (block nodes, netdev, tap) and
the slot or port freed.

Persistence: a hot-added device's ``-blockdev``/``-netdev``/``-device`` arguments (with their
explicit ``bus=``/``addr=``) are appended to the runtime's argv and its record to the
runtime's disks or NICs; a removed device's arguments and record are deleted. A soft reboot or a
migration destination replays that argv, so it gets exactly the devices the guest has now.
Indices follow the master's lists: removing disk 1 renumbers disk 2 as 1 (device ids, which
hold the original index, do not change).

Refusals: a stopped instance gives kind WRONG_STATE ("not running"); a device model that
cannot be hot-plugged (disk_type ide/scsi, a machine type without PCI hotplug) gives kind
INVALID ("hotplug not supported").
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import logging
import os
import struct
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

from corral.common.errors import CommandError, ErrorKind, HypervisorError
from corral.common.revert import Reverter
from corral.hypervisor.base import AttachedDisk, NicSpec
from corral.hypervisor.kvm import network, security
from corral.hypervisor.kvm.cmdline import (
    DISK_MODELS,
    NIC_MODELS,
    hotplug_disk_args,
    hotplug_nic_args,
    is_q35,
)
from corral.hypervisor.kvm.hostprep import KvmHostPrep
from corral.hypervisor.kvm.monitor import QmpSession
from corral.hypervisor.kvm.pci import (
    PC_BUS,
    blockdev_qmp,
    bus0_slots,
    choose_pc_slot,
    device_qmp,
    device_text,
    free_root_ports,
    netdev_qmp,
    parse_options,
    pin_slots,
    remove_objects,
)
from corral.hypervisor.kvm.process import QemuProcess
from corral.hypervisor.kvm.runtime import (
    DiskRuntime,
    InstanceLayout,
    KvmRuntime,
    NicRuntime,
    save_runtime,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", DiskRuntime, NicRuntime)

#: Device models that can be hot-plugged (PCI devices on pc's pci.0 or behind a q35 port).
HOTPLUG_DISK_MODELS = frozenset({"virtio-blk-pci"})
HOTPLUG_NIC_MODELS = frozenset(
    {"virtio-net-pci", "e1000", "e1000e", "rtl8139", "i82551", "i82557b", "i82559er", "pcnet",
     "ne2k_pci"}
)  # fmt: skip


#: Linux tun/tap ioctl and flags (linux/if_tun.h).
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_DEVICE = "/dev/net/tun"


def open_tap(ifname: str, *, tun_device: str = TUN_DEVICE) -> int:
    """Open the existing (persistent) tap ``ifname``; the descriptor QEMU can use.

    Flags are QEMU's own (tap, no packet info, virtio-net header).

    Raises:
        HypervisorError: kind ENVIRONMENT when the tun device or the tap cannot be opened.
    """
    try:
        fd = os.open(tun_device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise HypervisorError(
            f"cannot open {tun_device}: {exc.strerror}", kind=ErrorKind.ENVIRONMENT, tap=ifname
        ) from exc
    try:
        request = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as exc:
        os.close(fd)
        raise HypervisorError(
            f"cannot attach to tap {ifname}: {exc.strerror}", kind=ErrorKind.ENVIRONMENT, tap=ifname
        ) from exc
    return fd


def _pairs(argv: Sequence[str]) -> Iterator[tuple[str, str]]:
    for i in range(0, len(argv) - 1, 2):
        yield argv[i], argv[i + 1]


def _find(records: Sequence[R], index: int, uuid: str, what: str, name: str) -> R:
    """The record with ``uuid`` (when given) else at ``index``.

    Raises:
        HypervisorError: kind NOT_FOUND.
    """
    for rec in records:
        if (uuid and rec.uuid == uuid) or (not uuid and rec.index == index):
            return rec
    raise HypervisorError(
        f"instance {name} has no {what} {index}{f' ({uuid})' if uuid else ''} attached",
        kind=ErrorKind.NOT_FOUND,
        index=index,
        uuid=uuid,
    )


def _inserted(records: Sequence[R], new: R) -> list[R]:
    """``records`` plus ``new``; records at or after its index move one up.

    That is what the master's list does when a device is inserted.
    """
    out: list[R] = [
        dataclasses.replace(r, index=r.index + 1) if r.index >= new.index else r for r in records
    ]
    out.append(new)
    return sorted(out, key=lambda r: r.index)


def _removed(records: Sequence[R], old: R) -> list[R]:
    """``records`` without ``old``; records after it move one down."""
    return [
        dataclasses.replace(r, index=r.index - 1) if r.index > old.index else r
        for r in records
        if r.uuid != old.uuid or r.device_id != old.device_id
    ]


class KvmHotplug(KvmHostPrep):
    """The hotplug feature of the KVM driver; see the module docstring."""

    #: Seconds the guest may take to release a device after ``device_del``.
    unplug_timeout: float = 30.0

    # --- helpers -----------------------------------------------------------------------------

    def _hotplug_target(
        self, name: str, what: str
    ) -> tuple[InstanceLayout, KvmRuntime, QemuProcess]:
        """The running instance (the caller holds its lock).

        Raises:
            HypervisorError: kind WRONG_STATE when it does not run; kind INVALID when its
                machine type has no PCI hotplug.
        """
        live = self._live(name)
        if live is None or live[1] is None:
            raise HypervisorError(
                f"cannot {what}: instance {name} is not running (hotplug needs a running "
                "instance; change the configuration instead and it applies at the next start)",
                kind=ErrorKind.WRONG_STATE,
                instance=name,
            )
        layout, runtime, proc = live
        assert runtime is not None
        machine = runtime.machine or "pc"
        if not (is_q35(machine) or machine == "pc" or machine.startswith("pc-")):
            raise HypervisorError(
                f"cannot {what}: hotplug is not supported on machine type {machine!r} "
                "(use pc or q35)",
                kind=ErrorKind.INVALID,
                instance=name,
            )
        return layout, runtime, proc

    @staticmethod
    def _qmp(proc: QemuProcess, method: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run one :class:`QmpSession` method (``QmpSession.set_link``) on the guest.

        Raises:
            HypervisorError: as the method.
        """

        async def act(q: QmpSession) -> T:
            return await method(q, *args)

        return proc.monitor.call(act)

    def _quietly(
        self, proc: QemuProcess, method: Callable[..., Awaitable[object]], *args: object
    ) -> None:
        """Run an undo step; a failure is logged (the Reverter goes on with the others)."""
        try:
            self._qmp(proc, method, *args)
        except HypervisorError as exc:
            log.warning("%s: undo step %s%s failed: %s", proc.name, method.__name__, args, exc)

    def _placement(
        self, runtime: KvmRuntime, proc: QemuProcess
    ) -> tuple[list[str], str, int | None]:
        """Where the next hot-added device goes: (bus option strings, bus, pc slot).

        Raises:
            HypervisorError: kind NO_RESOURCES when no slot or spare port is left.
        """
        if is_q35(runtime.machine):
            free = runtime.free_ports
            if free is None:
                free = free_root_ports(runtime.argv)
            if not free:
                raise HypervisorError(
                    f"no free pcie-root-port left on {runtime.name} for a hot-added device "
                    "(q35 guests start with 8 spare ports; remove a hot-added device first, or "
                    "restart the instance so its devices get their own ports)",
                    kind=ErrorKind.NO_RESOURCES,
                )
            return [f"bus={free[0]}"], free[0], None
        devices = self._qmp(proc, QmpSession.query_pci)
        used = set(bus0_slots(devices))
        used |= {d.slot for d in runtime.disks if d.slot is not None}
        used |= {n.slot for n in runtime.nics if n.slot is not None}
        slot = choose_pc_slot(used)
        return [f"bus={PC_BUS}", f"addr={hex(slot)}"], PC_BUS, slot

    def _save(self, layout: InstanceLayout, runtime: KvmRuntime, proc: QemuProcess) -> None:
        """Bring the runtime's placement records up to date and write it.

        q35: the free port list is recomputed from the argv. pc: every device with an id gets
        its current slot pinned in the argv and in its record (see kvm/pci.py).

        Raises:
            HypervisorError: QMP or the file write failed.
        """
        if is_q35(runtime.machine):
            runtime.free_ports = free_root_ports(runtime.argv)
        else:
            slots = {
                dev_id: slot
                for slot, dev_id in bus0_slots(self._qmp(proc, QmpSession.query_pci)).items()
                if dev_id
            }
            runtime.argv = pin_slots(runtime.argv, slots)
            runtime.disks = [
                dataclasses.replace(d, slot=slots[d.device_id])
                if d.slot is None and d.device_id in slots
                else d
                for d in runtime.disks
            ]
            runtime.nics = [
                dataclasses.replace(n, slot=slots[n.device_id])
                if n.slot is None and n.device_id in slots
                else n
                for n in runtime.nics
            ]
        save_runtime(layout, runtime)

    def _plug(self, proc: QemuProcess, rv: Reverter, text: str, device_id: str) -> None:
        """``device_add`` the ``-device`` value ``text``; on a later failure ``rv`` unplugs it.

        Raises:
            HypervisorError: QEMU refused the device.
        """
        self._qmp(proc, QmpSession.device_add, device_qmp(text))
        rv.add(functools.partial(self._unplug, proc, device_id), f"device_del {device_id}")

    def _unplug(self, proc: QemuProcess, device_id: str) -> None:
        """``device_del`` and wait for ``DEVICE_DELETED`` (a device already gone is fine).

        Raises:
            HypervisorError: qmp_failure ``unplug_timeout`` (still attached), or QEMU refused.
        """

        async def act(q: QmpSession) -> None:
            try:
                await q.device_del(device_id, timeout=self.unplug_timeout)
            except HypervisorError as exc:
                if exc.fields.get("error_class") != "DeviceNotFound":
                    raise
                log.info("%s: device %s was already gone", proc.name, device_id)

        proc.monitor.call(act)

    def _check_removable(self, runtime: KvmRuntime, device_id: str, what: str) -> None:
        """Refuse devices QEMU cannot unplug (kind INVALID).

        Raises:
            HypervisorError: kind INVALID ("hotplug not supported") for a non-PCI model or a
                q35 device on the root complex; NOT_FOUND when its argv entry is missing.
        """
        text = device_text(runtime.argv, device_id)
        if text is None:
            raise HypervisorError(
                f"{what} ({device_id}) is not on the command line of {runtime.name}",
                kind=ErrorKind.NOT_FOUND,
            )
        model, opts = parse_options(text)
        if model not in HOTPLUG_DISK_MODELS | HOTPLUG_NIC_MODELS:
            raise HypervisorError(
                f"hot-unplug of {what} is not supported: its model {model} cannot be unplugged "
                "(only PCI devices: virtio-blk disks, PCI NICs)",
                kind=ErrorKind.INVALID,
            )
        if is_q35(runtime.machine) and not opts.get("bus"):
            raise HypervisorError(
                f"hot-unplug of {what} is not supported: it sits on the q35 root complex",
                kind=ErrorKind.INVALID,
            )

    def _open_tap(self, ifname: str) -> int:
        """Open a tap for QEMU (:func:`open_tap`; unit tests replace it)."""
        return open_tap(ifname)

    def _pass_tap(self, proc: QemuProcess, opts: dict[str, object]) -> dict[str, object]:
        """Open the tap here and hand QEMU the descriptor; the ``netdev_add`` options for it.

        NOTE: a QEMU that already dropped its privileges (security_model user/pool) or runs
        chrooted cannot open ``/dev/net/tun`` itself (often mode 0600); the node daemon opens
        the tap (TUNSETIFF) and passes the descriptor (``getfd``), as libvirt does. The
        runtime's argv keeps ``ifname=``: a fresh QEMU opens its taps before dropping
        privileges.

        Raises:
            HypervisorError: the tap cannot be opened, or QEMU refused the descriptor.
        """
        ifname = str(opts["ifname"])
        fdname = f"fd-{opts['id']}"
        fd = self._open_tap(ifname)
        try:
            self._qmp(proc, QmpSession.getfd, fdname, fd)
        finally:
            os.close(fd)
        out = {k: v for k, v in opts.items() if k not in ("ifname", "script", "downscript")}
        out["fd"] = fdname
        return out

    @staticmethod
    def _refuse_chroot(runtime: KvmRuntime, what: str) -> None:
        """Refuse hot-adding a disk to a chrooted QEMU (kind INVALID).

        NOTE: a chrooted QEMU cannot open an image by path; Ganeti passes file descriptors
        there (``add-fd``, /dev/fdset), which is not implemented yet. NICs work: their tap is
        passed as a descriptor (:meth:`_pass_tap`).
        """
        if runtime.security.get("chroot"):
            raise HypervisorError(
                f"cannot {what}: disk hotplug is not supported for an instance running with "
                "use_chroot (QEMU cannot reach the image); the change applies at the next start",
                kind=ErrorKind.INVALID,
                param="use_chroot",
            )

    @staticmethod
    def _ungrant(runtime: KvmRuntime, keep: int) -> None:
        """Undo :meth:`_grant_disk` records beyond the first ``keep`` (a failed hot-add)."""
        owned = runtime.security.get("owned")
        if isinstance(owned, list) and len(owned) > keep:
            security.restore(owned[keep:])
            del owned[keep:]

    @staticmethod
    def _wrap(exc: HypervisorError, message: str) -> HypervisorError:
        return HypervisorError(f"{message}: {exc}", kind=exc.kind, **exc.fields)

    # --- disks ---------------------------------------------------------------------------------

    def hotplug_add_disk(self, name: str, disk: AttachedDisk) -> None:
        """Attach a disk to a running guest (virtio-blk; see the module docstring).

        Raises:
            HypervisorError: kind WRONG_STATE (not running), INVALID (disk_type cannot be
                hot-plugged, bad format), EXISTS (this disk is attached already),
                NO_RESOURCES (no slot or port left), or QEMU's refusal (e.g. the image does
                not exist). Nothing is left behind.
        """
        what = f"hot-add disk {disk.index} to {name}"
        layout = self._layout(name)
        with self._lock(layout):
            layout, runtime, proc = self._hotplug_target(name, what)
            disk_type = str(runtime.hvparams.get("disk_type", "paravirtual"))
            if DISK_MODELS.get(disk_type) not in HOTPLUG_DISK_MODELS:
                raise HypervisorError(
                    f"cannot {what}: hotplug is not supported for disk_type={disk_type} "
                    "(only paravirtual disks can be hot-plugged)",
                    kind=ErrorKind.INVALID,
                    param="disk_type",
                )
            if any(d.uuid == disk.uuid for d in runtime.disks):
                raise HypervisorError(
                    f"cannot {what}: disk {disk.uuid} is attached already",
                    kind=ErrorKind.EXISTS,
                    uuid=disk.uuid,
                )
            self._refuse_chroot(runtime, what)
            bus_args, bus, slot = self._placement(runtime, proc)
            pieces, record = hotplug_disk_args(disk, runtime.hvparams, bus_args)
            record = dataclasses.replace(record, bus=bus, slot=slot, hotplugged=True)
            with Reverter() as rv:
                owned = runtime.security.get("owned")
                owned_before = len(owned) if isinstance(owned, list) else 0
                self._grant_disk(runtime, disk.path)  # QEMU running unprivileged must open it
                rv.add(functools.partial(self._ungrant, runtime, owned_before), "restore owner")
                try:
                    for option, text in _pairs(pieces):
                        if option == "-blockdev":
                            opts = blockdev_qmp(text)
                            node = str(opts["node-name"])
                            self._qmp(proc, QmpSession.blockdev_add, opts)
                            rv.add(
                                functools.partial(
                                    self._quietly, proc, QmpSession.blockdev_del, node
                                ),
                                f"blockdev-del {node}",
                            )
                        elif option == "-device":
                            self._plug(proc, rv, text, record.device_id)
                except HypervisorError as exc:
                    raise self._wrap(exc, f"cannot {what}") from exc
                runtime.disks = _inserted(runtime.disks, record)
                runtime.argv = [*runtime.argv, *pieces]
                self._save(layout, runtime, proc)
                rv.success()
        log.info("%s: disk %d hot-added as %s on %s", name, disk.index, record.device_id, bus)

    def hotplug_remove_disk(self, name: str, index: int, uuid: str) -> None:
        """Detach a disk (found by ``uuid``, else ``index``) once the guest released it.

        Raises:
            HypervisorError: kind WRONG_STATE (not running), NOT_FOUND (no such disk),
                INVALID (its model cannot be unplugged), qmp_failure ``unplug_timeout`` (the
                guest did not release it: it stays attached and recorded); after the guest
                released it, a block node that cannot be deleted (the runtime is updated).
        """
        what = f"hot-remove disk {index} from {name}"
        layout = self._layout(name)
        with self._lock(layout):
            layout, runtime, proc = self._hotplug_target(name, what)
            rec = _find(runtime.disks, index, uuid, "disk", name)
            self._check_removable(runtime, rec.device_id, f"disk {rec.index}")
            try:
                self._unplug(proc, rec.device_id)
            except HypervisorError as exc:
                raise self._wrap(exc, f"cannot {what}") from exc
            problems = []
            for node in (rec.node_name, rec.file_node_name):
                try:
                    self._qmp(proc, QmpSession.blockdev_del, node)
                except HypervisorError as exc:
                    problems.append(str(exc))
            runtime.disks = _removed(runtime.disks, rec)
            runtime.argv = remove_objects(
                runtime.argv,
                device_ids=[rec.device_id],
                node_names=[rec.node_name, rec.file_node_name],
            )
            owned = runtime.security.get("owned")
            if isinstance(owned, list):  # QEMU ran unprivileged: the image goes back
                mine = [row for row in owned if row and row[0] == rec.path]
                security.restore(mine)
                owned[:] = [row for row in owned if row not in mine]
            self._save(layout, runtime, proc)
        if problems:
            raise HypervisorError(
                f"disk {rec.index} was detached from {name}, but its block nodes could not be "
                f"freed: {'; '.join(problems)}",
                kind=ErrorKind.ENVIRONMENT,
            )
        log.info("%s: disk %d (%s) hot-removed", name, rec.index, rec.device_id)

    # --- NICs ----------------------------------------------------------------------------------

    def hotplug_add_nic(self, name: str, nic: NicSpec) -> None:
        """Attach a NIC to a running guest (its tap is created and put on its bridge).

        Raises:
            HypervisorError: kind WRONG_STATE (not running), INVALID (nic_type or mode cannot
                be hot-plugged), EXISTS (attached already), NO_RESOURCES (no slot or port),
                ENVIRONMENT (bridge missing, tap taken), or QEMU's refusal. Nothing is left
                behind.
        """
        what = f"hot-add NIC {nic.index} to {name}"
        layout = self._layout(name)
        with self._lock(layout):
            layout, runtime, proc = self._hotplug_target(name, what)
            nic_type = str(runtime.hvparams.get("nic_type", "paravirtual"))
            if NIC_MODELS.get(nic_type) not in HOTPLUG_NIC_MODELS:
                raise HypervisorError(
                    f"cannot {what}: hotplug is not supported for nic_type={nic_type}",
                    kind=ErrorKind.INVALID,
                    param="nic_type",
                )
            if any(n.uuid == nic.uuid for n in runtime.nics):
                raise HypervisorError(
                    f"cannot {what}: NIC {nic.uuid} is attached already",
                    kind=ErrorKind.EXISTS,
                    uuid=nic.uuid,
                )
            bus_args, bus, slot = self._placement(runtime, proc)
            pieces, record = hotplug_nic_args(nic, runtime.hvparams, bus_args)
            if runtime.security.get("chroot"):
                # NOTE: a chrooted QEMU cannot load the NIC's option ROM (efi-virtio.rom...)
                # any more; a hot-added NIC does not boot, so it gets none (argv too, so a
                # migration destination builds the same device).
                pieces = [f"{p},romfile=" if i > 0 and pieces[i - 1] == "-device" else p
                          for i, p in enumerate(pieces)]  # fmt: skip
            record = dataclasses.replace(record, bus=bus, slot=slot, hotplugged=True)
            network.check_nic_links([record], sys_class_net=self.sys_class_net)
            with Reverter() as rv:
                if record.tap:
                    network.create_tap(self.runner, record)
                    rv.add(
                        functools.partial(network.remove_tap, self.runner, record.tap),
                        f"remove tap {record.tap}",
                    )
                try:
                    for option, text in _pairs(pieces):
                        if option == "-netdev":
                            opts = netdev_qmp(text)
                            netdev = str(opts["id"])
                            if opts.get("type") == "tap":
                                opts = self._pass_tap(proc, opts)
                            try:
                                self._qmp(proc, QmpSession.netdev_add, opts)
                            except HypervisorError:
                                if "fd" in opts:  # not taken by a netdev: QEMU keeps it
                                    self._quietly(proc, QmpSession.closefd, opts["fd"])
                                raise
                            rv.add(
                                functools.partial(
                                    self._quietly, proc, QmpSession.netdev_del, netdev
                                ),
                                f"netdev_del {netdev}",
                            )
                        elif option == "-device":
                            self._plug(proc, rv, text, record.device_id)
                except HypervisorError as exc:
                    raise self._wrap(exc, f"cannot {what}") from exc
                runtime.nics = _inserted(runtime.nics, record)
                runtime.argv = [*runtime.argv, *pieces]
                self._save(layout, runtime, proc)
                rv.success()
        log.info("%s: NIC %d hot-added as %s on %s", name, nic.index, record.device_id, bus)

    def hotplug_remove_nic(self, name: str, index: int, uuid: str) -> None:
        """Detach a NIC (by ``uuid``, else ``index``) once the guest released it.

        Its netdev and tap are removed afterwards.

        Raises:
            HypervisorError: as :meth:`hotplug_remove_disk`.
        """
        what = f"hot-remove NIC {index} from {name}"
        layout = self._layout(name)
        with self._lock(layout):
            layout, runtime, proc = self._hotplug_target(name, what)
            rec = _find(runtime.nics, index, uuid, "NIC", name)
            self._check_removable(runtime, rec.device_id, f"NIC {rec.index}")
            try:
                self._unplug(proc, rec.device_id)
            except HypervisorError as exc:
                raise self._wrap(exc, f"cannot {what}") from exc
            problem = ""
            if rec.netdev_id:
                try:
                    self._qmp(proc, QmpSession.netdev_del, rec.netdev_id)
                except HypervisorError as exc:
                    problem = str(exc)
            if rec.tap:
                network.remove_tap(self.runner, rec.tap)
            runtime.nics = _removed(runtime.nics, rec)
            runtime.argv = remove_objects(
                runtime.argv,
                device_ids=[rec.device_id],
                netdev_ids=[rec.netdev_id] if rec.netdev_id else [],
            )
            self._save(layout, runtime, proc)
        if problem:
            raise HypervisorError(
                f"NIC {rec.index} was detached from {name}, but its netdev could not be "
                f"removed: {problem}",
                kind=ErrorKind.ENVIRONMENT,
            )
        log.info("%s: NIC %d (%s) hot-removed", name, rec.index, rec.device_id)

    def set_nic_link(self, name: str, index: int, uuid: str, up: bool) -> None:
        """Set the carrier of a running guest's NIC (QMP ``set_link``).

        The state is recorded in the runtime and re-applied when QEMU restarts from it.

        Raises:
            HypervisorError: kind WRONG_STATE (not running), NOT_FOUND (no such NIC), QMP
                failed.
        """
        layout = self._layout(name)
        with self._lock(layout):
            layout, runtime, proc = self._hotplug_target(name, f"set the link of NIC {index}")
            rec = _find(runtime.nics, index, uuid, "NIC", name)
            self._qmp(proc, QmpSession.set_link, rec.device_id, up)
            runtime.nics = [
                dataclasses.replace(n, link_up=up) if n.device_id == rec.device_id else n
                for n in runtime.nics
            ]
            save_runtime(layout, runtime)
        log.info("%s: NIC %d link %s", name, rec.index, "up" if up else "down")

    def hotplug_modify_nic(self, name: str, nic: NicSpec) -> None:
        """Move a running guest's NIC to another bridge or mode, keeping the device.

        Unlike Ganeti (which unplugs and re-plugs the NIC), the guest keeps its interface:
        the carrier goes down, the tap moves to the new bridge (bridged) or leaves it
        (routed), and the carrier is restored. The MAC address cannot change on a running
        guest (the master applies it at the next start).

        Raises:
            HypervisorError: kind WRONG_STATE (not running), NOT_FOUND (no such NIC), INVALID
                (a NIC without network backend, or an unknown mode), ENVIRONMENT (the new
                bridge does not exist, an ``ip`` command failed: the carrier is restored).
        """
        what = f"modify NIC {nic.index} of {name}"
        layout = self._layout(name)
        with self._lock(layout):
            layout, runtime, proc = self._hotplug_target(name, what)
            rec = _find(runtime.nics, nic.index, nic.uuid, "NIC", name)
            if nic.mode not in ("bridged", "routed"):
                raise HypervisorError(
                    f"cannot {what}: mode {nic.mode!r} is not supported (bridged or routed)",
                    kind=ErrorKind.INVALID,
                )
            if (nic.mode, nic.link) == (rec.mode, rec.link):
                return
            if not rec.tap:
                raise HypervisorError(
                    f"cannot {what} while it runs: the NIC was started without a network "
                    "backend (no link); the change applies at the next start",
                    kind=ErrorKind.INVALID,
                )
            if nic.mode == "bridged" and not network.bridge_exists(
                nic.link, sys_class_net=self.sys_class_net
            ):
                raise HypervisorError(
                    f"cannot {what}: bridge {nic.link!r} does not exist on this node",
                    kind=ErrorKind.ENVIRONMENT,
                    link=nic.link,
                )
            self._qmp(proc, QmpSession.set_link, rec.device_id, False)
            try:
                if nic.mode == "bridged":
                    argv = ["ip", "link", "set", "dev", rec.tap, "master", nic.link]
                else:
                    argv = ["ip", "link", "set", "dev", rec.tap, "nomaster"]
                self.runner(argv, timeout=network.IP_TIMEOUT)
            except CommandError as exc:
                raise HypervisorError(
                    f"cannot {what}: {exc}", kind=ErrorKind.ENVIRONMENT, tap=rec.tap
                ) from exc
            finally:
                if rec.link_up:
                    self._qmp(proc, QmpSession.set_link, rec.device_id, True)
            runtime.nics = [
                dataclasses.replace(n, mode=nic.mode, link=nic.link)
                if n.device_id == rec.device_id
                else n
                for n in runtime.nics
            ]
            save_runtime(layout, runtime)
        log.info("%s: NIC %d moved to %s %r", name, rec.index, nic.mode, nic.link)

    def _after_launch(
        self, layout: InstanceLayout, runtime: KvmRuntime, proc: QemuProcess, *, incoming: bool
    ) -> None:
        """Record the free q35 ports; re-apply NIC carriers that were down.

        A fresh QEMU starts with every link up; a migration destination gets the link state
        with the device state instead.

        Raises:
            HypervisorError: QMP failed (the launch is then rolled back).
        """
        super()._after_launch(layout, runtime, proc, incoming=incoming)
        if is_q35(runtime.machine) and runtime.free_ports is None:
            runtime.free_ports = free_root_ports(runtime.argv)
        if incoming:
            return
        for nic in runtime.nics:
            if not nic.link_up:
                self._qmp(proc, QmpSession.set_link, nic.device_id, False)

"""Instances on this node: list, info, start, shutdown, reboot, balloon and console.

Everything goes through the hypervisor driver named in the request. Start, shutdown and reboot
of one instance are serialised by a per-instance lock (the node daemon calls the backend from
several worker threads); different instances proceed in parallel.

Start resolves each :class:`~corral.rpc.calls.DiskRef` with its storage driver and hands the
driver :class:`~corral.hypervisor.base.AttachedDisk` objects; a missing volume fails the start
before anything runs, with an error naming the disk index.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence

from corral.common.errors import ErrorKind, HypervisorError, ParamError, StorageError
from corral.hypervisor.base import (
    AttachedDisk,
    ConsoleInfo,
    Hypervisor,
    InstanceInfo,
    InstanceSpec,
    InstanceState,
)
from corral.node.backend.blockdev import Blockdevs
from corral.rpc.calls import (
    FILE_DRIVERS,
    DiskRef,
    InstanceHotplugRequest,
    InstanceHotplugResponse,
)
from corral.storage.base import VolumeInfo, VolumeSpec

log = logging.getLogger(__name__)

#: Returns the driver of a hypervisor by name (raises CorralError for unknown ones).
HypervisorGetter = Callable[[str], Hypervisor]


def file_driver_of(ref: DiskRef, path: str) -> str | None:
    """How a hypervisor opens the volume at ``path`` (``AttachedDisk.file_driver``).

    An image file gets the disk's file driver (default ``loop``), a block device None (Xen's
    ``phy:``). A path that cannot be inspected counts as a file.
    """
    try:
        block = stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        block = False
    if block:
        return None
    return ref.file_driver or FILE_DRIVERS[0]


class InstanceLocks:
    """One lock per instance name, created on demand and dropped when nobody holds it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        """Hold ``name``'s lock for the duration of the block (blocks until it is free)."""
        with self._guard:
            lock, users = self._locks.get(name, (threading.Lock(), 0))
            self._locks[name] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[name]
                if users <= 1:
                    del self._locks[name]
                else:
                    self._locks[name] = (lock, users - 1)

    def held(self) -> list[str]:
        """Names whose lock is held or waited for (for tests and debugging)."""
        with self._guard:
            return sorted(self._locks)


class Instances:
    """The instance family of node calls."""

    def __init__(
        self, get_hv: HypervisorGetter, blockdevs: Blockdevs, locks: InstanceLocks
    ) -> None:
        """Create the family from a hypervisor getter, the block devices and the locks."""
        self._get_hv = get_hv
        self._blockdevs = blockdevs
        self.locks = locks

    # --- reads -----------------------------------------------------------------------------

    def list_names(self, hypervisors: Sequence[str]) -> dict[str, list[str]]:
        """Running instances per hypervisor.

        Raises:
            CorralError: a hypervisor is unknown or cannot be queried.
        """
        return {name: sorted(self._get_hv(name).list_instances()) for name in hypervisors}

    def info(self, name: str, hypervisor: str) -> InstanceInfo | None:
        """Live information about one instance (None: it does not run here).

        Raises:
            CorralError: the hypervisor is unknown or cannot be queried.
        """
        return self._get_hv(hypervisor).instance_info(name)

    def all_info(self, hypervisors: Sequence[str]) -> list[InstanceInfo]:
        """Live information about every instance of these hypervisors.

        Raises:
            CorralError: a hypervisor is unknown or cannot be queried.
        """
        infos: list[InstanceInfo] = []
        for name in hypervisors:
            infos.extend(self._get_hv(name).all_instances_info())
        return infos

    def console(self, spec: InstanceSpec, node_host: str) -> ConsoleInfo:
        """How to reach the instance's console.

        Raises:
            HypervisorError: the instance has no console of the driver's kind.
        """
        return self._get_hv(spec.hypervisor).console(spec, node_host=node_host)

    # --- lifecycle -------------------------------------------------------------------------

    def attach_disks(self, refs: Sequence[DiskRef]) -> list[AttachedDisk]:
        """The instance's disks as the driver takes them, resolved on this node.

        Raises:
            StorageError: a volume is missing (NOT_FOUND, naming the disk index) or cannot be
                inspected.
        """
        attached = []
        for ref, info in self._blockdevs.resolve_all(refs):
            attached.append(
                AttachedDisk(
                    index=ref.index,
                    uuid=ref.volume.uuid,
                    path=info.path,
                    format=info.format,
                    mode=ref.mode,
                    size=info.size,
                    file_driver=file_driver_of(ref, info.path),
                )
            )
        return attached

    def start(self, spec: InstanceSpec, disks: Sequence[DiskRef], *, paused: bool) -> None:
        """Start the instance; starting one that already runs succeeds (as in Ganeti).

        An instance whose guest powered itself off (state shutdown/crashed) is cleaned up with
        a forced stop first.

        Raises:
            ParamError: the driver rejects the hvparams on this node.
            StorageError: a disk's volume is missing (the error names its index).
            HypervisorError: the driver could not start it (nothing is left behind).
        """
        with self.locks.hold(spec.name):
            self._start_locked(spec, disks, paused=paused)

    def _start_locked(self, spec: InstanceSpec, disks: Sequence[DiskRef], *, paused: bool) -> None:
        hv = self._get_hv(spec.hypervisor)
        hv.validate_params(spec.hvparams)
        attached = self.attach_disks(disks)
        current = hv.instance_info(spec.name)
        if current is not None:
            if current.state in (InstanceState.RUNNING, InstanceState.PAUSED):
                log.info("instance %s already runs (%s), not starting it", spec.name, current.state)
                return
            log.info("instance %s is %s; cleaning up before starting", spec.name, current.state)
            hv.stop(spec.name, timeout=0, force=True)
        hv.start(spec, attached, paused=paused)
        log.info("started instance %s%s", spec.name, " (paused)" if paused else "")

    def shutdown(self, name: str, hypervisor: str, *, timeout: float, force: bool) -> None:
        """Stop the instance: soft for ``timeout`` seconds, then hard (``force``: hard now).

        Stopping an instance that does not run succeeds.

        Raises:
            HypervisorError: it could not be stopped even by force.
        """
        with self.locks.hold(name):
            self._get_hv(hypervisor).stop(name, timeout=timeout, force=force)
        log.info("stopped instance %s", name)

    def reboot(
        self,
        spec: InstanceSpec,
        disks: Sequence[DiskRef],
        *,
        reboot_type: str,
        shutdown_timeout: float,
    ) -> None:
        """Reboot: ``soft`` (guest ACPI), ``hard`` (reset) or ``full`` (stop, then start).

        Raises:
            HypervisorError: the instance does not run (soft/hard), the reboot request failed,
                or (full) it could not be stopped or started again.
            StorageError: (full) a disk's volume is missing.
            ParamError: unknown ``reboot_type``.
        """
        if reboot_type not in ("soft", "hard", "full"):
            raise ParamError({"reboot_type": f"must be soft, hard or full, got {reboot_type!r}"})
        with self.locks.hold(spec.name):
            hv = self._get_hv(spec.hypervisor)
            if reboot_type == "full":
                hv.stop(spec.name, timeout=shutdown_timeout)
                self._start_locked(spec, disks, paused=False)
            else:
                hv.reboot(spec.name, hard=reboot_type == "hard")
        log.info("rebooted instance %s (%s)", spec.name, reboot_type)

    def grow_disk(
        self, vol: VolumeSpec, amount: int, *, name: str, hypervisor: str, index: int
    ) -> VolumeInfo:
        """Grow an instance's disk by ``amount`` MiB, online when the instance runs.

        A running instance whose driver resizes disks online (KVM: QEMU holds the image's
        write lock) gets its disk grown through the hypervisor, so the guest sees the new
        size; otherwise the storage driver grows the volume.

        Raises:
            StorageError: missing volume (NOT_FOUND), no room (NO_RESOURCES), tool failure.
            HypervisorError: the hypervisor refused the online resize.
        """
        hv = self._get_hv(hypervisor)
        with self.locks.hold(name):
            if not hv.CAPABILITIES.online_disk_resize or hv.instance_info(name) is None:
                return self._blockdevs.grow(vol, amount)
            current = self._blockdevs.find(vol)
            if current is None:
                raise StorageError(
                    f"disk {index} of {name} ({vol.logical_id}) does not exist",
                    kind=ErrorKind.NOT_FOUND,
                )
            self._blockdevs.check_room(vol, amount)
            hv.resize_disk(name, index, current.size + amount)
            grown = self._blockdevs.find(vol)
            assert grown is not None
            return grown

    def balloon(self, name: str, hypervisor: str, memory: int) -> int:
        """Set a running instance's memory to ``memory`` MiB; return the new size.

        Raises:
            HypervisorError: the driver cannot balloon (INVALID), the instance does not run,
                or the guest did not reach the target.
        """
        hv = self._get_hv(hypervisor)
        if not hv.CAPABILITIES.balloon:
            raise HypervisorError(
                f"hypervisor {hypervisor} cannot change the memory of a running instance",
                kind=ErrorKind.INVALID,
                instance=name,
            )
        with self.locks.hold(name):
            return hv.balloon(name, memory)

    # --- devices and pinning ---------------------------------------------------------------

    def hotplug(self, req: InstanceHotplugRequest) -> InstanceHotplugResponse:
        """Hot-add/remove/modify one device of a running instance, or ``check`` whether it can.

        ``check`` answers (never raises for "no"): the driver has the capability for the
        device kind and the instance runs. For ``add`` of a disk, the :class:`DiskRef` is
        resolved to an :class:`AttachedDisk` by its storage driver, as :meth:`start` does.

        Raises:
            ParamError: the request lacks what its action needs.
            StorageError: the disk to add does not exist (NOT_FOUND).
            HypervisorError: the driver refused: not supported (INVALID), not running
                (WRONG_STATE), no such device (NOT_FOUND), or it failed (nothing left behind
                for an add).
        """
        hv = self._get_hv(req.hypervisor)
        caps = hv.CAPABILITIES
        capable = caps.hotplug_disk if req.device == "disk" else caps.hotplug_nic
        if req.action == "check":
            if not capable:
                return InstanceHotplugResponse(
                    supported=False,
                    reason=f"{req.device} hotplug is not supported by the {req.hypervisor} "
                    "hypervisor",
                )
            info = hv.instance_info(req.name)
            if info is None or info.state not in (InstanceState.RUNNING, InstanceState.PAUSED):
                return InstanceHotplugResponse(
                    supported=False, reason=f"instance {req.name} is not running"
                )
            return InstanceHotplugResponse()
        with self.locks.hold(req.name):
            if req.device == "disk":
                self._hotplug_disk(hv, req)
            else:
                self._hotplug_nic(hv, req)
        log.info("%s: hotplug %s %s done", req.name, req.action, req.device)
        return InstanceHotplugResponse()

    def _hotplug_disk(self, hv: Hypervisor, req: InstanceHotplugRequest) -> None:
        if req.action == "add":
            if req.disk is None:
                raise ParamError({"disk": "adding a disk needs the disk"})
            (attached,) = self.attach_disks([req.disk])
            hv.hotplug_add_disk(req.name, attached)
        elif req.action == "remove":
            if req.index is None and not req.uuid:
                raise ParamError({"index": "removing a disk needs its index or uuid"})
            hv.hotplug_remove_disk(req.name, -1 if req.index is None else req.index, req.uuid)
        else:
            raise ParamError({"action": "disks cannot be modified while the instance runs"})

    def _hotplug_nic(self, hv: Hypervisor, req: InstanceHotplugRequest) -> None:
        index = -1 if req.index is None else req.index
        if req.action == "add":
            if req.nic is None:
                raise ParamError({"nic": "adding a NIC needs the NIC"})
            hv.hotplug_add_nic(req.name, req.nic)
        elif req.action == "remove":
            if req.index is None and not req.uuid:
                raise ParamError({"index": "removing a NIC needs its index or uuid"})
            hv.hotplug_remove_nic(req.name, index, req.uuid)
        else:
            if req.nic is None and req.link_up is None:
                raise ParamError({"nic": "modifying a NIC needs the NIC or link_up"})
            if req.nic is not None:
                hv.hotplug_modify_nic(req.name, req.nic)
                index, uuid = req.nic.index, req.nic.uuid
            else:
                uuid = req.uuid
            if req.link_up is not None:
                hv.set_nic_link(req.name, index, uuid, req.link_up)

    def pin_cpus(self, name: str, hypervisor: str, cpu_mask: str) -> None:
        """Pin a running instance's vCPUs (Ganeti mask syntax).

        Raises:
            HypervisorError: not supported (INVALID), not running (WRONG_STATE), or a mask
                the node cannot honour (INVALID, ``fields["param"] == "cpu_mask"``).
        """
        hv = self._get_hv(hypervisor)
        with self.locks.hold(name):
            hv.pin_cpus(name, cpu_mask)

"""Pure generation of QEMU's command line from an instance, its disks and its parameters.

Nothing here touches the host: host facts (QEMU binary, its version, the accelerator chosen
by :mod:`accel`) come in as a :class:`HostFacts`, paths come from an
:class:`~corral.hypervisor.kvm.runtime.InstanceLayout`. Following Ganeti's
``_GenerateKVMRuntime`` rule, this code "must not have any side-effects", so golden tests can
pin the exact argv (tests/unit/hypervisor/test_kvm_cmdline.py).

Choices worth knowing (also in docs/hypervisors/kvm.md):

* Disks use ``-blockdev`` (a protocol node and a format node, format always explicit) plus a
  ``-device`` with an explicit id derived from the disk's index and uuid, so issue 3 can
  hot-unplug them. On q35 every disk and NIC sits behind its own ``pcie-root-port`` because
  devices on the root complex cannot be unplugged.
* Boot order uses ``bootindex=`` on devices: ``-boot order=`` only applies to legacy drives
  and is ignored for ``-blockdev`` disks.
* A NIC whose ``link`` is empty gets no network backend at all (QEMU warns "nic ... has no
  peer"): the guest sees a NIC that carries no traffic, and nothing is created on the host.
  User-mode networking is never used. A NIC with a link gets a tap device created by the
  driver (``-netdev tap,ifname=...,script=no,downscript=no``).
* ``-no-reboot`` is only passed with ``reboot_behavior=exit``: it turns ``system_reset`` (the
  hard reboot) into QEMU exiting.
* Only options the probed binary offers are generated (:mod:`probe`; e.g. ``-run-with user=``
  on QEMU 9.1+, ``-runas`` before); consoles, cdroms, USB, sound and the ``-smp`` topology are
  built by :mod:`devices`, the UEFI flash by :mod:`firmware`, privilege dropping by
  :mod:`security`. ``kvm_extra`` is split like a shell line (:func:`shlex.split`).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import AttachedDisk, InstanceSpec, NicSpec
from corral.hypervisor.kvm import devices
from corral.hypervisor.kvm.devices import VNC_AUTO_RANGE, VNC_BASE_PORT, qemu_escape
from corral.hypervisor.kvm.firmware import UEFI_MIN_MEMORY, firmware_args
from corral.hypervisor.kvm.pci import spare_port_args
from corral.hypervisor.kvm.probe import QemuCaps
from corral.hypervisor.kvm.runtime import DiskRuntime, InstanceLayout, NicRuntime
from corral.hypervisor.kvm.security import RunAs, process_args
from corral.objects.params.hv import KVM_DISK_MODELS, KVM_NIC_MODELS

#: Device models per ``disk_type`` / ``nic_type`` hvparam.
DISK_MODELS = KVM_DISK_MODELS
NIC_MODELS = KVM_NIC_MODELS
__all__ = ["VNC_AUTO_RANGE", "VNC_BASE_PORT", "qemu_escape"]

BALLOON_ID = "balloon0"
QMP_CHARDEV = "qmp"
SERIAL_CHARDEV = "serial0"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HostFacts:
    """What the builder needs to know about the node (gathered by the driver)."""

    qemu_binary: str
    qemu_version: str
    accel: str  # the accelerator actually chosen: "kvm" | "tcg"
    caps: QemuCaps | None = None  # probed (kvm/probe.py); None: QemuCaps.baseline
    run_as: RunAs | None = None  # who QEMU becomes (security_model user/pool)
    chroot: str = ""  # the per-instance chroot directory (use_chroot)
    nvram: str = ""  # the per-instance UEFI variables store (firmware=uefi)

    def capabilities(self) -> QemuCaps:
        """The probed capabilities, or the baseline every supported QEMU has."""
        return self.caps or QemuCaps.baseline(self.qemu_binary, self.qemu_version)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QemuPlan:
    """A generated command line and the device records the runtime file keeps."""

    argv: list[str]  # never contains -S; see :meth:`launch_argv`
    machine: str
    disks: list[DiskRuntime]
    nics: list[NicRuntime]

    def launch_argv(self, *, paused: bool) -> list[str]:
        """The argv to execute: ``-S`` is added when the guest must start paused."""
        return launch_argv(self.argv, paused=paused)


def launch_argv(argv: Sequence[str], *, paused: bool) -> list[str]:
    """``argv`` plus ``-S`` (start with the vCPUs stopped) when ``paused``."""
    return [*argv, "-S"] if paused else list(argv)


def _short(uid: str, length: int = 10) -> str:
    cleaned = re.sub(r"[^0-9a-zA-Z]", "", uid).lower()
    return cleaned[:length]


def disk_ids(index: int, uuid: str) -> tuple[str, str, str]:
    """``(device_id, format_node, file_node)`` of a disk.

    Node names must stay under 32 characters (QEMU's limit), hence the shortened uuid.
    """
    short = _short(uuid)
    device = f"disk{index}-{short}" if short else f"disk{index}"
    return device, f"{device}-fmt", f"{device}-file"


def nic_ids(index: int, uuid: str) -> tuple[str, str]:
    """``(device_id, netdev_id)`` of a NIC."""
    short = _short(uuid)
    device = f"nic{index}-{short}" if short else f"nic{index}"
    return device, f"net{index}-{short}" if short else f"net{index}"


def tap_name(index: int, uuid: str) -> str:
    """The host tap device name of a NIC (at most 15 characters, Linux's IFNAMSIZ - 1)."""
    short = _short(uuid, 8) or "x"
    return f"crl{short}.{index}"[:15]


def is_q35(machine: str) -> bool:
    """Whether a machine type is a PCIe (q35) machine."""
    return machine == "q35" or machine.startswith("pc-q35")


def _bad(message: str, param: str) -> HypervisorError:
    return HypervisorError(message, kind=ErrorKind.INVALID, param=param)


def kernel_append(hv: Mapping[str, Any]) -> str:
    """The kernel command line for direct kernel boot."""
    parts: list[str] = []
    if hv["root_path"]:
        parts.append(f"root={hv['root_path']}")
    if hv["serial_console"]:
        parts.append(f"console=ttyS0,{hv['serial_speed']}")
    if hv["kernel_args"]:
        parts.append(str(hv["kernel_args"]))
    return " ".join(parts)


def _boot_indexes(hv: Mapping[str, Any]) -> dict[str, int]:
    """The bootindex per device kind ("disk", "cdrom", "net"); empty with a kernel."""
    if hv["kernel_path"]:
        return {}
    order = hv["boot_order"]
    if order == "cdrom":
        return {"cdrom": 1, "disk": 2}
    if order == "network":
        return {"net": 1, "disk": 2}
    return {"disk": 1, "cdrom": 2}


class _PortAllocator:
    """Hands out pcie-root-ports on q35 (one per unpluggable device); no-op on pc."""

    def __init__(self, q35: bool, argv: list[str]) -> None:
        self.q35 = q35
        self.argv = argv
        self.chassis = 0

    def bus_for(self, device_id: str) -> list[str]:
        if not self.q35:
            return []
        self.chassis += 1
        port = f"{device_id}-port"
        self.argv += ["-device", f"pcie-root-port,id={port},chassis={self.chassis}"]
        return [f"bus={port}"]


def _disk_args(
    disk: AttachedDisk,
    hv: Mapping[str, Any],
    boot: dict[str, int],
    ports: _PortAllocator,
    argv: list[str],
) -> DiskRuntime:
    if disk.format not in ("raw", "qcow2"):
        raise _bad(f"disk {disk.index}: unsupported format {disk.format!r}", "format")
    if disk.mode not in ("rw", "ro"):
        raise _bad(f"disk {disk.index}: unsupported mode {disk.mode!r}", "mode")
    device_id, node, file_node = disk_ids(disk.index, disk.uuid)
    ro = "on" if disk.mode == "ro" else "off"
    # NOTE: block devices (LVM, DRBD, RBD maps) need the host_device protocol driver, files
    # the file driver; the path is the only hint a pure builder has.
    proto = "host_device" if disk.path.startswith("/dev/") else "file"
    file_opts = [
        f"driver={proto}",
        f"node-name={file_node}",
        f"filename={qemu_escape(disk.path)}",
        f"read-only={ro}",
    ]
    cache = hv["disk_cache"]
    if cache == "none":
        file_opts.append("cache.direct=on")
    if hv.get("disk_aio", "threads") != "threads":  # threads is QEMU's default
        file_opts.append(f"aio={hv['disk_aio']}")
    argv += ["-blockdev", ",".join(file_opts)]
    argv += [
        "-blockdev",
        f"driver={disk.format},node-name={node},file={file_node},read-only={ro}",
    ]
    model = DISK_MODELS[hv["disk_type"]]
    dev = [model, f"id={device_id}", f"drive={node}"]
    if model == "scsi-hd":
        dev.append("bus=scsi0.0")
    elif model == "virtio-blk-pci":
        dev += ports.bus_for(device_id)
    if cache == "writethrough":
        dev.append("write-cache=off")
    elif cache == "writeback":
        dev.append("write-cache=on")
    if disk.index == 0 and "disk" in boot:
        dev.append(f"bootindex={boot['disk']}")
    argv += ["-device", ",".join(dev)]
    return DiskRuntime(
        index=disk.index,
        uuid=disk.uuid,
        path=disk.path,
        format=disk.format,
        mode=disk.mode,
        node_name=node,
        file_node_name=file_node,
        device_id=device_id,
    )


def _nic_args(
    nic: NicSpec,
    hv: Mapping[str, Any],
    boot: dict[str, int],
    ports: _PortAllocator,
    argv: list[str],
    first: bool,
) -> NicRuntime:
    if nic.mode not in ("bridged", "routed"):
        raise _bad(
            f"NIC {nic.index}: mode {nic.mode!r} is not supported by the KVM driver "
            "(use bridged or routed)",
            "mode",
        )
    device_id, netdev_id = nic_ids(nic.index, nic.uuid)
    # A bridged NIC without a bridge gets no backend at all; routed NICs always get a tap
    # (the link then names a routing table, and the host routes to the tap).
    has_backend = bool(nic.link) or nic.mode == "routed"
    tap = tap_name(nic.index, nic.uuid) if has_backend else ""
    dev = [NIC_MODELS[hv["nic_type"]], f"id={device_id}", f"mac={nic.mac}"]
    if has_backend:
        argv += ["-netdev", f"tap,id={netdev_id},ifname={tap},script=no,downscript=no"]
        dev.append(f"netdev={netdev_id}")
    dev += ports.bus_for(device_id)
    if first and "net" in boot:
        dev.append(f"bootindex={boot['net']}")
    argv += ["-device", ",".join(dev)]
    return NicRuntime(
        index=nic.index,
        uuid=nic.uuid,
        mac=nic.mac,
        mode=nic.mode,
        link=nic.link,
        tap=tap,
        netdev_id=netdev_id if has_backend else "",
        device_id=device_id,
    )


def build_plan(
    spec: InstanceSpec,
    disks: Sequence[AttachedDisk],
    hv: Mapping[str, Any],
    host: HostFacts,
    layout: InstanceLayout,
) -> QemuPlan:
    """Generate the QEMU command line of an instance.

    Args:
        spec: the instance (memory, vCPUs, NICs, uuid).
        disks: its disks, attached on this node, in index order.
        hv: the *filled* KVM hvparams (every key of ``KVM_HVPARAMS`` present).
        host: QEMU binary, version, probed capabilities, the accelerator chosen for this
            start, and what the driver prepared (uid to run as, chroot, UEFI store).
        layout: where the sockets, pid file and logs go.

    Returns:
        The :class:`QemuPlan` (argv without ``-S``, plus disk and NIC records).

    Raises:
        HypervisorError: kind INVALID when the parameters contradict each other or the host
            facts (e.g. ``cpu_type=host`` under TCG, ``boot_order=cdrom`` without an image),
            naming the parameter in ``fields["param"]``.
    """
    caps = host.capabilities()
    if host.accel not in ("kvm", "tcg"):
        raise _bad(f"accelerator must be kvm or tcg, got {host.accel!r}", "accel")
    machine = caps.resolve_machine(str(hv["machine_version"]))
    if caps.machines.names and machine not in caps.machines.names:
        raise _bad(
            f"machine_version: {machine!r} is not a machine type of {caps.binary} "
            f"(QEMU {caps.version}; see '{caps.binary} -machine help')",
            "machine_version",
        )
    cpu = str(hv["cpu_type"])
    if cpu == "host" and host.accel != "kvm":
        raise _bad(
            "cpu_type=host needs the kvm accelerator, but this start uses tcg; "
            "set cpu_type to a model such as 'max' or leave it empty",
            "cpu_type",
        )
    if hv["boot_order"] == "cdrom" and not hv["kernel_path"] and not hv["cdrom_image_path"]:
        raise _bad("boot_order=cdrom needs cdrom_image_path", "boot_order")
    if hv["boot_order"] == "disk" and not hv["kernel_path"] and not disks:
        raise _bad("the instance has no kernel_path and no disk to boot from", "kernel_path")
    if disks:
        devices.require_device(caps, DISK_MODELS[hv["disk_type"]], "disk_type")
    if spec.nics:
        devices.require_device(caps, NIC_MODELS[hv["nic_type"]], "nic_type")
    fw_props, fw_argv = firmware_args(hv, host.nvram)
    if fw_props and not host.nvram:
        raise _bad("firmware=uefi needs the instance's UEFI variables store", "firmware")
    if fw_props and spec.memory < UEFI_MIN_MEMORY:
        raise _bad(
            f"firmware=uefi needs at least {UEFI_MIN_MEMORY} MiB of memory (OVMF crashes with "
            f"less); the instance has {spec.memory} MiB: raise its memory or use bios",
            "firmware",
        )
    if not caps.has_option("-display"):
        raise _bad(f"{caps.binary} (QEMU {caps.version}) has no -display option", "kvm_path")

    argv: list[str] = [
        host.qemu_binary,
        "-name",
        spec.name,
        "-uuid",
        spec.uuid,
        "-machine",
        ",".join([machine, f"accel={host.accel}", *fw_props]),
    ]
    if cpu:
        argv += ["-cpu", cpu]
    argv += ["-m", str(spec.memory), "-smp", devices.smp_arg(spec.vcpus, hv), "-nodefaults"]
    if caps.has_option("-no-user-config"):
        argv.append("-no-user-config")
    argv += ["-display", "none"]
    if caps.has_option("-msg"):
        argv += ["-msg", "timestamp=on"]
    argv += devices.vnc_args(hv, spec.network_port, layout.dir, caps)
    argv += devices.spice_args(hv, spec.network_port, layout.dir, caps)
    argv += [
        "-chardev",
        f"socket,id={QMP_CHARDEV},path={qemu_escape(layout.qmp_socket)},server=on,wait=off",
        "-mon",
        f"chardev={QMP_CHARDEV},mode=control",
    ]
    if hv["serial_console"]:
        argv += [
            "-chardev",
            f"socket,id={SERIAL_CHARDEV},path={qemu_escape(layout.serial_socket)},"
            f"server=on,wait=off,logfile={qemu_escape(layout.serial_log)},logappend=off",
            "-serial",
            f"chardev:{SERIAL_CHARDEV}",
        ]
    if hv["kernel_path"]:
        argv += ["-kernel", hv["kernel_path"]]
        if hv["initrd_path"]:
            argv += ["-initrd", hv["initrd_path"]]
        append = kernel_append(hv)
        if append:
            argv += ["-append", append]
    argv += fw_argv

    boot = _boot_indexes(hv)
    ports = _PortAllocator(is_q35(machine), argv)
    if devices.needs_scsi_controller(hv, bool(disks)):
        devices.require_device(caps, "virtio-scsi-pci", "disk_type")
        argv += ["-device", f"virtio-scsi-pci,id={devices.SCSI_CONTROLLER_ID}"]
    disk_records = [
        _disk_args(d, hv, boot, ports, argv) for d in sorted(disks, key=lambda d: d.index)
    ]
    argv += devices.cdrom_args(hv, boot.get("cdrom"), caps)
    nics = sorted(spec.nics, key=lambda n: n.index)
    nic_records = [_nic_args(n, hv, boot, ports, argv, first=(i == 0)) for i, n in enumerate(nics)]
    if ports.q35:
        argv += spare_port_args()  # empty ports for hot-added devices (kvm/pci.py)
    argv += devices.usb_args(hv, caps)
    argv += devices.sound_args(hv, caps)
    argv += ["-device", f"virtio-balloon-pci,id={BALLOON_ID}"]
    if hv["reboot_behavior"] == "exit":
        argv.append("-no-reboot")
    argv += process_args(caps, host.run_as, host.chroot)
    argv += ["-pidfile", layout.pidfile, "-daemonize"]
    argv += shlex.split(str(hv["kvm_extra"]))
    return QemuPlan(argv=argv, machine=machine, disks=disk_records, nics=nic_records)


def build_argv(
    spec: InstanceSpec,
    disks: Sequence[AttachedDisk],
    hv: Mapping[str, Any],
    host: HostFacts,
    layout: InstanceLayout,
    *,
    paused: bool = False,
) -> list[str]:
    """The argv that starts the instance; see :func:`build_plan` (same errors)."""
    return build_plan(spec, disks, hv, host, layout).launch_argv(paused=paused)


def argv_names_instance(cmdline: Sequence[str], name: str, uuid: str = "") -> bool:
    """Whether a process command line is the QEMU of instance ``name`` (and ``uuid``).

    Used to tell a live guest from an unrelated process that reused a stale pid.
    """
    args = list(cmdline)
    ok_name = any(
        a == "-name" and i + 1 < len(args) and args[i + 1] == name for i, a in enumerate(args)
    )
    if not ok_name:
        return False
    if uuid:
        return any(
            a == "-uuid" and i + 1 < len(args) and args[i + 1] == uuid for i, a in enumerate(args)
        )
    return True


# --- hot-added devices (kvm/hotplug.py) --------------------------------------------------------


class _FixedBus(_PortAllocator):
    """The placement hotplug chose (``bus=``/``addr=``) instead of a new root port."""

    def __init__(self, bus: Sequence[str]) -> None:
        super().__init__(False, [])
        self.bus = list(bus)

    def bus_for(self, device_id: str) -> list[str]:
        return list(self.bus)


def hotplug_disk_args(
    disk: AttachedDisk, hv: Mapping[str, Any], bus: Sequence[str]
) -> tuple[list[str], DiskRuntime]:
    """The ``-blockdev``/``-device`` arguments of a disk hot-added at ``bus``.

    Same generation as at start (so a replay of the argv gives the same device), with the
    placement given as option strings (``["bus=pci.0", "addr=0x5"]`` or ``["bus=hotplug0"]``)
    and no boot index.

    Raises:
        HypervisorError: kind INVALID for an unsupported format or mode.
    """
    argv: list[str] = []
    record = _disk_args(disk, hv, {}, _FixedBus(bus), argv)
    return argv, record


def hotplug_nic_args(
    nic: NicSpec, hv: Mapping[str, Any], bus: Sequence[str]
) -> tuple[list[str], NicRuntime]:
    """The ``-netdev``/``-device`` arguments of a NIC hot-added at ``bus``.

    See :func:`hotplug_disk_args`.

    Raises:
        HypervisorError: kind INVALID for an unsupported NIC mode.
    """
    argv: list[str] = []
    record = _nic_args(nic, hv, {}, _FixedBus(bus), argv, first=False)
    return argv, record

"""Hypervisor parameter schemas (syntax phase only; drivers do the node-side checks).

The schemas live here, in ``objects/``, because the master checks syntax without importing the
drivers. Each driver's ``validate_params`` does the environment phase on the node.
"""

from __future__ import annotations

import re
from typing import Any

from corral.objects.params.spec import (
    ParamSpec,
    Schema,
    as_bool,
    as_choice,
    as_float,
    as_int,
    as_path,
    as_str,
    in_range,
)

_SAFE_TEXT = re.compile(r"^[^\0\n]*$")


def _no_control(value: Any) -> str | None:
    if not _SAFE_TEXT.match(value):
        return "must not contain NUL or newline characters"
    return None


def _boot_order(value: Any) -> str | None:
    return None if value in ("disk", "cdrom", "network") else "must be disk, cdrom or network"


def _ip_or_empty(value: Any) -> str | None:
    import ipaddress

    if not value:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IP address, got {value!r}"
    return None


def _machine(value: Any) -> str | None:
    if value and not re.match(r"^[A-Za-z0-9._-]+$", value):
        return f"not a machine type: {value!r}"
    return None


def _cpu_type(value: Any) -> str | None:
    if value and not re.match(r"^[A-Za-z0-9._+,=-]+$", value):
        return f"not a CPU model: {value!r}"
    return None


def _required(value: Any) -> str | None:
    return None if value else "must not be empty"


KVM_HVPARAMS = Schema.of(
    "hvparams/kvm",
    [
        ParamSpec(
            name="kvm_path",
            coerce=as_path,
            default="/usr/bin/qemu-system-x86_64",
            check=_required,
            type_name="path",
            doc="The QEMU system emulator binary.",
        ),
        ParamSpec(
            name="kernel_path",
            coerce=as_path,
            default="/var/lib/corral/kernels/vmlinuz-kvmU",
            type_name="path",
            doc="Kernel to boot directly; empty to boot from the disk (or cdrom/network).",
        ),
        ParamSpec(
            name="initrd_path",
            coerce=as_path,
            default="/var/lib/corral/kernels/initrd-kvmU",
            type_name="path",
            doc="Initial ramdisk for direct kernel boot; empty for none.",
        ),
        ParamSpec(
            name="root_path",
            coerce=as_str,
            default="/dev/vda",
            check=_no_control,
            type_name="string",
            doc="Root device passed as root= on the kernel command line; empty to omit.",
        ),
        ParamSpec(
            name="kernel_args",
            coerce=as_str,
            default="ro",
            check=_no_control,
            type_name="string",
            doc="Extra kernel command line arguments.",
        ),
        ParamSpec(
            name="cdrom_image_path",
            coerce=as_path,
            default="",
            type_name="path",
            doc="ISO image attached read-only as an IDE cdrom; empty for none.",
        ),
        ParamSpec(
            name="boot_order",
            coerce=as_str,
            default="disk",
            check=_boot_order,
            type_name="choice",
            doc="Boot device when no kernel_path is set: disk, cdrom or network.",
        ),
        ParamSpec(
            name="serial_console",
            coerce=as_bool,
            default=True,
            type_name="bool",
            doc="Attach a serial console (UNIX socket + log file) and pass console=ttyS0.",
        ),
        ParamSpec(
            name="serial_speed",
            coerce=as_int,
            default=38400,
            check=in_range(300, 4000000),
            type_name="int",
            doc="Baud rate given to the guest kernel for the serial console.",
        ),
        ParamSpec(
            name="vnc_bind_address",
            coerce=as_str,
            default="",
            check=_ip_or_empty,
            type_name="ip",
            doc="Address the VNC server listens on; empty disables VNC. The display is the "
            "instance's network_port - 5900, or the first free one from 5900 when it has none.",
        ),
        ParamSpec(
            name="machine_version",
            coerce=as_str,
            default="pc",
            check=_machine,
            type_name="string",
            doc="QEMU machine type (pc, q35, or a versioned name such as pc-i440fx-7.2).",
        ),
        ParamSpec(
            name="cpu_type",
            coerce=as_str,
            default="",
            check=_cpu_type,
            type_name="string",
            doc="QEMU CPU model (-cpu); empty for QEMU's default. 'host' needs a usable KVM.",
        ),
        ParamSpec(
            name="accel",
            coerce=as_choice("auto", "kvm", "tcg"),
            default="auto",
            type_name="choice",
            doc="Accelerator: kvm, tcg (software emulation), or auto (kvm only when it can run "
            "ordinary guests, else tcg; the choice is logged and shown by instance info).",
        ),
        ParamSpec(
            name="disk_type",
            coerce=as_choice("paravirtual", "ide", "scsi"),
            default="paravirtual",
            type_name="choice",
            doc="Disk model: paravirtual (virtio-blk), ide or scsi.",
        ),
        ParamSpec(
            name="nic_type",
            coerce=as_choice("paravirtual", "e1000", "rtl8139"),
            default="paravirtual",
            type_name="choice",
            doc="NIC model: paravirtual (virtio-net), e1000 or rtl8139.",
        ),
        ParamSpec(
            name="disk_cache",
            coerce=as_choice("default", "none", "writethrough", "writeback"),
            default="default",
            type_name="choice",
            doc="Host cache of disks: default (QEMU's: writeback), none (O_DIRECT), "
            "writethrough or writeback (the guest-visible write cache).",
        ),
        ParamSpec(
            name="reboot_behavior",
            coerce=as_choice("reboot", "exit"),
            default="reboot",
            type_name="choice",
            doc="What a reset does: reboot in place, or exit (-no-reboot); with exit a hard "
            "reboot becomes a kill and a fresh start.",
        ),
        ParamSpec(
            name="shutdown_timeout",
            coerce=as_int,
            default=120,
            check=in_range(0, 86400),
            type_name="int",
            doc="Seconds a soft reboot waits for the guest's ACPI shutdown before QEMU is "
            "quit (stop takes its timeout from the request).",
        ),
        ParamSpec(
            name="kvm_extra",
            coerce=as_str,
            default="",
            check=_no_control,
            type_name="string",
            doc="Extra QEMU arguments, split on whitespace and appended last (expert use).",
        ),
    ],
)

FAKE_HVPARAMS = Schema.of(
    "hvparams/fake",
    [
        ParamSpec(
            name="boot_delay",
            coerce=as_float,
            default=0.0,
            check=in_range(0, 60),
            type_name="float",
            doc="Seconds the fake hypervisor pretends a start takes (for tests and benchmarks).",
        ),
    ],
)

#: Hypervisor name -> hvparams schema.
HV_SCHEMAS: dict[str, Schema] = {"kvm": KVM_HVPARAMS, "fake": FAKE_HVPARAMS}

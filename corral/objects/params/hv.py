"""Hypervisor parameter schemas (syntax phase only; drivers do the node-side checks).

The schemas live here, in ``objects/``, because the master checks syntax without importing the
drivers. Each driver's ``validate_params`` does the environment phase on the node.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from corral.objects.params.cpumask import cpu_mask_param
from corral.objects.params.hv_xen import XEN_SCHEMAS
from corral.objects.params.spec import (
    ParamSpec,
    Schema,
    as_float,
    as_int,
    as_path,
    as_str,
    choice_param,
    flag_param,
    in_range,
    ip_or_empty,
)

# NOTE: \Z, not $: "$" also matches before a trailing newline.
_SAFE_TEXT = re.compile(r"\A[^\0\n]*\Z")

#: Device models per ``disk_type`` / ``nic_type`` / ``cdrom_disk_type`` (QEMU ``-device`` names).
KVM_DISK_MODELS = {"paravirtual": "virtio-blk-pci", "scsi": "scsi-hd", "ide": "ide-hd"}
KVM_CDROM_MODELS = {"ide": "ide-cd", "scsi": "scsi-cd"}
KVM_NIC_MODELS = {
    "paravirtual": "virtio-net-pci",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "rtl8139",
    "i82551": "i82551",
    "i82557b": "i82557b",
    "i82559er": "i82559er",
    "pcnet": "pcnet",
    "ne2k_pci": "ne2k_pci",
}
#: ``soundhw`` -> the devices that make it (controller first, then codecs).
KVM_SOUND_MODELS = {
    "hda": ("intel-hda", "hda-duplex"),
    "ich9-hda": ("ich9-intel-hda", "hda-duplex"),
    "ac97": ("AC97",),
    "es1370": ("ES1370",),
}


def _no_control(value: Any) -> str | None:
    if not _SAFE_TEXT.match(value):
        return "must not contain NUL or newline characters"
    return None


def _machine(value: Any) -> str | None:
    if value and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", value):
        return (
            f"must be a QEMU machine type (pc, q35, pc-i440fx-7.2, pc-q35-7.2, ...: letters, "
            f"digits, '.', '_', '-') or empty for QEMU's default, got {value!r}"
        )
    return None


def _cpu_type(value: Any) -> str | None:
    # NOTE: commas are allowed on purpose: -cpu takes "model,+flag,-flag,prop=value".
    if value and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+,=-]*$", value):
        return (
            f"must be a QEMU CPU model with optional ,+flag/,-flag/,prop=value (letters, "
            f"digits, '.', '_', '+', '=', ',', '-'), got {value!r}"
        )
    return None


def _required(value: Any) -> str | None:
    return None if value else "must not be empty"


def as_image(raw: Any) -> str:
    """An absolute path, an ``http(s)://`` URL, or "" for none.

    Raises:
        ValueError: anything else (the reason names the accepted forms).
    """
    value = as_str(raw)
    if not value:
        return value
    if "\0" in value or "\n" in value or any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace, NUL or newline characters")
    if value.startswith("/"):
        return value
    if re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        return value
    raise ValueError(
        f"must be an absolute path or an http:// or https:// URL (or empty), got {value!r}"
    )


def is_url(value: str) -> bool:
    """Whether an image parameter value is a URL (not a local path)."""
    return value.startswith(("http://", "https://"))


def _keymap(value: Any) -> str | None:
    if value and not re.match(r"^[a-z]{2,4}(-[a-z]{2,8})*$", value):
        return f"must be a QEMU keymap name such as en-us, de, fr-ch (or empty), got {value!r}"
    return None


_USB_DEVICE = re.compile(r"^usb-[a-z0-9][a-z0-9-]*$")


def usb_device_list(value: str) -> list[str]:
    """The USB device models in a ``usb_devices`` value (comma or space separated)."""
    return [item for item in re.split(r"[,\s]+", value) if item]


def _usb_devices(value: Any) -> str | None:
    bad = [item for item in usb_device_list(value) if not _USB_DEVICE.match(item)]
    if bad:
        return (
            f"must be QEMU USB device models (usb-tablet, usb-kbd, usb-mouse, ...) separated "
            f"by commas; not USB models: {', '.join(repr(b) for b in bad)}"
        )
    return None


def _shlex(value: Any) -> str | None:
    if not _SAFE_TEXT.match(value):
        return "must not contain NUL or newline characters"
    try:
        shlex.split(value)
    except ValueError as exc:
        return f"must split into words like a shell line (quotes balanced): {exc}"
    return None


def _user_name(value: Any) -> str | None:
    if value and not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", value):
        return f"must be a user name (lowercase letters, digits, '_', '-'), got {value!r}"
    return None


def _tls_ciphers(value: Any) -> str | None:
    if value and not re.match(r"^[A-Za-z0-9:+!@._=-]+$", value):
        return f"must be an OpenSSL cipher list (no commas or spaces), got {value!r}"
    return None


def _one_of_ints(*allowed: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in allowed:
            return f"must be one of {', '.join(str(a) for a in allowed)}; got {value}"
        return None

    return check


def _path(name: str, default: str, doc: str) -> ParamSpec:
    return ParamSpec(name=name, coerce=as_path, default=default, type_name="path", doc=doc)


KVM_HVPARAMS = Schema.of(
    "hvparams/kvm",
    [
        # --- binary, boot -----------------------------------------------------------------
        ParamSpec(
            name="kvm_path",
            coerce=as_path,
            default="/usr/bin/qemu-system-x86_64",
            check=_required,
            type_name="path",
            doc="The QEMU system emulator binary (QEMU 4.2 or newer; its options, machine "
            "types and devices are probed once per node).",
        ),
        _path(
            "kernel_path",
            "/var/lib/corral/kernels/vmlinuz-kvmU",
            "Kernel to boot directly; empty to boot from the disk (or cdrom/network).",
        ),
        _path(
            "initrd_path",
            "/var/lib/corral/kernels/initrd-kvmU",
            "Initial ramdisk for direct kernel boot; empty for none.",
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
        choice_param(
            "boot_order",
            ("disk", "cdrom", "network"),
            "disk",
            "Boot device when no kernel_path is set (bootindex on the devices); cdrom needs "
            "cdrom_image_path.",
        ),
        ParamSpec(
            name="cdrom_image_path",
            coerce=as_image,
            default="",
            type_name="path or url",
            doc="Image of the first cdrom (read-only): an absolute path or an http(s):// URL "
            "(read through QEMU's curl block driver, refused when the installed QEMU has "
            "none); empty for no cdrom.",
        ),
        ParamSpec(
            name="cdrom2_image_path",
            coerce=as_image,
            default="",
            type_name="path or url",
            doc="Image of a second cdrom, as cdrom_image_path (never booted from).",
        ),
        choice_param(
            "cdrom_disk_type",
            ("ide", "scsi"),
            "ide",
            "Cdrom model: ide (ide-cd) or scsi (scsi-cd on a virtio-scsi-pci controller).",
        ),
        choice_param(
            "firmware",
            ("bios", "uefi"),
            "bios",
            "Guest firmware: bios (SeaBIOS) or uefi (OVMF, at least 192 MiB of memory, with a "
            "per-instance copy of the variables store, kvm-nvram/UUID.fd in the node's data "
            "directory).",
        ),
        _path(
            "ovmf_code_path",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "OVMF firmware code (read-only pflash) for firmware=uefi (Debian package ovmf).",
        ),
        _path(
            "ovmf_vars_template",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
            "OVMF variables template copied once per instance for firmware=uefi; must match "
            "ovmf_code_path (both 4M or both 2M).",
        ),
        # --- machine, CPU -----------------------------------------------------------------
        ParamSpec(
            name="machine_version",
            coerce=as_str,
            default="",
            check=_machine,
            type_name="string",
            doc="QEMU machine type: pc, q35, or a versioned name such as pc-i440fx-7.2 or "
            "pc-q35-7.2; empty for the installed QEMU's default machine. Aliases are "
            "resolved at start and the concrete name is recorded (for migration).",
        ),
        ParamSpec(
            name="cpu_type",
            coerce=as_str,
            default="",
            check=_cpu_type,
            type_name="string",
            doc="QEMU CPU model (-cpu, flags allowed: max,+vmx); empty for QEMU's default. "
            "'host' needs a usable KVM.",
        ),
        choice_param(
            "accel",
            ("auto", "kvm", "tcg"),
            "auto",
            "Accelerator: kvm, tcg (software emulation), or auto (kvm only when it can run "
            "ordinary guests, else tcg; the choice is logged and shown by instance info).",
        ),
        ParamSpec(
            name="cpu_sockets",
            coerce=as_int,
            default=0,
            check=in_range(0, 256),
            type_name="int",
            doc="CPU sockets of the -smp topology; 0 = computed from the others (QEMU's "
            "default: one socket per vCPU when nothing is set). With sockets, cores and "
            "threads all set their product must equal the instance's vcpus.",
        ),
        ParamSpec(
            name="cpu_cores",
            coerce=as_int,
            default=0,
            check=in_range(0, 256),
            type_name="int",
            doc="Cores per socket of the -smp topology; 0 = computed (see cpu_sockets).",
        ),
        ParamSpec(
            name="cpu_threads",
            coerce=as_int,
            default=0,
            check=in_range(0, 16),
            type_name="int",
            doc="Threads per core of the -smp topology; 0 = computed (see cpu_sockets).",
        ),
        cpu_mask_param(
            "CPU pinning in Ganeti's syntax: 'all' (no pinning), one CPU list for the "
            "whole guest ('0-2,4'), or one per vCPU separated by ':' ('0-2,4:all:1,3')."
        ),
        # --- disks, NICs ------------------------------------------------------------------
        choice_param(
            "disk_type",
            tuple(KVM_DISK_MODELS),
            "paravirtual",
            "Disk model: paravirtual (virtio-blk-pci), scsi (scsi-hd on a virtio-scsi-pci "
            "controller) or ide (ide-hd).",
        ),
        choice_param(
            "disk_cache",
            ("default", "none", "writethrough", "writeback"),
            "default",
            "Host cache of disks: default (QEMU's: writeback), none (O_DIRECT), "
            "writethrough or writeback (the guest-visible write cache).",
        ),
        choice_param(
            "disk_aio",
            ("threads", "native", "io_uring"),
            "threads",
            "Disk I/O backend: threads (a thread pool), native (Linux AIO, needs "
            "disk_cache=none) or io_uring (QEMU built with it).",
        ),
        choice_param(
            "nic_type",
            tuple(KVM_NIC_MODELS),
            "paravirtual",
            "NIC model: paravirtual (virtio-net-pci) or an emulated card.",
        ),
        # --- consoles ---------------------------------------------------------------------
        flag_param(
            "serial_console",
            True,
            "Attach a serial console (UNIX socket + log file) and pass console=ttyS0.",
        ),
        ParamSpec(
            name="serial_speed",
            coerce=as_int,
            default=38400,
            check=_one_of_ints(
                300, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600
            ),
            type_name="int",
            doc="Baud rate given to the guest kernel for the serial console.",
        ),
        ParamSpec(
            name="vnc_bind_address",
            coerce=as_str,
            default="",
            check=ip_or_empty,
            type_name="ip",
            doc="Address the VNC server listens on; empty disables VNC. The display is the "
            "instance's network_port - 5900 (ports come from the cluster's pool from 11000), "
            "or the first free one from 5900 when it has none.",
        ),
        _path(
            "vnc_password_file",
            "",
            "File whose first line is the VNC password (VNC uses at most 8 characters); "
            "given to QEMU as a secret object (QEMU 7.0+), never on the command line.",
        ),
        flag_param("vnc_tls", False, "Encrypt VNC with TLS (needs vnc_x509_path)."),
        _path(
            "vnc_x509_path",
            "",
            "Directory with ca-cert.pem, server-cert.pem and server-key.pem for vnc_tls.",
        ),
        flag_param(
            "vnc_x509_verify",
            False,
            "Require VNC clients to present a certificate signed by the CA of vnc_x509_path.",
        ),
        ParamSpec(
            name="keymap",
            coerce=as_str,
            default="",
            check=_keymap,
            type_name="string",
            doc="Keyboard layout of the VNC console (-k, e.g. en-us, de); empty for none. "
            "Must exist in QEMU's keymaps directory.",
        ),
        ParamSpec(
            name="spice_bind",
            coerce=as_str,
            default="",
            check=ip_or_empty,
            type_name="ip",
            doc="Address the SPICE server listens on (port: the instance's network_port); "
            "empty disables SPICE. Cannot be combined with vnc_bind_address. Refused when "
            "the installed QEMU has no SPICE.",
        ),
        ParamSpec(
            name="spice_ip_version",
            coerce=as_int,
            default=0,
            check=_one_of_ints(0, 4, 6),
            type_name="int",
            doc="IP version SPICE listens with: 0 (as the address says), 4 or 6.",
        ),
        _path(
            "spice_password_file",
            "",
            "File whose first line is the SPICE password (QEMU 7.0+); empty for no password.",
        ),
        flag_param(
            "spice_use_tls", False, "Offer SPICE over TLS on the port (needs spice_x509_path)."
        ),
        _path(
            "spice_x509_path",
            "",
            "Directory with ca-cert.pem, server-cert.pem and server-key.pem for spice_use_tls.",
        ),
        ParamSpec(
            name="spice_tls_ciphers",
            coerce=as_str,
            default="HIGH:-DES:-3DES:-EXPORT:-ADH",
            check=_tls_ciphers,
            type_name="string",
            doc="OpenSSL cipher list for SPICE TLS.",
        ),
        choice_param(
            "spice_image_compression",
            ("", "auto_glz", "auto_lz", "quic", "glz", "lz", "off"),
            "",
            "SPICE image compression; empty for QEMU's default.",
        ),
        choice_param(
            "spice_jpeg_wan_compression",
            ("", "auto", "never", "always"),
            "",
            "SPICE JPEG compression over WAN; empty for QEMU's default.",
        ),
        choice_param(
            "spice_zlib_glz_wan_compression",
            ("", "auto", "never", "always"),
            "",
            "SPICE zlib-glz compression over WAN; empty for QEMU's default.",
        ),
        choice_param(
            "spice_streaming_video",
            ("", "off", "all", "filter"),
            "",
            "SPICE video streaming detection; empty for QEMU's default.",
        ),
        flag_param("spice_playback_compression", True, "Compress SPICE audio playback (CELT)."),
        flag_param(
            "spice_use_vdagent",
            True,
            "Give the guest a SPICE agent channel (virtio-serial port com.redhat.spice.0).",
        ),
        # --- other devices ----------------------------------------------------------------
        ParamSpec(
            name="usb_devices",
            coerce=as_str,
            default="",
            check=_usb_devices,
            type_name="list",
            doc="USB devices given to the guest on a qemu-xhci controller, comma separated "
            "QEMU models (usb-tablet, usb-kbd, usb-mouse); empty for no USB controller.",
        ),
        choice_param(
            "soundhw",
            ("", *KVM_SOUND_MODELS),
            "",
            "Sound card: hda (intel-hda + hda-duplex), ich9-hda, ac97 or es1370, with a "
            "silent host backend (-audiodev none); empty for none.",
        ),
        # --- lifecycle --------------------------------------------------------------------
        choice_param(
            "reboot_behavior",
            ("reboot", "exit"),
            "reboot",
            "What a reset does: reboot in place, or exit (-no-reboot); with exit a hard "
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
        # --- migration --------------------------------------------------------------------
        ParamSpec(
            name="migration_bandwidth",
            coerce=as_int,
            default=128,
            check=in_range(1, 100000),
            type_name="int",
            doc="Maximum migration bandwidth in MiB/s (QEMU's own default is 128).",
        ),
        ParamSpec(
            name="migration_downtime",
            coerce=as_int,
            default=300,
            check=in_range(1, 600000),
            type_name="int",
            doc="Maximum downtime of a live migration in milliseconds (QEMU's default 300).",
        ),
        ParamSpec(
            name="migration_port",
            coerce=as_int,
            default=8102,
            check=in_range(1, 65535),
            type_name="int",
            doc="TCP port a migration destination listens on (Ganeti's default 8102).",
        ),
        # --- security ---------------------------------------------------------------------
        choice_param(
            "security_model",
            ("none", "user", "pool"),
            "none",
            "Who QEMU runs as after it started: none (root), user (the security_domain "
            "user) or pool (a uid of the pool file kvm-uid-pool in the node's data directory, "
            "never shared by two running guests).",
        ),
        ParamSpec(
            name="security_domain",
            coerce=as_str,
            default="",
            check=_user_name,
            type_name="string",
            doc="The user QEMU runs as with security_model=user (must exist, not root).",
        ),
        flag_param(
            "use_chroot",
            False,
            "Run QEMU chrooted into an empty per-instance directory (after it opened its files).",
        ),
        _path(
            "chroot_dir",
            "",
            "Parent of the per-instance chroot directories (CHROOT_DIR/INSTANCE, created "
            "empty); empty for a chroot directory inside the instance's run directory.",
        ),
        # --- expert -----------------------------------------------------------------------
        ParamSpec(
            name="kvm_extra",
            coerce=as_str,
            default="",
            check=_shlex,
            type_name="string",
            doc="Extra QEMU arguments appended last (expert use), split like a shell line "
            "(quotes group words; no variables or globs). Nothing checks them.",
        ),
    ],
)


def kvm_combination_problems(hv: Mapping[str, Any]) -> dict[str, str]:
    """Problems between keys of *filled* KVM hvparams (syntax phase, no I/O), by key."""
    problems: dict[str, str] = {}
    if hv["disk_aio"] == "native" and hv["disk_cache"] != "none":
        problems["disk_aio"] = (
            "native needs disk_cache=none (Linux AIO only works with O_DIRECT); "
            f"disk_cache is {hv['disk_cache']!r}: use disk_aio threads or io_uring instead"
        )
    if hv["boot_order"] == "cdrom" and not hv["kernel_path"] and not hv["cdrom_image_path"]:
        problems["boot_order"] = "cdrom needs cdrom_image_path (or choose disk or network)"
    if hv["vnc_bind_address"] and hv["spice_bind"]:
        problems["spice_bind"] = (
            "cannot be combined with vnc_bind_address (both would use the instance's "
            "network_port): choose VNC or SPICE"
        )
    if hv["vnc_tls"] and not hv["vnc_x509_path"]:
        problems["vnc_tls"] = "needs vnc_x509_path (the certificates directory)"
    if hv["vnc_x509_verify"] and not hv["vnc_tls"]:
        problems["vnc_x509_verify"] = "needs vnc_tls=true"
    if hv["spice_use_tls"] and not hv["spice_x509_path"]:
        problems["spice_use_tls"] = "needs spice_x509_path (the certificates directory)"
    if hv["spice_bind"] and hv["spice_ip_version"]:
        family = ipaddress.ip_address(hv["spice_bind"]).version
        if family != hv["spice_ip_version"]:
            problems["spice_ip_version"] = (
                f"{hv['spice_ip_version']} does not match spice_bind {hv['spice_bind']} "
                f"(an IPv{family} address); use 0 or {family}"
            )
    model, domain = hv["security_model"], hv["security_domain"]
    if model == "user" and not domain:
        problems["security_domain"] = "security_model=user needs a user name here"
    elif model != "user" and domain:
        problems["security_domain"] = (
            f"only used with security_model=user (it is {model!r}); leave it empty"
        )
    return problems


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
        cpu_mask_param(
            "CPU pinning in Ganeti's syntax, checked and recorded like KVM's (nothing is pinned)."
        ),
    ],
)

# --- LXC (issue 5; the driver is corral/hypervisor/lxc/) -------------------------------------

#: Devices a container may use (Ganeti's list): null, zero, full, random, urandom, tty,
#: console, ptmx and the pts terminals.
LXC_DEFAULT_DEVICES = (
    "c 1:3 rw,c 1:5 rw,c 1:7 rw,c 1:8 rw,c 1:9 rw,c 5:0 rw,c 5:1 rw,c 5:2 rw,c 136:* rw"
)
#: Capabilities dropped from every container unless lxc_drop_capabilities says otherwise.
LXC_DEFAULT_DROP_CAPS = "mac_override,sys_boot,sys_module,sys_time"

_LXC_DEVICE = re.compile(r"^[abc] (\d+|\*):(\d+|\*) [rwm]{1,3}$")
_LXC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_LXC_CGROUP_KEY = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9_.]+$")
_LXC_CONF_KEY = re.compile(r"^lxc\.[a-z0-9_.]+$")


def lxc_list(value: str, sep: str = ",") -> list[str]:
    """The non-empty, stripped items of an LXC list parameter."""
    return [item.strip() for item in value.split(sep) if item.strip()]


def lxc_pairs(value: str) -> list[tuple[str, str]]:
    """``key=value`` items separated by ``;`` (lxc_extra_cgroups, lxc_extra_config).

    Raises:
        ValueError: an item without ``=`` (the reason names it).
    """
    pairs = []
    for item in lxc_list(value, ";"):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{item!r} is not key=value")
        pairs.append((key.strip(), val.strip()))
    return pairs


def _lxc_devices(value: Any) -> str | None:
    if not _SAFE_TEXT.match(value):
        return "must not contain NUL or newline characters"
    bad = [d for d in lxc_list(value) if not _LXC_DEVICE.match(d)]
    if bad:
        return (
            "must be devices 'TYPE MAJOR:MINOR ACCESS' separated by commas (TYPE a, b or c; "
            "MAJOR/MINOR a number or *; ACCESS of r, w, m), e.g. 'c 1:3 rw,c 136:* rw'; bad: "
            + ", ".join(repr(b) for b in bad)
        )
    return None


def _lxc_names(what: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        bad = [n for n in lxc_list(value) if not _LXC_NAME.match(n)]
        if bad:
            return f"must be {what} separated by commas; bad: {', '.join(repr(b) for b in bad)}"
        return None

    return check


def _lxc_pairs_check(key_re: re.Pattern[str], example: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not _SAFE_TEXT.match(value):
            return "must not contain NUL or newline characters"
        try:
            pairs = lxc_pairs(value)
        except ValueError as exc:
            return f"must be key=value items separated by ';' (e.g. {example!r}): {exc}"
        bad = [k for k, _ in pairs if not key_re.match(k)]
        if bad:
            return f"bad key(s) {', '.join(repr(b) for b in bad)} (e.g. {example!r})"
        return None

    return check


LXC_HVPARAMS = Schema.of(
    "hvparams/lxc",
    [
        cpu_mask_param(
            "CPUs the container may run on (its cpuset), in Ganeti's syntax; per-vCPU masks "
            "('0:1') are joined, since a container has no vCPUs of its own. Changed live by "
            "instance modify / pinning."
        ),
        ParamSpec(
            name="lxc_cgroup_use",
            coerce=as_str,
            default="",
            check=_lxc_names("cgroup controller names (memory, cpuset, ...)"),
            type_name="string",
            doc="Comma-separated cgroup controllers that must be available on the node for "
            "the container to start (memory and cpuset are always needed).",
        ),
        ParamSpec(
            name="lxc_devices",
            coerce=as_str,
            default=LXC_DEFAULT_DEVICES,
            check=_lxc_devices,
            type_name="string",
            doc="Devices the container may use (the devices cgroup allow list; everything "
            "else is denied): comma-separated 'TYPE MAJOR:MINOR ACCESS' entries.",
        ),
        ParamSpec(
            name="lxc_drop_capabilities",
            coerce=as_str,
            default=LXC_DEFAULT_DROP_CAPS,
            check=_lxc_names("capability names without the cap_ prefix (sys_module, ...)"),
            type_name="string",
            doc="Comma-separated capabilities dropped from the container (lxc.cap.drop).",
        ),
        ParamSpec(
            name="lxc_extra_cgroups",
            coerce=as_str,
            default="",
            check=_lxc_pairs_check(_LXC_CGROUP_KEY, "memory.swappiness=10;pids.max=500"),
            type_name="string",
            doc="Extra cgroup settings 'controller.key=value', separated by ';' (written as "
            "lxc.cgroup.* or lxc.cgroup2.* depending on where the controller is mounted).",
        ),
        ParamSpec(
            name="lxc_extra_config",
            coerce=as_str,
            default="",
            check=_lxc_pairs_check(_LXC_CONF_KEY, "lxc.environment=FOO=1;lxc.tty.max=2"),
            type_name="string",
            doc="Extra lxc.conf lines 'lxc.key=value', separated by ';', appended after "
            "Corral's own lines (LXC itself rejects unknown keys when the container starts).",
        ),
        ParamSpec(
            name="lxc_startup_timeout",
            coerce=as_int,
            default=30,
            check=in_range(1, 3600),
            type_name="int",
            doc="Seconds the container may take to reach RUNNING after lxc-start.",
        ),
        ParamSpec(
            name="lxc_tty",
            coerce=as_int,
            default=6,
            check=in_range(0, 64),
            type_name="int",
            doc="Number of ttys (lxc.tty.max) created in the container besides its console.",
        ),
    ],
)

#: Hypervisor name -> hvparams schema.
HV_SCHEMAS: dict[str, Schema] = {
    "kvm": KVM_HVPARAMS,
    "fake": FAKE_HVPARAMS,
    "lxc": LXC_HVPARAMS,
    **XEN_SCHEMAS,
}

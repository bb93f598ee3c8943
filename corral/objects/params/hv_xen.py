"""Xen hypervisor parameter schemas, ``xen-pvm`` and ``xen-hvm`` (syntax phase only).

Names, types and defaults follow Ganeti 2.16 so existing cluster and instance hvparams carry
over unchanged. Every value that ends up in an ``xl`` config file is checked here so that it
cannot break the file: no newline, carriage return, NUL or double quote, and the structured
values (``cpuid``, ``pci_pass``, ``boot_order``, ``soundhw``, ``vif_script``) are held to
their xl syntax. The config builder (:mod:`corral.hypervisor.xen.xlconf`) re-checks with the
same functions, so a value that passes here is one the builder can write.

Checks that need two keys at once (``use_bootloader`` needs ``bootloader_path``, a PV guest
needs a kernel or a bootloader) are in :func:`xen_combination_problems`; checks that need the
node (files exist, bridges exist) belong to the driver's ``validate_params``.

NOTE: this module imports only ``spec`` and ``cpumask``, never ``params.hv``: ``hv`` imports
this module to register the schemas in ``HV_SCHEMAS``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from corral.objects.params.cpumask import cpu_mask_param
from corral.objects.params.spec import (
    ParamSpec,
    Schema,
    as_int,
    as_path,
    as_str,
    choice_param,
    flag_param,
    in_range,
    ip_or_empty,
)

#: The hypervisor names (Ganeti's ``xen-pvm`` / ``xen-hvm``).
XEN_PVM = "xen-pvm"
XEN_HVM = "xen-hvm"

#: NIC models of HVM guests (``paravirtual`` = a Xen PV NIC only, no emulated card).
XEN_NIC_TYPES = (
    "rtl8139",
    "ne2k_pci",
    "ne2k_isa",
    "i82551",
    "i82557b",
    "i82559er",
    "pcnet",
    "e1000",
    "paravirtual",
)
#: Block device name prefixes xl knows (xen-vbd-interface(7)).
XEN_BLOCKDEV_PREFIXES = ("sd", "xvd", "hd")

# NOTE: \Z, not $: "$" also matches before a trailing newline.
_UNSAFE = re.compile(r'["\n\r\0]')
_BOOT_ORDER = re.compile(r"\A[acdn]{1,4}\Z")
_SOUNDHW = re.compile(r"\A(all|[a-z0-9][a-z0-9_-]*(,[a-z0-9][a-z0-9_-]*)*)\Z")
_SCRIPT = re.compile(r"\A[A-Za-z0-9_./-]+\Z")
_CPUID_LIBXL = re.compile(r"\Ahost(,[a-z0-9][a-z0-9_-]*=[0-9A-Za-z]+)*\Z")
_CPUID_LEAF = r"(0x[0-9a-fA-F]+|[0-9]+)"
_CPUID_REG = r"e[abcd]x=[01xks]{32}"
_CPUID_XEND_ITEM = re.compile(rf"\A{_CPUID_LEAF}(,{_CPUID_LEAF})?:{_CPUID_REG}(,{_CPUID_REG})*\Z")
_CPUID_XEND_LIST = re.compile(r"""\A\[\s*(("[^"]*"|'[^']*')\s*(,\s*("[^"]*"|'[^']*')\s*)*)?\]\Z""")
_CPUID_XEND_QUOTED = re.compile(r"""("[^"]*"|'[^']*')""")
_PCI = re.compile(
    r"\A([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7*](@[0-9a-fA-F]{1,2})?"
    r"(,[a-z_]+=[A-Za-z0-9_]+)*\Z"
)


def config_text_problem(value: str) -> str | None:
    """Why ``value`` cannot be written inside a quoted xl config string (None: it can).

    xl reads ``"..."`` strings with C-style escapes; a backslash is escaped by the builder,
    but a double quote or a line break would end the string or the line, so both are refused.
    """
    if _UNSAFE.search(value):
        return "must not contain double quotes, newlines or NUL characters (xl config syntax)"
    return None


def _config_text(value: Any) -> str | None:
    return config_text_problem(value)


def _config_path(value: Any) -> str | None:
    return config_text_problem(value)


def legacy_disk_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be the target of an old-style ``prefix:path,vdev,mode`` disk entry.

    That syntax splits on commas, may read colons as separators, reads an item with ``=`` as
    ``key=value``, and ignores whitespace around items (xl-disk-configuration(5)); a target
    that is not absolute gets ``/dev/`` prepended.
    """
    problem = config_text_problem(path)
    if problem:
        return problem
    if not path.startswith("/"):
        return "must be an absolute path"
    if any(c in path for c in ",:=") or any(c.isspace() for c in path):
        return "must not contain ',', ':', '=' or whitespace (xl's disk syntax splits on them)"
    return None


def _image_path(value: Any) -> str | None:
    return legacy_disk_path_problem(value) if value else None


def _root_path(value: Any) -> str | None:
    problem = config_text_problem(value)
    if problem:
        return problem
    if any(c.isspace() for c in value):
        return "must be one word (it becomes root=<value> on the kernel command line)"
    return None


def bootloader_arg_list(value: str) -> list[str]:
    """The words of ``bootloader_args``, split like a shell line (quotes group words).

    Raises:
        ValueError: unbalanced quotes (the reason says so).
    """
    return shlex.split(value)


def _bootloader_args(value: Any) -> str | None:
    if "\n" in value or "\r" in value or "\0" in value:
        return "must not contain newlines or NUL characters"
    try:
        words = bootloader_arg_list(value)
    except ValueError as exc:
        return f"must split into words like a shell line (quotes balanced): {exc}"
    if any('"' in word for word in words):
        return "no argument may contain a double quote once split (xl config syntax)"
    return None


def cpuid_problem(value: str) -> str | None:
    """Why ``value`` is not a ``cpuid`` setting xl accepts (None: it is, or it is empty).

    Two shapes (xl.cfg(5)): a LIBXL string ``host,tm=0,sse3=0``, or an XEND list such as
    ``["1:ecx=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0,edx=xx0xxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]`` (leaf
    ``N`` or ``N,SUBLEAF``, decimal or ``0x`` hex; registers eax..edx with 32 of ``01xks``).
    The XEND list goes into the file as written, so it is checked item by item.
    """
    if not value:
        return None
    if "\n" in value or "\r" in value or "\0" in value:
        return "must not contain newlines or NUL characters"
    text = value.strip()
    if text.startswith("["):
        if not _CPUID_XEND_LIST.match(text):
            return (
                "an XEND-style cpuid must be a list of quoted strings, e.g. "
                '["1:ecx=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"]'
            )
        items = [q[1:-1] for q in _CPUID_XEND_QUOTED.findall(text)]
        if not items:
            return "an XEND-style cpuid list must not be empty"
        bad = [item for item in items if not _CPUID_XEND_ITEM.match(item)]
        if bad:
            return (
                "XEND cpuid items are 'LEAF[,SUBLEAF]:REG=BITS[,REG=BITS...]' with REG "
                "eax/ebx/ecx/edx and 32 of 0,1,x,k,s; bad: " + ", ".join(repr(b) for b in bad)
            )
        return None
    if not _CPUID_LIBXL.match(text):
        return (
            "must be a LIBXL string 'host,KEY=VALUE,...' (e.g. 'host,tm=0,sse3=0') or an "
            'XEND list (e.g. ["1:ecx=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"])'
        )
    return None


def _cpuid(value: Any) -> str | None:
    return cpuid_problem(value)


def pci_devices(value: str) -> list[str]:
    """The PCI devices of ``pci_pass``: items separated by ``;`` (Ganeti's separator)."""
    return [item.strip() for item in value.split(";") if item.strip()]


def _pci_pass(value: Any) -> str | None:
    bad = [item for item in pci_devices(value) if not _PCI.match(item)]
    if bad:
        return (
            "must be PCI devices '[DOMAIN:]BUS:DEV.FUNC[@VSLOT][,key=value...]' separated "
            "by ';' (e.g. '0000:03:00.0;0000:04:00.1'); bad: " + ", ".join(repr(b) for b in bad)
        )
    return None


def _boot_order(value: Any) -> str | None:
    if not _BOOT_ORDER.match(value) or len(set(value)) != len(value):
        return (
            f"must be 1-4 different boot device letters: c (disk), d (cdrom), n (network), "
            f"a (floppy), e.g. 'cd'; got {value!r}"
        )
    return None


def _soundhw(value: Any) -> str | None:
    if value and not _SOUNDHW.match(value):
        return (
            f"must be a sound card model of the device model (hda, ac97, es1370, sb16, ...), "
            f"a comma-separated list of them, 'all', or empty; got {value!r}"
        )
    return None


def _vif_script(value: Any) -> str | None:
    if value and not _SCRIPT.match(value):
        return (
            f"must be a script name in /etc/xen/scripts (vif-bridge, vif-route, ...) or an "
            f"absolute path (letters, digits, '_', '.', '/', '-'); got {value!r}"
        )
    return None


def as_xen_cmd(raw: Any) -> str:
    """The toolstack command: only ``xl``.

    Raises:
        ValueError: ``xm`` (the xm/xend toolstack was removed from Xen in 4.5) or anything else.
    """
    value = as_str(raw)
    if value == "xm":
        raise ValueError(
            "'xm' is not supported: the xm/xend toolstack was removed from Xen (4.5); "
            "Corral drives Xen through 'xl' only"
        )
    if value != "xl":
        raise ValueError(f"must be 'xl' (the only toolstack Corral supports); got {value!r}")
    return value


# --- spec builders -------------------------------------------------------------------------


def _path(name: str, default: str, doc: str) -> ParamSpec:
    return ParamSpec(
        name=name,
        coerce=as_path,
        default=default,
        check=_config_path,
        type_name="path",
        doc=doc,
    )


def _text(name: str, default: str, doc: str, check: Any = _config_text) -> ParamSpec:
    return ParamSpec(
        name=name, coerce=as_str, default=default, check=check, type_name="string", doc=doc
    )


def _common(*, migration_mode: str, blockdev_prefix: str) -> list[ParamSpec]:
    """The keys both Xen hypervisors have."""
    return [
        ParamSpec(
            name="migration_port",
            coerce=as_int,
            default=8002,
            check=in_range(1, 65535),
            type_name="int",
            doc="TCP port the destination node listens on for an incoming migration "
            "(Ganeti's default 8002).",
        ),
        choice_param(
            "migration_mode",
            ("live", "non-live"),
            migration_mode,
            "Default migration mode: live (the guest keeps running while its memory is "
            "copied) or non-live (paused for the whole copy).",
        ),
        choice_param(
            "blockdev_prefix",
            XEN_BLOCKDEV_PREFIXES,
            blockdev_prefix,
            "Device name prefix of the disks: disk N is <prefix><letter N> (a, b, c, ...).",
        ),
        choice_param(
            "reboot_behavior",
            ("reboot", "exit"),
            "reboot",
            "What a guest's own reboot does: reboot (on_reboot=restart) or exit "
            "(on_reboot=destroy, the instance stops).",
        ),
        cpu_mask_param(
            "CPU pinning in Ganeti's syntax: 'all' (no pinning), one CPU list for the "
            "whole guest ('0-2,4'), or one per vCPU separated by ':' ('0-2,4:all:1,3'); "
            "written as xl's cpus=."
        ),
        ParamSpec(
            name="cpu_cap",
            coerce=as_int,
            default=0,
            check=in_range(0, 65535),
            type_name="int",
            doc="Most CPU the guest may use, in percent of one physical CPU (100 = one CPU, "
            "up to 100 x vCPUs is meaningful); 0 = no cap. Written as xl's cap=.",
        ),
        ParamSpec(
            name="cpu_weight",
            coerce=as_int,
            default=256,
            check=in_range(1, 65535),
            type_name="int",
            doc="Relative CPU share on a contended node (512 gets twice as much as 256); "
            "written as xl's cpu_weight=.",
        ),
        _text(
            "cpuid",
            "",
            "CPUID values seen by the guest: a LIBXL string 'host,tm=0,sse3=0' (written "
            "quoted) or an XEND list '[\"1:ecx=xxx...0\"]' (written as is); empty for none.",
            _cpuid,
        ),
        _text(
            "soundhw",
            "",
            "Emulated sound card(s) of HVM guests (hda, ac97, es1370, ..., or 'all'); empty "
            "for none. Accepted for xen-pvm for Ganeti compatibility but not used there "
            "(PV guests have no emulated devices).",
            _soundhw,
        ),
        _text(
            "vif_script",
            "",
            "Hotplug script for every NIC (a name in /etc/xen/scripts or an absolute path); "
            "empty for xl's default (vif-bridge, or vif-route for routed NICs).",
            _vif_script,
        ),
        ParamSpec(
            name="xen_cmd",
            coerce=as_xen_cmd,
            default="xl",
            type_name="choice",
            doc="Toolstack command. Only 'xl': Ganeti's 'xm' is refused because the xm/xend "
            "toolstack no longer exists in Xen.",
        ),
    ]


XEN_PVM_HVPARAMS = Schema.of(
    f"hvparams/{XEN_PVM}",
    [
        flag_param(
            "use_bootloader",
            False,
            "Boot through a bootloader run in dom0 (pygrub) that reads the kernel from the "
            "instance's disk, instead of kernel_path.",
        ),
        _path(
            "bootloader_path",
            "",
            "The bootloader program (e.g. /usr/lib/xen-4.17/bin/pygrub); required with "
            "use_bootloader.",
        ),
        _text(
            "bootloader_args",
            "",
            "Extra arguments for the bootloader, split like a shell line and written as "
            "xl's bootloader_args list.",
            _bootloader_args,
        ),
        _path(
            "kernel_path",
            "/boot/vmlinuz-3-xenU",
            "Kernel (on the node) the guest boots directly; required unless use_bootloader.",
        ),
        _path("initrd_path", "", "Initial ramdisk (on the node) for the kernel; empty for none."),
        _text(
            "root_path",
            "/dev/xvda1",
            "Root device passed as root=<value> on the kernel command line; empty to omit.",
            _root_path,
        ),
        _text(
            "kernel_args",
            "ro",
            "Extra kernel command line arguments (after root=).",
        ),
        *_common(migration_mode="live", blockdev_prefix="sd"),
    ],
)

XEN_HVM_HVPARAMS = Schema.of(
    f"hvparams/{XEN_HVM}",
    [
        flag_param("acpi", True, "Give the guest ACPI tables (needed for a clean ACPI shutdown)."),
        flag_param("pae", True, "Expose PAE (needed by 64-bit guests)."),
        flag_param("viridian", False, "Expose the Hyper-V (viridian) enlightenments (Windows)."),
        flag_param("use_localtime", False, "Run the guest's clock in local time instead of UTC."),
        flag_param(
            "serial_console",
            True,
            'Give the guest an emulated serial port on a pty (serial="pty"), reachable '
            "with 'xl console -t serial'.",
        ),
        _text(
            "boot_order",
            "cd",
            "Boot devices in order: c (disk), d (cdrom), n (network), a (floppy).",
            _boot_order,
        ),
        ParamSpec(
            name="cdrom_image_path",
            coerce=as_path,
            default="",
            check=_image_path,
            type_name="path",
            doc="ISO image (on the node) given to the guest as a read-only cdrom on the "
            "device after the disks; empty for no cdrom.",
        ),
        choice_param(
            "disk_type",
            ("paravirtual", "ioemu"),
            "paravirtual",
            "Disk model: paravirtual or ioemu (emulated, marked ioemu: on the device).",
        ),
        choice_param(
            "nic_type",
            XEN_NIC_TYPES,
            "rtl8139",
            "NIC model: an emulated card (model=) or paravirtual (a Xen PV NIC only, type=vif).",
        ),
        choice_param(
            "vif_type",
            ("ioemu", "vif"),
            "ioemu",
            "vif type of emulated NICs: ioemu (emulated card plus PV NIC) or vif (PV only; "
            "nic_type then has no effect).",
        ),
        ParamSpec(
            name="vnc_bind_address",
            coerce=as_str,
            default="0.0.0.0",
            check=ip_or_empty,
            type_name="ip",
            doc="Address the guest's VNC console listens on; empty disables VNC. The "
            "display is the instance's network_port - 5900, or any free one.",
        ),
        _path(
            "vnc_password_file",
            "",
            "File (on the node) whose first line is the VNC password; empty for none.",
        ),
        _path(
            "device_model",
            "",
            "Device model binary (device_model_override); empty for xl's default qemu.",
        ),
        _path(
            "kernel_path",
            "",
            "HVM firmware loader (written as firmware_override); empty (the default) for "
            "the hvmloader xl was built with. Ganeti's default /usr/lib/xen/boot/hvmloader "
            "does not exist on Debian, which installs /usr/lib/xen-4.17/boot/hvmloader.",
        ),
        _text(
            "pci_pass",
            "",
            "Host PCI devices passed through to the guest, separated by ';' "
            "('0000:03:00.0;0000:04:00.1').",
            _pci_pass,
        ),
        *_common(migration_mode="non-live", blockdev_prefix="hd"),
    ],
)

#: Hypervisor name -> hvparams schema, merged into ``params.hv.HV_SCHEMAS``.
XEN_SCHEMAS: dict[str, Schema] = {XEN_PVM: XEN_PVM_HVPARAMS, XEN_HVM: XEN_HVM_HVPARAMS}


def xen_combination_problems(hv: Mapping[str, Any], hypervisor: str) -> dict[str, str]:
    """Problems between keys of *filled* Xen hvparams (syntax phase, no I/O), by key.

    Args:
        hv: the filled hvparams of ``hypervisor``.
        hypervisor: ``xen-pvm`` or ``xen-hvm``.
    """
    problems: dict[str, str] = {}
    if hypervisor == XEN_PVM:
        if hv["use_bootloader"] and not hv["bootloader_path"]:
            problems["bootloader_path"] = (
                "must be set with use_bootloader=true (e.g. /usr/lib/xen-4.17/bin/pygrub)"
            )
        if not hv["use_bootloader"] and not hv["kernel_path"]:
            problems["kernel_path"] = (
                "a PV guest needs a kernel: set kernel_path, or use_bootloader=true with "
                "bootloader_path"
            )
    elif hypervisor == XEN_HVM and set(hv["boot_order"]) == {"d"} and not hv["cdrom_image_path"]:
        problems["boot_order"] = "'d' boots only from the cdrom but cdrom_image_path is empty"
    return problems

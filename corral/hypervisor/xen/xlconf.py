"""The ``xl`` config file of an instance, built from objects (pure: no I/O).

:func:`build_config` turns an :class:`~corral.hypervisor.base.InstanceSpec` (``xen-pvm`` or
``xen-hvm``, hvparams filled) and its attached disks into the text of an xl.cfg(5) file. Every
value is checked on the way in: the hvparams again with their schema (the same checks the
master ran), and the values that come from elsewhere (names, paths, MACs, bridges) by the
functions here. Strings are written in double quotes with backslashes escaped; a value that
cannot be written safely (a double quote, a line break, a comma where xl splits) is refused
with a :class:`~corral.common.errors.ParamError` naming the key, never written half-way.

What goes in, in order:

* identity: ``name``, ``uuid``, ``type`` (``pv`` / ``hvm``);
* boot: PV ``kernel``/``ramdisk`` or ``bootloader``/``bootloader_args``, and
  ``extra = "root=<root_path> <kernel_args>"``; HVM ``firmware_override`` (the hvmloader of
  ``kernel_path``), ``device_model_override``, ``boot``, ``acpi``/``apic``/``pae``/
  ``viridian``/``localtime``, VNC, ``serial``, ``soundhw``, ``pci``;
* resources: ``memory = maxmem = spec.memory``, ``vcpus``, ``cpus`` (:func:`cpus_setting`),
  ``cpu_weight``/``cap`` when they differ from Xen's defaults, ``cpuid``;
* devices: ``vif`` (:func:`vif_entries`), ``disk`` (:func:`disk_entries`, plus the HVM
  cdrom);
* events: ``on_poweroff = "preserve"`` (a guest's own poweroff leaves the domain in the
  shutdown state, so Corral sees it as shut down, as Ganeti does), ``on_reboot`` from
  ``reboot_behavior``, ``on_crash = "restart"``.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from corral.common.errors import ParamError
from corral.hypervisor.base import AttachedDisk, InstanceSpec, NicSpec
from corral.objects.params.cpumask import cpu_mask_problem, parse_cpu_mask
from corral.objects.params.hv_xen import (
    XEN_HVM,
    XEN_PVM,
    XEN_SCHEMAS,
    bootloader_arg_list,
    config_text_problem,
    cpuid_problem,
    legacy_disk_path_problem,
    pci_devices,
    xen_combination_problems,
)

#: Letters of the disk device names, in order (Ganeti's ``_DISK_LETTERS``).
DISK_LETTERS = string.ascii_lowercase
#: Deprecated xl disk prefixes for raw disks, by the disk's file driver (None: block device).
#: NOTE: xl 4.x strips and ignores all of these (xl-disk-configuration(5)) and picks the
#: backend itself; they are kept so the file reads like Ganeti's and xm-era tools parse it.
FILE_DRIVER_PREFIXES: dict[str | None, str] = {
    None: "phy:",
    "loop": "file:",
    "blktap": "tap:aio:",
    "blktap2": "tap2:tapdisk:aio:",
}
#: The first TCP port of VNC displays (display N listens on 5900 + N).
VNC_BASE_PORT = 5900
#: Xen's scheduler defaults; only other values are written (see :func:`build_config`).
DEFAULT_CPU_WEIGHT = 256
DEFAULT_CPU_CAP = 0

_MAC = re.compile(r"\A[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")
_VIF_VALUE = re.compile(r"\A[A-Za-z0-9_./:-]+\Z")


def quote(value: str, key: str) -> str:
    """``value`` as an xl string: in double quotes, backslashes escaped.

    Raises:
        ParamError: ``value`` contains a double quote, a line break or NUL (named ``key``).
    """
    problem = config_text_problem(value)
    if problem:
        raise ParamError({key: problem}, context="xen config")
    return '"' + value.replace("\\", "\\\\") + '"'


def _list(items: Iterable[str], key: str) -> str:
    return "[" + ", ".join(quote(item, key) for item in items) + "]"


def _cpu_list(cpus: frozenset[int]) -> str:
    """``{0, 1, 2, 4}`` -> ``0-2,4`` (sorted, ranges merged)."""
    parts: list[str] = []
    ordered = sorted(cpus)
    start = prev = ordered[0]
    for cpu in [*ordered[1:], -1]:
        if cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(parts)


def cpus_setting(cpu_mask: str) -> str | None:
    """The ``cpus =`` line for a Ganeti CPU mask, or None for no pinning.

    ``all`` -> None; ``1-3`` -> ``cpus = "1-3"``; ``0:1-2:all`` ->
    ``cpus = ["0", "1-2", "all"]`` (vCPU n pinned by the n-th item, xl.cfg(5)). CPU lists
    are written sorted with ranges merged; per-vCPU masks that are all ``all`` mean no
    pinning.

    Raises:
        ParamError: the mask's syntax is wrong (named ``cpu_mask``).
    """
    try:
        masks = parse_cpu_mask(cpu_mask)
    except ValueError as exc:
        raise ParamError({"cpu_mask": str(exc)}, context="xen config") from None
    if all(mask is None for mask in masks):
        return None
    items = ["all" if mask is None else _cpu_list(mask) for mask in masks]
    if len(items) == 1:
        return f"cpus = {quote(items[0], 'cpu_mask')}"
    return f"cpus = {_list(items, 'cpu_mask')}"


def quote_cpuid(value: str) -> str:
    """The right-hand side of ``cpuid =`` (Ganeti's ``_QuoteCpuidField``).

    A LIBXL string (``host,tm=0``) needs quotes and gets them; an XEND list
    (``["1:ecx=..."]``) is already a list of quoted strings and is written as given (after
    its strict syntax check).

    Raises:
        ParamError: neither shape (named ``cpuid``).
    """
    problem = cpuid_problem(value) if value else "must not be empty here"
    if problem:
        raise ParamError({"cpuid": problem}, context="xen config")
    text = value.strip()
    return text if text.startswith("[") else quote(text, "cpuid")


def _device_name(prefix: str, position: int, key: str) -> str:
    if position >= len(DISK_LETTERS):
        raise ParamError(
            {
                key: f"Xen device names run out after {len(DISK_LETTERS)} disks "
                f"({prefix}a..{prefix}z); this instance needs {position + 1}"
            },
            context="xen config",
        )
    return prefix + DISK_LETTERS[position]


def disk_entries(
    disks: Sequence[AttachedDisk], blockdev_prefix: str, *, ioemu: bool = False
) -> list[str]:
    """The ``disk =`` items (unquoted), disk N named ``<prefix><letter N>`` in index order.

    Raw disks use xl's old positional syntax with the file driver's prefix
    (:data:`FILE_DRIVER_PREFIXES`): ``phy:/dev/xenvg/d0,sda,w``, ``file:/srv/d1,sdb,r``,
    ``tap:aio:...``, ``tap2:tapdisk:aio:...``; ``ioemu`` marks the device ``ioemu:hda`` (HVM
    ``disk_type=ioemu``). qcow2 disks use the keyword syntax, target last:
    ``format=qcow2,vdev=sda,access=rw,target=/srv/d0.qcow2``.

    Raises:
        ParamError: an unknown format, mode or file driver, a path the syntax cannot carry,
            or more disks than letters (named ``disk/<index>`` or ``disks``).
    """
    entries = []
    for position, disk in enumerate(sorted(disks, key=lambda d: d.index)):
        key = f"disk/{disk.index}"
        vdev = _device_name(blockdev_prefix, position, "disks")
        if disk.mode not in ("rw", "ro"):
            raise ParamError(
                {key: f"mode must be rw or ro, got {disk.mode!r}"}, context="xen config"
            )
        if disk.format == "qcow2":
            problem = config_text_problem(disk.path) or (
                None if disk.path.startswith("/") else "must be an absolute path"
            )
            if problem:
                raise ParamError({key: f"path {disk.path!r} {problem}"}, context="xen config")
            entries.append(f"format=qcow2,vdev={vdev},access={disk.mode},target={disk.path}")
            continue
        if disk.format != "raw":
            raise ParamError(
                {key: f"format {disk.format!r} cannot be given to Xen (raw or qcow2)"},
                context="xen config",
            )
        prefix = FILE_DRIVER_PREFIXES.get(disk.file_driver)
        if prefix is None:
            raise ParamError(
                {
                    key: f"unknown file driver {disk.file_driver!r} (loop, blktap, blktap2, "
                    "or none for a block device)"
                },
                context="xen config",
            )
        problem = legacy_disk_path_problem(disk.path)
        if problem:
            raise ParamError({key: f"path {disk.path!r} {problem}"}, context="xen config")
        access = "w" if disk.mode == "rw" else "r"
        entries.append(f"{prefix}{disk.path},{'ioemu:' if ioemu else ''}{vdev},{access}")
    return entries


def cdrom_entry(iso_path: str, blockdev_prefix: str, position: int) -> str:
    """The HVM cdrom item: ``file:<iso>,<prefix><letter>:cdrom,r`` on the letter after the disks.

    Raises:
        ParamError: a path the syntax cannot carry, or no letter left (``cdrom_image_path``).
    """
    problem = legacy_disk_path_problem(iso_path)
    if problem:
        raise ParamError({"cdrom_image_path": problem}, context="xen config")
    vdev = _device_name(blockdev_prefix, position, "cdrom_image_path")
    return f"file:{iso_path},{vdev}:cdrom,r"


def _vif_value(value: str, key: str) -> str:
    if not _VIF_VALUE.match(value):
        raise ParamError(
            {key: f"{value!r} cannot go in an xl vif entry (letters, digits, '_./:-' only)"},
            context="xen config",
        )
    return value


def vif_entry(nic: NicSpec, hv: Mapping[str, Any], *, hvm: bool) -> str:
    """One ``vif =`` item (unquoted) for ``nic``.

    * bridged: ``mac=..,bridge=<link>``; routed: ``mac=..,ip=<ip>,script=vif-route``;
      openvswitch: ``mac=..,bridge=<link>,script=vif-openvswitch``;
    * ``vif_script`` replaces the script of every mode;
    * HVM: ``nic_type=paravirtual`` -> ``type=vif`` (Xen PV NIC only); otherwise
      ``type=<vif_type>`` and, with ``ioemu``, ``model=<nic_type>``.

    Raises:
        ParamError: a bad MAC or IP, a bridged NIC without a bridge, an unknown mode (named
            ``nic/<index>/...``).
    """
    key = f"nic/{nic.index}"
    if not _MAC.match(nic.mac):
        raise ParamError({f"{key}/mac": f"{nic.mac!r} is not a MAC address"}, context="xen config")
    parts = [f"mac={nic.mac.lower()}"]
    script = ""
    if nic.mode in ("bridged", "openvswitch"):
        if not nic.link:
            raise ParamError(
                {f"{key}/link": f"a {nic.mode} NIC needs a bridge (link) on the node"},
                context="xen config",
            )
        parts.append(f"bridge={_vif_value(nic.link, f'{key}/link')}")
        if nic.mode == "openvswitch":
            script = "vif-openvswitch"
    elif nic.mode == "routed":
        script = "vif-route"
    else:
        raise ParamError(
            {f"{key}/mode": f"{nic.mode!r} is not supported (bridged, routed, openvswitch)"},
            context="xen config",
        )
    if nic.ip:
        try:
            ipaddress.ip_interface(nic.ip)
        except ValueError:
            raise ParamError(
                {f"{key}/ip": f"{nic.ip!r} is not an IP address"}, context="xen config"
            ) from None
        parts.append(f"ip={nic.ip}")
    if hv["vif_script"]:
        script = _vif_value(hv["vif_script"], "vif_script")
    if script:
        parts.append(f"script={script}")
    if hvm:
        if hv["nic_type"] == "paravirtual":
            parts.append("type=vif")
        else:
            parts.append(f"type={hv['vif_type']}")
            if hv["vif_type"] == "ioemu":
                parts.append(f"model={hv['nic_type']}")
    return ",".join(parts)


def vif_entries(spec: InstanceSpec, hv: Mapping[str, Any]) -> list[str]:
    """The ``vif =`` items of every NIC of ``spec``, in index order (see :func:`vif_entry`).

    Raises:
        ParamError: as :func:`vif_entry`.
    """
    hvm = spec.hypervisor == XEN_HVM
    return [vif_entry(nic, hv, hvm=hvm) for nic in sorted(spec.nics, key=lambda n: n.index)]


def filled_params(spec: InstanceSpec) -> dict[str, Any]:
    """The instance's hvparams checked again with the schema and filled with defaults.

    Raises:
        ParamError: an unknown hypervisor, unknown keys, bad values, or keys that contradict
            each other (:func:`~corral.objects.params.hv_xen.xen_combination_problems`).
    """
    schema = XEN_SCHEMAS.get(spec.hypervisor)
    if schema is None:
        raise ParamError(
            {"hypervisor": f"{spec.hypervisor!r} is not a Xen hypervisor ({XEN_PVM}, {XEN_HVM})"},
            context="xen config",
        )
    hv = schema.fill(schema.check_syntax(spec.hvparams))
    problems = xen_combination_problems(hv, spec.hypervisor)
    if problems:
        raise ParamError(problems, context=schema.name)
    return hv


def _pv_lines(hv: Mapping[str, Any]) -> list[str]:
    lines = ['type = "pv"']
    if hv["use_bootloader"]:
        lines.append(f"bootloader = {quote(hv['bootloader_path'], 'bootloader_path')}")
        args = bootloader_arg_list(hv["bootloader_args"])
        if args:
            lines.append(f"bootloader_args = {_list(args, 'bootloader_args')}")
    else:
        lines.append(f"kernel = {quote(hv['kernel_path'], 'kernel_path')}")
        if hv["initrd_path"]:
            lines.append(f"ramdisk = {quote(hv['initrd_path'], 'initrd_path')}")
    words = [f"root={hv['root_path']}"] if hv["root_path"] else []
    if hv["kernel_args"].strip():
        words.append(hv["kernel_args"].strip())
    if words:
        lines.append(f"extra = {quote(' '.join(words), 'kernel_args')}")
    return lines


def _flag(value: Any) -> str:
    return "1" if value else "0"


def _hvm_lines(hv: Mapping[str, Any], vnc_port: int | None, vnc_password: str | None) -> list[str]:
    lines = ['type = "hvm"']
    if hv["kernel_path"]:
        lines.append(f"firmware_override = {quote(hv['kernel_path'], 'kernel_path')}")
    if hv["device_model"]:
        lines.append(f"device_model_override = {quote(hv['device_model'], 'device_model')}")
    lines += [
        f"boot = {quote(hv['boot_order'], 'boot_order')}",
        f"acpi = {_flag(hv['acpi'])}",
        # NOTE: APIC is always on, as in Ganeti (no hvparam): SMP guests need it anyway.
        "apic = 1",
        f"pae = {_flag(hv['pae'])}",
        f"viridian = {_flag(hv['viridian'])}",
        f"localtime = {_flag(hv['use_localtime'])}",
    ]
    if hv["vnc_bind_address"]:
        lines += ["vnc = 1", f"vnclisten = {quote(hv['vnc_bind_address'], 'vnc_bind_address')}"]
        if vnc_port is not None:
            if not VNC_BASE_PORT <= vnc_port <= 65535:
                raise ParamError(
                    {"network_port": f"VNC port {vnc_port} is not in {VNC_BASE_PORT}-65535"},
                    context="xen config",
                )
            lines += [f"vncdisplay = {vnc_port - VNC_BASE_PORT}", "vncunused = 0"]
        else:
            lines.append("vncunused = 1")
        if vnc_password is not None:
            lines.append(f"vncpasswd = {quote(vnc_password, 'vnc_password_file')}")
    else:
        lines.append("vnc = 0")
    if hv["serial_console"]:
        lines.append('serial = "pty"')
    if hv["soundhw"]:
        lines.append(f"soundhw = {quote(hv['soundhw'], 'soundhw')}")
    pci = pci_devices(hv["pci_pass"])
    if pci:
        lines.append(f"pci = {_list(pci, 'pci_pass')}")
    return lines


def build_config(
    spec: InstanceSpec,
    disks: Sequence[AttachedDisk],
    *,
    vnc_port: int | None = None,
    vnc_password: str | None = None,
) -> str:
    """The xl.cfg text of an instance (PV for ``xen-pvm``, HVM for ``xen-hvm``).

    Args:
        spec: the instance; ``spec.hypervisor`` selects PV or HVM, ``spec.hvparams`` are its
            filled hvparams (checked again here).
        disks: its attached disks (device names follow their index order).
        vnc_port: HVM only: the TCP port of the VNC console (``vncdisplay = port - 5900``);
            None lets xl pick a free display (``vncunused = 1``).
        vnc_password: HVM only: the VNC password, read by the caller from
            ``vnc_password_file`` (this builder does no I/O); None writes no password. The
            file then holds the password: write it readable by root only.

    Returns:
        The file content, ending with a newline.

    Raises:
        ParamError: a value that cannot be expressed in the file, by key (bad or
            contradicting hvparams, a per-vCPU mask count that does not match the vCPUs, a
            path, MAC, bridge or password the syntax cannot carry, too many disks).
    """
    hv = filled_params(spec)
    hvm = spec.hypervisor == XEN_HVM
    problem = cpu_mask_problem(hv["cpu_mask"], spec.vcpus)
    if problem:
        raise ParamError({"cpu_mask": problem}, context="xen config")
    lines = [
        "# generated by Corral; changes are lost at the next start",
        f"name = {quote(spec.name, 'name')}",
        f"uuid = {quote(spec.uuid, 'uuid')}",
    ]
    lines += _hvm_lines(hv, vnc_port, vnc_password) if hvm else _pv_lines(hv)
    lines += [
        f"memory = {int(spec.memory)}",
        f"maxmem = {int(spec.memory)}",
        f"vcpus = {int(spec.vcpus)}",
    ]
    cpus = cpus_setting(hv["cpu_mask"])
    if cpus:
        lines.append(cpus)
    # NOTE: weight and cap are written only when set: they are credit/credit2 settings, and a
    # node running another scheduler would refuse the domain for values it never needed.
    if hv["cpu_weight"] != DEFAULT_CPU_WEIGHT:
        lines.append(f"cpu_weight = {int(hv['cpu_weight'])}")
    if hv["cpu_cap"] != DEFAULT_CPU_CAP:
        lines.append(f"cap = {int(hv['cpu_cap'])}")
    if hv["cpuid"]:
        lines.append(f"cpuid = {quote_cpuid(hv['cpuid'])}")
    vifs = vif_entries(spec, hv)
    if vifs:
        lines.append(f"vif = {_list(vifs, 'nics')}")
    entries = disk_entries(disks, hv["blockdev_prefix"], ioemu=hvm and hv["disk_type"] == "ioemu")
    if hvm and hv["cdrom_image_path"]:
        entries.append(cdrom_entry(hv["cdrom_image_path"], hv["blockdev_prefix"], len(disks)))
    if entries:
        lines.append(f"disk = {_list(entries, 'disks')}")
    lines += [
        'on_poweroff = "preserve"',
        f'on_reboot = "{"restart" if hv["reboot_behavior"] == "reboot" else "destroy"}"',
        'on_crash = "restart"',
    ]
    return "\n".join(lines) + "\n"

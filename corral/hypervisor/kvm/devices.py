"""Pure generation of the optional parts of QEMU's command line.

Graphical consoles (VNC, SPICE), cdroms, USB, sound and the ``-smp`` topology, from the
filled hvparams and the probed :class:`~corral.hypervisor.kvm.probe.QemuCaps`. Like
:mod:`cmdline` (which calls these), nothing here touches the host; every option generated is
one the probed binary lists, and a parameter the binary cannot honour is refused with a
:class:`HypervisorError` (kind INVALID) naming the parameter in ``fields["param"]``.

Values from parameters never reach QEMU's ``key=value,...`` syntax unchecked: paths and URLs
are escaped (a comma is doubled), every other value was restricted by the schema to
characters without meaning there (``objects/params/hv.py``). Passwords never appear in the
argv: they are copied to a per-instance secret file (mode 0600) that QEMU reads through a
``secret`` object.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.kvm.probe import QemuCaps
from corral.objects.params.hv import (
    KVM_CDROM_MODELS,
    KVM_SOUND_MODELS,
    is_url,
    usb_device_list,
)

#: First TCP port of VNC display 0.
VNC_BASE_PORT = 5900
#: How many displays QEMU may try when the instance has no network_port.
VNC_AUTO_RANGE = 99

VNC_SECRET_ID = "vnc-secret0"
VNC_TLS_ID = "vnc-tls0"
SPICE_SECRET_ID = "spice-secret0"
SCSI_CONTROLLER_ID = "scsi0"
USB_CONTROLLER_ID = "usb0"
AUDIODEV_ID = "audio0"
SOUND_ID = "sound0"
VDAGENT_SERIAL_ID = "vdagent-serial0"
VDAGENT_CHARDEV_ID = "vdagent0"
#: The cdrom parameters, in device order.
CDROM_KEYS = ("cdrom_image_path", "cdrom2_image_path")


def param_error(message: str, param: str) -> HypervisorError:
    """A parameter that cannot work as given (kind INVALID, ``fields["param"]``)."""
    return HypervisorError(message, kind=ErrorKind.INVALID, param=param)


def qemu_escape(value: str) -> str:
    """Escape a value for QEMU's ``key=value,...`` option syntax (a comma is doubled)."""
    return value.replace(",", ",,")


def secret_file(instance_dir: str, kind: str) -> str:
    """The per-instance file QEMU reads a password from (``vnc`` or ``spice``)."""
    return os.path.join(instance_dir, f"{kind}.secret")


def require_device(caps: QemuCaps, model: str, param: str) -> None:
    """Refuse ``param`` when the binary has no device ``model``.

    Raises:
        HypervisorError: kind INVALID naming ``param``.
    """
    if not caps.has_device(model):
        raise param_error(
            f"{param}: {caps.binary} (QEMU {caps.version}) has no device {model!r} "
            f"(see '{caps.binary} -device help')",
            param,
        )


def _require_option(caps: QemuCaps, option: str, param: str) -> None:
    if not caps.has_option(option):
        raise param_error(
            f"{param}: {caps.binary} (QEMU {caps.version}) has no {option} option", param
        )


# --- CPU topology --------------------------------------------------------------------------


def smp_arg(vcpus: int, hv: Mapping[str, Any]) -> str:
    """The ``-smp`` value: the vCPU count, plus the topology when one is set.

    Unset (0) parts are computed: threads default to 1, then cores or sockets take what is
    left of ``vcpus``.

    Raises:
        HypervisorError: kind INVALID when sockets x cores x threads cannot equal ``vcpus``.
    """
    sockets, cores, threads = (int(hv[k]) for k in ("cpu_sockets", "cpu_cores", "cpu_threads"))
    if not (sockets or cores or threads):
        return str(vcpus)
    given = [k for k in ("cpu_sockets", "cpu_cores", "cpu_threads") if hv[k]]
    threads = threads or 1
    if not cores:
        cores = vcpus // (sockets * threads) if sockets else 1
    if not sockets:
        sockets = vcpus // (cores * threads) if vcpus >= cores * threads else 0
    if sockets * cores * threads != vcpus:
        raise param_error(
            f"{', '.join(given)}: the topology cpu_sockets x cpu_cores x cpu_threads "
            f"({hv['cpu_sockets']} x {hv['cpu_cores']} x {hv['cpu_threads']}, 0 = computed) "
            f"must multiply to the instance's {vcpus} vCPU(s); set values that divide "
            f"{vcpus} or leave them at 0",
            given[0],
        )
    return f"{vcpus},sockets={sockets},cores={cores},threads={threads}"


# --- VNC ------------------------------------------------------------------------------------


def vnc_display(address: str, network_port: int | None) -> str:
    """``ADDR:DISPLAY`` for ``-vnc`` (display = port - 5900, or the first free one)."""
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    if network_port is not None and network_port >= VNC_BASE_PORT:
        return f"{host}:{network_port - VNC_BASE_PORT}"
    return f"{host}:0,to={VNC_AUTO_RANGE}"


def vnc_args(
    hv: Mapping[str, Any], network_port: int | None, instance_dir: str, caps: QemuCaps
) -> list[str]:
    """``-object secret|tls-creds-x509``, ``-vnc``, ``-k`` and the VGA card (or nothing).

    Raises:
        HypervisorError: kind INVALID for a password with a QEMU older than 7.0 (no
            ``password-secret``), or a keymap option the binary lacks.
    """
    address = str(hv["vnc_bind_address"])
    if not address:
        return []
    argv: list[str] = []
    opts = [vnc_display(address, network_port)]
    if hv["vnc_password_file"]:
        if not caps.secret_passwords:
            raise param_error(
                f"vnc_password_file needs QEMU 7.0 or newer (password-secret); "
                f"{caps.binary} is {caps.version}",
                "vnc_password_file",
            )
        path = qemu_escape(secret_file(instance_dir, "vnc"))
        argv += ["-object", f"secret,id={VNC_SECRET_ID},file={path},format=raw"]
        opts.append(f"password-secret={VNC_SECRET_ID}")
    if hv["vnc_tls"]:
        verify = "on" if hv["vnc_x509_verify"] else "off"
        argv += [
            "-object",
            f"tls-creds-x509,id={VNC_TLS_ID},dir={qemu_escape(hv['vnc_x509_path'])},"
            f"endpoint=server,verify-peer={verify}",
        ]
        opts.append(f"tls-creds={VNC_TLS_ID}")
    argv += ["-vnc", ",".join(opts)]
    if hv["keymap"]:
        _require_option(caps, "-k", "keymap")
        argv += ["-k", str(hv["keymap"])]
    require_device(caps, "VGA", "vnc_bind_address")
    argv += ["-device", "VGA,id=video0"]
    return argv


# --- SPICE ----------------------------------------------------------------------------------

#: hvparam -> SPICE option for the plain pass-through values ("" = QEMU's default).
_SPICE_CHOICES = {
    "spice_image_compression": "image-compression",
    "spice_jpeg_wan_compression": "jpeg-wan-compression",
    "spice_zlib_glz_wan_compression": "zlib-glz-wan-compression",
    "spice_streaming_video": "streaming-video",
}


def spice_args(
    hv: Mapping[str, Any], network_port: int | None, instance_dir: str, caps: QemuCaps
) -> list[str]:
    """``-spice``, its secret object, the QXL card and the agent channel (or nothing).

    Raises:
        HypervisorError: kind INVALID, naming the parameter: QEMU without SPICE
            (``spice_bind``), no network_port, an option this QEMU's SPICE lacks.
    """
    address = str(hv["spice_bind"])
    if not address:
        return []
    if not caps.has_spice:
        raise param_error(
            f"spice_bind: {caps.binary} (QEMU {caps.version}) was built without SPICE "
            "(no -spice option or no SPICE module); leave spice_bind empty or use VNC",
            "spice_bind",
        )
    if network_port is None:
        raise param_error("spice_bind: the instance has no network_port to listen on", "spice_bind")

    def need(option: str, param: str) -> str:
        if option not in caps.spice:
            raise param_error(
                f"{param}: the SPICE of {caps.binary} (QEMU {caps.version}) has no "
                f"{option}= option (see '{caps.binary} -spice help')",
                param,
            )
        return option

    argv: list[str] = []
    opts = [f"{need('addr', 'spice_bind')}={address}"]
    if hv["spice_ip_version"]:
        opts.append(f"{need('ipv' + str(hv['spice_ip_version']), 'spice_ip_version')}=on")
    if hv["spice_use_tls"]:
        opts += [
            f"{need('tls-port', 'spice_use_tls')}={network_port}",
            f"{need('x509-dir', 'spice_x509_path')}={qemu_escape(hv['spice_x509_path'])}",
            f"{need('tls-ciphers', 'spice_tls_ciphers')}={hv['spice_tls_ciphers']}",
        ]
    else:
        opts.append(f"{need('port', 'spice_bind')}={network_port}")
    if hv["spice_password_file"]:
        if not caps.secret_passwords:
            raise param_error(
                f"spice_password_file needs QEMU 7.0 or newer (password-secret); "
                f"{caps.binary} is {caps.version}",
                "spice_password_file",
            )
        path = qemu_escape(secret_file(instance_dir, "spice"))
        argv += ["-object", f"secret,id={SPICE_SECRET_ID},file={path},format=raw"]
        opts.append(f"{need('password-secret', 'spice_password_file')}={SPICE_SECRET_ID}")
    else:
        opts.append(f"{need('disable-ticketing', 'spice_password_file')}=on")
    for param, option in _SPICE_CHOICES.items():
        if hv[param]:
            opts.append(f"{need(option, param)}={hv[param]}")
    playback = "on" if hv["spice_playback_compression"] else "off"
    opts.append(f"{need('playback-compression', 'spice_playback_compression')}={playback}")
    argv += ["-spice", ",".join(opts)]
    require_device(caps, "qxl-vga", "spice_bind")
    argv += ["-device", "qxl-vga,id=video0"]
    if hv["spice_use_vdagent"]:
        require_device(caps, "virtio-serial-pci", "spice_use_vdagent")
        argv += [
            "-device",
            f"virtio-serial-pci,id={VDAGENT_SERIAL_ID}",
            "-chardev",
            f"spicevmc,id={VDAGENT_CHARDEV_ID},name=vdagent",
            "-device",
            f"virtserialport,bus={VDAGENT_SERIAL_ID}.0,chardev={VDAGENT_CHARDEV_ID},"
            "name=com.redhat.spice.0",
        ]
    return argv


# --- cdroms -----------------------------------------------------------------------------------


def needs_scsi_controller(hv: Mapping[str, Any], has_disks: bool) -> bool:
    """Whether the virtio-scsi controller is needed (SCSI disks or SCSI cdroms)."""
    cdroms = any(hv[k] for k in CDROM_KEYS)
    return (hv["disk_type"] == "scsi" and has_disks) or (hv["cdrom_disk_type"] == "scsi" and cdroms)


def cdrom_args(hv: Mapping[str, Any], boot_index: int | None, caps: QemuCaps) -> list[str]:
    """Block nodes and devices of the cdroms (``cdrom0``, ``cdrom1``); read-only.

    A URL image is read through QEMU's curl driver (``driver=http|https,url=...``); the
    driver checks beforehand that the binary can load it. Only the first cdrom can boot.

    Raises:
        HypervisorError: kind INVALID when the cdrom model is missing from the binary.
    """
    argv: list[str] = []
    model = KVM_CDROM_MODELS[hv["cdrom_disk_type"]]
    for number, key in enumerate(CDROM_KEYS):
        image = str(hv[key])
        if not image:
            continue
        require_device(caps, model, "cdrom_disk_type")
        dev_id = f"cdrom{number}"
        if is_url(image):
            scheme = image.split(":", 1)[0]
            proto = f"driver={scheme},node-name={dev_id}-file,url={qemu_escape(image)}"
        else:
            proto = f"driver=file,node-name={dev_id}-file,filename={qemu_escape(image)}"
        argv += [
            "-blockdev",
            f"{proto},read-only=on",
            "-blockdev",
            f"driver=raw,node-name={dev_id}-fmt,file={dev_id}-file,read-only=on",
        ]
        dev = [model, f"id={dev_id}", f"drive={dev_id}-fmt"]
        if model == "scsi-cd":
            dev.append(f"bus={SCSI_CONTROLLER_ID}.0")
        if number == 0 and boot_index is not None:
            dev.append(f"bootindex={boot_index}")
        argv += ["-device", ",".join(dev)]
    return argv


# --- USB, sound ---------------------------------------------------------------------------------


def usb_args(hv: Mapping[str, Any], caps: QemuCaps) -> list[str]:
    """A ``qemu-xhci`` controller and the ``usb_devices`` on it (or nothing).

    Raises:
        HypervisorError: kind INVALID naming ``usb_devices`` for a model the binary lacks.
    """
    models = usb_device_list(str(hv["usb_devices"]))
    if not models:
        return []
    require_device(caps, "qemu-xhci", "usb_devices")
    argv = ["-device", f"qemu-xhci,id={USB_CONTROLLER_ID}"]
    for number, model in enumerate(models):
        require_device(caps, model, "usb_devices")
        argv += ["-device", f"{model},id={USB_CONTROLLER_ID}-dev{number},bus={USB_CONTROLLER_ID}.0"]
    return argv


def sound_args(hv: Mapping[str, Any], caps: QemuCaps) -> list[str]:
    """``-audiodev none`` and the sound card of ``soundhw`` (or nothing).

    NOTE: the host backend is ``none``: the guest gets a working card whose output goes
    nowhere (nodes have no sound hardware; SPICE clients get audio through the SPICE
    channel regardless). ``-soundhw`` was removed in QEMU 7.1, hence ``-device``.

    Raises:
        HypervisorError: kind INVALID naming ``soundhw`` when a device or -audiodev is missing.
    """
    kind = str(hv["soundhw"])
    if not kind:
        return []
    _require_option(caps, "-audiodev", "soundhw")
    controller, *codecs = KVM_SOUND_MODELS[kind]
    argv = ["-audiodev", f"none,id={AUDIODEV_ID}"]
    require_device(caps, controller, "soundhw")
    if codecs:
        argv += ["-device", f"{controller},id={SOUND_ID}"]
        for number, codec in enumerate(codecs):
            require_device(caps, codec, "soundhw")
            argv += [
                "-device",
                f"{codec},id={SOUND_ID}-codec{number},bus={SOUND_ID}.0,audiodev={AUDIODEV_ID}",
            ]
    else:
        argv += ["-device", f"{controller},id={SOUND_ID},audiodev={AUDIODEV_ID}"]
    return argv

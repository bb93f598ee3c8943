"""The node phase of KVM parameter validation (Ganeti's ``ValidateParameters``).

The master has checked each key's syntax (``objects/params/hv.py``); here the filled
parameters meet the node: files exist, the QEMU binary is new enough and has the machine
type, devices, SPICE, block drivers and process options the parameters need, the security
domain user exists, the uid pool file is usable. Every problem found is reported at once, by
key, in one :class:`~corral.common.errors.ParamError`; messages say what is allowed here.

Where a check is the same question the command-line builder asks (is this device in
``-device help``?), it calls the builder's own functions (:mod:`devices`, :mod:`security`)
so validation and generation cannot disagree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from corral.common.errors import HypervisorError
from corral.hypervisor.kvm import accel as accel_mod
from corral.hypervisor.kvm import devices, security
from corral.hypervisor.kvm.hostprep import KvmHostPrep, read_password
from corral.hypervisor.kvm.probe import QemuCaps
from corral.objects.params.hv import (
    KVM_CDROM_MODELS,
    KVM_DISK_MODELS,
    KVM_NIC_MODELS,
    is_url,
    kvm_combination_problems,
)

#: Files QEMU expects in an x509 directory used by a TLS server.
X509_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem")


def check_file(path: str, what: str) -> str | None:
    """Why ``path`` is not a readable file, or None."""
    if not os.path.isfile(path):
        return f"{what} {path!r} does not exist on this node"
    if not os.access(path, os.R_OK):
        return f"{what} {path!r} is not readable"
    return None


def _x509_problem(path: str) -> str | None:
    if not os.path.isdir(path):
        return f"{path!r} is not a directory on this node"
    missing = [f for f in X509_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        return f"{path!r} lacks {', '.join(missing)} (needed: {', '.join(X509_FILES)})"
    return None


def keymap_dirs(binary: str) -> list[str]:
    """Where QEMU looks for keymaps: ``<prefix>/share/qemu/keymaps`` of the binary first."""
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(binary)))
    dirs = [os.path.join(prefix, "share", "qemu", "keymaps"), "/usr/share/qemu/keymaps"]
    return list(dict.fromkeys(dirs))


def _models_here(models: Mapping[str, str], caps: QemuCaps) -> str:
    return ", ".join(k for k, model in models.items() if caps.has_device(model)) or "none"


class KvmValidate(KvmHostPrep):
    """The node checks behind the driver's ``validate_params`` (see the module docstring)."""

    def _param_problems(self, hv: Mapping[str, Any]) -> dict[str, str]:
        """Every problem of the *filled* hvparams ``hv`` on this node, by key.

        Covers: keys that contradict each other, files missing here, a QEMU binary that is
        missing, too old, or lacks what a key asks for (machine type, device model, SPICE,
        curl, io_uring, -run-with/-runas), accel=kvm without a usable KVM, cpu_type=host
        under TCG, an unknown security_domain user, a bad uid pool.
        """
        problems = kvm_combination_problems(hv)
        for key, what in (("kernel_path", "kernel"), ("initrd_path", "initrd")):
            if hv[key]:
                problem = check_file(hv[key], what)
                if problem:
                    problems[key] = problem
        self._check_accel(hv, problems)
        self._check_files(hv, problems)
        self._check_security(hv, problems)
        binary = hv["kvm_path"]
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            problems["kvm_path"] = f"{binary!r} is not an executable file on this node"
        else:
            try:
                caps = self.qemu_caps(binary)
            except HypervisorError as exc:
                problems["kvm_path"] = str(exc)
            else:
                self._check_binary(hv, caps, problems)
        return problems

    def _check_accel(self, hv: Mapping[str, Any], problems: dict[str, str]) -> None:
        try:
            choice = accel_mod.choose_accel(hv["accel"], self.probe_kvm())
        except HypervisorError as exc:
            problems["accel"] = str(exc)
            return
        if hv["cpu_type"].split(",")[0] == "host" and choice.accel != "kvm":
            problems["cpu_type"] = (
                "'host' needs KVM, but this node runs guests under tcg "
                f"({choice.reason}); use a CPU model such as 'max' or leave it empty"
            )

    def _check_files(self, hv: Mapping[str, Any], problems: dict[str, str]) -> None:
        for key in devices.CDROM_KEYS:
            if hv[key] and not is_url(hv[key]):
                problem = check_file(hv[key], "cdrom image")
                if problem:
                    problems[key] = problem
        if hv["vnc_bind_address"] and hv["vnc_password_file"]:
            self._catch(
                problems,
                lambda: read_password(hv["vnc_password_file"], "vnc_password_file"),
                "vnc_password_file",
            )
        if hv["spice_bind"] and hv["spice_password_file"]:
            self._catch(
                problems,
                lambda: read_password(hv["spice_password_file"], "spice_password_file"),
                "spice_password_file",
            )
        for enabled, key in (("vnc_tls", "vnc_x509_path"), ("spice_use_tls", "spice_x509_path")):
            if hv[enabled] and hv[key]:
                problem = _x509_problem(hv[key])
                if problem:
                    problems[key] = problem
        if hv["firmware"] == "uefi":
            for key, what in (
                ("ovmf_code_path", "OVMF code"),
                ("ovmf_vars_template", "OVMF variables template"),
            ):
                problem = check_file(hv[key], what) if hv[key] else "must be set with firmware=uefi"
                if problem:
                    problems[key] = f"{problem} (install the ovmf package or set {key})"
        if hv["use_chroot"] and hv["chroot_dir"] and not os.path.isdir(hv["chroot_dir"]):
            problems["chroot_dir"] = f"{hv['chroot_dir']!r} is not a directory on this node"

    def _check_security(self, hv: Mapping[str, Any], problems: dict[str, str]) -> None:
        if hv["security_model"] == "user" and hv["security_domain"]:
            self._catch(
                problems, lambda: security.user_run_as(hv["security_domain"]), "security_domain"
            )
        elif hv["security_model"] == "pool":
            self._catch(problems, lambda: self.uid_pool().uids(), "security_model")

    def _check_binary(
        self, hv: Mapping[str, Any], caps: QemuCaps, problems: dict[str, str]
    ) -> None:
        binary = caps.binary
        machine = caps.resolve_machine(hv["machine_version"])
        if caps.machines.names and machine not in caps.machines.names:
            problems["machine_version"] = (
                f"{hv['machine_version']!r} is not supported by {binary} (QEMU "
                f"{caps.version}); it has pc, q35 and versioned types such as "
                f"{caps.machines.default or 'pc-i440fx-X.Y'} (see '{binary} -machine help')"
            )
        for key, models in (
            ("disk_type", KVM_DISK_MODELS),
            ("nic_type", KVM_NIC_MODELS),
            ("cdrom_disk_type", KVM_CDROM_MODELS),
        ):
            if not caps.has_device(models[hv[key]]):
                problems[key] = (
                    f"{hv[key]!r} ({models[hv[key]]}) is not a device of {binary}; "
                    f"allowed here: {_models_here(models, caps)}"
                )
        if devices.needs_scsi_controller(hv, True) and not caps.has_device("virtio-scsi-pci"):
            key = "disk_type" if hv["disk_type"] == "scsi" else "cdrom_disk_type"
            problems.setdefault(key, f"{binary} has no virtio-scsi-pci controller")
        for key in devices.CDROM_KEYS:
            if hv[key] and is_url(hv[key]):
                scheme = hv[key].split(":", 1)[0]
                if not self.facts.has_block_driver(binary, scheme):
                    problems[key] = (
                        f"{binary} cannot read {scheme} URLs (its curl block driver is missing; "
                        "on Debian install qemu-block-extra), use a local path instead"
                    )
        if hv["disk_aio"] == "io_uring" and not self.facts.has_io_uring(binary):
            problems["disk_aio"] = (
                f"{binary} was built without io_uring; allowed here: threads, native"
            )
        dev_dir = os.path.join(self.run_dir, "<instance>")
        self._catch(problems, lambda: devices.vnc_args(hv, None, dev_dir, caps), None)
        self._catch(problems, lambda: devices.spice_args(hv, 5900, dev_dir, caps), None)
        self._catch(problems, lambda: devices.usb_args(hv, caps), None)
        self._catch(problems, lambda: devices.sound_args(hv, caps), None)
        run_as = security.RunAs(uid=1, gid=1, qemu_user="1:1")
        self._catch(
            problems,
            lambda: security.process_args(
                caps,
                run_as if hv["security_model"] != "none" else None,
                "/chroot" if hv["use_chroot"] else "",
            ),
            None,
        )
        if hv["vnc_bind_address"] and hv["keymap"]:
            dirs = keymap_dirs(binary)
            if not any(os.path.isfile(os.path.join(d, hv["keymap"])) for d in dirs):
                problems["keymap"] = (
                    f"{hv['keymap']!r} is not a keymap of {binary} (looked in "
                    f"{', '.join(dirs)}; e.g. en-us, de, fr)"
                )

    @staticmethod
    def _catch(problems: dict[str, str], check: Callable[[], object], key: str | None) -> None:
        """Run ``check``; a HypervisorError becomes a problem of ``key`` (or its ``param``)."""
        try:
            check()
        except HypervisorError as exc:
            name = key or str(exc.fields.get("param", "kvm_path"))
            message = str(exc)
            prefix = f"{name}: "
            problems.setdefault(
                name, message[len(prefix) :] if message.startswith(prefix) else message
            )

"""The Xen hypervisor drivers: ``xen-pvm`` (paravirtual) and ``xen-hvm`` (hardware-assisted).

Both run domains through Xen's ``xl`` toolstack in dom0 and share everything but the guest
type (also in docs/hypervisors/xen.md):

* **config**: ``<run_dir>/<name>.cfg`` in xl format, written atomically from the instance
  (:mod:`corral.hypervisor.xen.xlconf`, pure); it also marks the domain as this driver's.
* **start**: ``xl create [-p] <cfg>``; a failure leaves neither the config nor a half-created
  domain behind and the error carries xl's own message.
* **stop**: ``xl shutdown`` (HVM: ``-F``, ACPI fallback), waiting up to the timeout for the
  guest to shut down; then ``xl destroy``; the call returns only once the domain's name is free
  again, so the instance can be started again at once.
* **reboot**: soft ``xl reboot``; hard destroys and re-creates the domain from its config.
* **list/info**: one ``xl list`` (Domain-0 excluded), states mapped by
  :func:`~corral.hypervisor.xen.lifecycle.domain_state`.
* **balloon** ``xl mem-set`` (range-checked against ``maxmem``, waits for the guest),
  **pin_cpus** ``xl vcpu-pin``, **pause/resume** ``xl pause/unpause``, **suspend/resume**
  ``xl save``/``xl restore``, **migration** ``xl migrate`` through the TLS tunnel
  (:mod:`corral.hypervisor.xen.migration`).
* **console**: PV: the ``xl console <name>`` command to run on the node; HVM: VNC on the
  instance's port (the serial console command in the details).
* **verify**: ``xl info`` answers and every bridge the configs name exists.
* **powercycle**: as Linux (SysRq ``b`` from dom0 resets the machine through Xen).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from corral.common.errors import HypervisorError, ParamError
from corral.common.paths import Paths
from corral.hypervisor.base import Capabilities, ConsoleInfo, HvNodeInfo, InstanceSpec
from corral.hypervisor.xen.migration import XenMigration
from corral.objects.params.hv_xen import (
    XEN_HVM_HVPARAMS,
    XEN_PVM_HVPARAMS,
    xen_combination_problems,
)
from corral.objects.params.spec import Schema

#: hvparams naming files that must exist on the node (checked by validate_params).
FILE_PARAMS = (
    "kernel_path",
    "initrd_path",
    "bootloader_path",
    "cdrom_image_path",
    "device_model",
    "vnc_password_file",
)
_BRIDGE = re.compile(r"\bbridge=([^,\"'\s\]]+)")


class XenBase(XenMigration):
    """What ``xen-pvm`` and ``xen-hvm`` share; see the module docstring."""

    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        live_migration=True,
        balloon=True,
        pause=True,
        serial_console=True,
        runs_processes=False,
    )

    @classmethod
    def from_paths(cls, paths: Paths) -> Self:
        """The driver of a node laid out by ``paths`` (used by the registry)."""
        return cls(paths.hv_run_dir(cls.NAME), paths=paths)

    # --- parameters --------------------------------------------------------------------------

    def validate_params(self, hvparams: Mapping[str, Any]) -> None:
        """Check filled hvparams against this node: files exist, the toolstack is installed.

        Raises:
            ParamError: by key: syntax or contradicting values; a file named by
                ``kernel_path``, ``initrd_path``, ``bootloader_path``, ``cdrom_image_path``,
                ``device_model`` or ``vnc_password_file`` that does not exist here; a
                ``xen_cmd`` not in PATH.
        """
        hv = self._filled(hvparams)
        problems = dict(xen_combination_problems(hv, self.NAME))
        for key in FILE_PARAMS:
            value = str(hv.get(key) or "")
            if key == "kernel_path" and not self.HVM and hv.get("use_bootloader"):
                continue  # the bootloader finds the kernel inside the guest's disk
            if value and not os.path.exists(value):
                problems[key] = f"{value} does not exist on this node"
        command = str(hv.get("xen_cmd") or self.xl_command)
        if shutil.which(command) is None:
            problems["xen_cmd"] = f"{command!r} is not installed on this node (not in PATH)"
        if problems:
            raise ParamError(problems, context=self.PARAMS.name)

    # --- console, node -----------------------------------------------------------------------

    def _serial_argv(self, name: str) -> list[str]:
        return [self.xl_command, "console", name]

    def console(self, spec: InstanceSpec, *, node_host: str) -> ConsoleInfo:
        """PV: ``xl console <name>`` to run on the node (Ctrl-] leaves); HVM: see XenHvm.

        Raises:
            HypervisorError: kind INVALID for a bad instance name.
        """
        self._check_name(spec.name)
        return ConsoleInfo(
            instance=spec.name,
            kind="ssh",
            host=node_host,
            command=self._serial_argv(spec.name),
            message=f"Console of {spec.name}; press Ctrl-] to leave.",
        )

    def node_info(self) -> HvNodeInfo:
        """``xl info`` merged with ``xl list`` (memory, dom0 memory, CPUs, NUMA, version).

        Raises:
            HypervisorError: xl failed or printed something unexpected.
        """
        return self.xl.node_info(self.NAME)

    def _config_bridges(self) -> set[str]:
        bridges: set[str] = set()
        for path in glob.glob(os.path.join(glob.escape(self.run_dir), "*.cfg")):
            with contextlib.suppress(OSError), open(path, encoding="utf-8") as fh:
                bridges.update(_BRIDGE.findall(fh.read()))
        return bridges

    def verify(self) -> list[str]:
        """Problems that keep this node from running Xen domains (empty = fine).

        Checks that ``xl`` is installed and ``xl info`` answers (Xen runs, we are in dom0),
        and that every bridge named in this driver's configs exists.
        """
        if shutil.which(self.xl_command) is None:
            return [f"{self.xl_command} is missing (install xen-utils)"]
        problems = []
        try:
            self.xl.info()
        except HypervisorError as exc:
            problems.append(f"the Xen toolstack does not answer: {exc}")
        for bridge in sorted(self._config_bridges()):
            if not os.path.exists(os.path.join(self.sys_class_net, bridge)):
                problems.append(f"bridge {bridge} used by a running domain does not exist")
        return problems


class XenPvm(XenBase):
    """Xen paravirtual guests (``xen-pvm``): kernel from dom0 or a bootloader."""

    NAME: ClassVar[str] = "xen-pvm"
    PARAMS: ClassVar[Schema] = XEN_PVM_HVPARAMS
    HVM: ClassVar[bool] = False


class XenHvm(XenBase):
    """Xen fully virtualized guests (``xen-hvm``): firmware, device model, VNC."""

    NAME: ClassVar[str] = "xen-hvm"
    PARAMS: ClassVar[Schema] = XEN_HVM_HVPARAMS
    HVM: ClassVar[bool] = True

    def console(self, spec: InstanceSpec, *, node_host: str) -> ConsoleInfo:
        """VNC on the instance's port (``network_port``); the serial console otherwise.

        The serial console command (``xl console``) is in ``details["serial"]`` when
        ``serial_console`` is on.

        Raises:
            HypervisorError: kind INVALID for a bad instance name.
        """
        self._check_name(spec.name)
        runtime = self._load_runtime(spec.name)
        port = runtime.vnc_port if runtime and runtime.vnc_port else spec.network_port
        hv = self._filled(spec.hvparams)
        serial = bool(hv.get("serial_console"))
        details: dict[str, Any] = {}
        if serial:
            details["serial"] = {"command": self._serial_argv(spec.name)}
        if port is None:
            return ConsoleInfo(
                instance=spec.name,
                kind="ssh",
                host=node_host,
                command=self._serial_argv(spec.name),
                message=f"Serial console of {spec.name} (it has no VNC port); Ctrl-] leaves.",
                details=details,
            )
        bind = str(hv.get("vnc_bind_address") or "")
        host = node_host if bind in ("", "0.0.0.0", "::") else bind
        details["vnc"] = {
            "host": host,
            "port": port,
            "display": port - 5900,
            "password": bool(hv.get("vnc_password_file")),
            "tls": False,
        }
        return ConsoleInfo(
            instance=spec.name,
            kind="vnc",
            host=host,
            port=port,
            display=port - 5900,
            message=f"VNC console of {spec.name} on {host}:{port}",
            details=details,
        )

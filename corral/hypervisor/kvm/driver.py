"""The KVM/QEMU hypervisor driver.

It joins the pieces of this package: :mod:`accel` picks the accelerator, :mod:`cmdline`
builds the argv (pure), :mod:`runtime` records it, :mod:`network` creates taps,
:mod:`process` owns the QEMU process and :mod:`monitor` talks QMP.

Semantics chosen here (also in docs/hypervisors/kvm.md):

* **start** leaves a running (or paused) guest, or nothing: on any failure the QEMU process is
  killed and taps, sockets and runtime files are removed (``common/revert.Reverter``). The
  serial and QEMU logs are kept under the log directory for diagnosis.
* **stop** presses the ACPI power button and waits up to ``timeout`` seconds, then asks QEMU
  to ``quit``, then SIGKILLs it; afterwards the run files and taps are gone.
* **reboot** hard = ``system_reset`` in place (QEMU's reset button; with
  ``reboot_behavior=exit`` QEMU would exit on reset, so there a hard reboot is a kill and a
  fresh start instead). Soft = Ganeti's KVM ``RebootInstance``: an ACPI shutdown (bounded by
  the ``shutdown_timeout`` hvparam, then quit/kill) followed by a start from the *saved
  runtime*, i.e. the same command line, accelerator and devices as before.
* A guest that powered itself off makes QEMU exit; QEMU's own ``SHUTDOWN`` event (kept by
  :mod:`events`) tells that apart from a crash or a stop by Corral, and the instance is then
  listed with state SHUTDOWN until an operation cleans it up (the master records it as
  "user down"). Pause/resume and suspend/restore are in :mod:`lifecycle`, migration in
  :mod:`migration`.
* Everything per instance is under ``<run_dir>/<instance>/``; a per-instance ``flock`` keeps
  start/stop/reboot and the cleanup of stale entries from racing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError, ParamError
from corral.common.revert import Reverter
from corral.hypervisor.base import (
    AttachedDisk,
    ConsoleInfo,
    HvNodeInfo,
    InstanceInfo,
    InstanceSpec,
    InstanceState,
)
from corral.hypervisor.kvm import accel as accel_mod
from corral.hypervisor.kvm import events, network
from corral.hypervisor.kvm.cmdline import build_plan, launch_argv
from corral.hypervisor.kvm.core import KvmCore
from corral.hypervisor.kvm.devices import VNC_BASE_PORT
from corral.hypervisor.kvm.host import cpu_time, read_meminfo
from corral.hypervisor.kvm.hotplug import KvmHotplug
from corral.hypervisor.kvm.lifecycle import KvmLifecycle
from corral.hypervisor.kvm.migration import KvmMigration
from corral.hypervisor.kvm.monitor import QmpSession
from corral.hypervisor.kvm.pinning import KvmPinning
from corral.hypervisor.kvm.process import QemuProcess
from corral.hypervisor.kvm.runtime import (
    InstanceLayout,
    KvmRuntime,
    save_runtime,
)
from corral.hypervisor.kvm.validate import KvmValidate
from corral.objects.params.hv import KVM_HVPARAMS

log = logging.getLogger(__name__)

MIB = 1024 * 1024

#: QEMU run states (query-status) mapped to what drivers report.
_STATE_MAP = {
    "running": InstanceState.RUNNING,
    "debug": InstanceState.RUNNING,
    "paused": InstanceState.PAUSED,
    "prelaunch": InstanceState.PAUSED,
    "inmigrate": InstanceState.PAUSED,
    "postmigrate": InstanceState.PAUSED,
    "finish-migrate": InstanceState.PAUSED,
    "restore-vm": InstanceState.PAUSED,
    "save-vm": InstanceState.PAUSED,
    "suspended": InstanceState.PAUSED,
    "watchdog": InstanceState.PAUSED,
    "colo": InstanceState.RUNNING,
    "shutdown": InstanceState.SHUTDOWN,
    "guest-panicked": InstanceState.CRASHED,
    "internal-error": InstanceState.CRASHED,
    "io-error": InstanceState.CRASHED,
}

_SOCAT_ESCAPE = "0x1d"  # Ctrl-]


class Kvm(KvmLifecycle, KvmMigration, KvmHotplug, KvmPinning, KvmValidate, KvmCore):
    """KVM/QEMU guests; see the module docstring for the semantics.

    The constructor arguments are documented on :class:`~corral.hypervisor.kvm.core.KvmCore`.
    """

    # --- parameters ----------------------------------------------------------------------

    def validate_params(self, hvparams: Mapping[str, Any]) -> None:
        """Check filled KVM hvparams against this node (checks in :mod:`validate`).

        Raises:
            ParamError: every problem by key (syntax first; then the node checks of
                :meth:`~corral.hypervisor.kvm.validate.KvmValidate._param_problems` and the
                cpu_mask check).
        """
        hv = self._filled(hvparams)
        problems = self._param_problems(hv)
        cpu_problem = self._cpu_mask_problem(hv)
        if cpu_problem:
            problems["cpu_mask"] = cpu_problem
        if problems:
            raise ParamError(problems, context="hvparams/kvm")

    # --- lifecycle -----------------------------------------------------------------------

    def start(
        self, spec: InstanceSpec, disks: Sequence[AttachedDisk], *, paused: bool = False
    ) -> None:
        """Start the instance; see the module docstring.

        Raises:
            HypervisorError: kind WRONG_STATE if it already runs; kind INVALID for parameters
                that cannot work here (``fields["problems"]`` by key); LaunchError when QEMU
                refused to start (with QEMU's own message). Nothing is left behind.
        """
        layout = self._layout(spec.name)
        problem = layout.socket_problem()
        if problem:
            raise HypervisorError(problem, kind=ErrorKind.INVALID)
        try:
            hv = self._filled(spec.hvparams)
            self.validate_params(hv)
        except ParamError as exc:
            raise HypervisorError(
                f"cannot start {spec.name}: {exc}", kind=ErrorKind.INVALID, problems=exc.problems
            ) from exc
        choice = accel_mod.choose_accel(hv["accel"], self.probe_kvm())
        with self._lock(layout):
            old = self._load(layout)
            if self._process(layout, old) is not None:
                raise HypervisorError(
                    f"instance {spec.name} is already running", kind=ErrorKind.WRONG_STATE
                )
            self._cleanup_files(layout, old)  # leftovers of a guest that died on its own
            # probed QEMU facts, the uid (pool: claimed now), chroot and UEFI store paths
            host, security = self._host_facts(spec, hv, layout, choice)
            try:
                plan = build_plan(spec, disks, hv, host, layout)
            except BaseException:
                self._release_security(spec.name, security)
                raise
            runtime = KvmRuntime(
                name=spec.name,
                uuid=spec.uuid,
                argv=plan.argv,
                accel=choice.accel,
                accel_reason=choice.reason,
                qemu_version=host.qemu_version,
                machine=plan.machine,
                spec=spec,
                disks=plan.disks,
                nics=plan.nics,
                paused_at_start=paused,
                hvparams=hv,
                security=security,
            )
            try:
                self._launch(layout, runtime, paused=paused)
            except BaseException:
                self._release_security(spec.name, security)
                raise
        log.info(
            "%s: started (pid %s, accel %s%s, %s)",
            spec.name,
            runtime.pid,
            choice.accel,
            " requested as auto" if choice.requested == "auto" else "",
            "paused" if paused else "running",
        )

    def _launch(
        self,
        layout: InstanceLayout,
        runtime: KvmRuntime,
        *,
        paused: bool,
        incoming: str | None = None,
    ) -> None:
        """Create the run dir and taps, run QEMU, wait for QMP, save the runtime.

        The caller holds the instance lock. On failure everything created is undone.
        ``incoming`` adds ``-incoming <incoming>`` (migration destination, restore); the
        event monitor of :mod:`events` is always added.

        Raises:
            HypervisorError, LaunchError: as :meth:`start`.
        """
        network.check_nic_links(runtime.nics, sys_class_net=self.sys_class_net)
        with Reverter() as rv:
            try:
                os.makedirs(layout.dir, mode=0o700)
                os.makedirs(layout.log_dir, exist_ok=True)
                if os.path.exists(layout.serial_log):
                    os.replace(layout.serial_log, layout.serial_log + ".1")
            except OSError as exc:
                raise HypervisorError(
                    f"cannot create the run directory {layout.dir}: {exc.strerror}"
                ) from exc
            rv.add(lambda: shutil.rmtree(layout.dir, ignore_errors=True), "remove run dir")
            self._prepare_host(layout, runtime, rv)  # uid, chroot, secrets, UEFI store
            for nic in runtime.nics:
                if nic.tap:
                    network.create_tap(self.runner, nic)
                    rv.add(
                        functools.partial(network.remove_tap, self.runner, nic.tap), "remove tap"
                    )
            runtime.pid = None
            runtime.paused_at_start = paused
            runtime.start_time = time.time()
            save_runtime(layout, runtime)
            proc = QemuProcess(
                layout,
                name=runtime.name,
                uuid=runtime.uuid,
                qmp_timeout=self.qmp_timeout,
                proc=self.proc,
            )
            rv.add(proc.kill, "kill QEMU")
            events.prepare(layout)
            argv = launch_argv(runtime.argv, paused=paused) + events.event_monitor_argv(layout)
            if incoming is not None:
                argv += ["-incoming", incoming]
            runtime.pid = proc.launch(argv, timeout=self.launch_timeout)
            events.enable(layout)
            proc.wait_qmp(timeout=self.launch_timeout)
            self._after_launch(layout, runtime, proc, incoming=incoming is not None)
            save_runtime(layout, runtime)
            rv.success()

    def stop(self, name: str, *, timeout: float, force: bool = False) -> None:
        """Stop the instance (ACPI for ``timeout`` s, then quit, then SIGKILL) and clean up.

        Raises:
            HypervisorError: QEMU survived SIGKILL.
        """
        layout = self._layout(name)
        with self._lock(layout):
            runtime = self._load(layout)
            proc = self._process(layout, runtime)
            if proc is not None:
                events.mark_stopping(layout)
            how = proc.shutdown(timeout=timeout, force=force) if proc else "not-running"
            self._cleanup_files(layout, runtime)
        log.info("%s: stopped (%s)", name, how)

    def reboot(self, name: str, *, hard: bool) -> None:
        """Reboot: hard = system_reset in place, soft = ACPI shutdown + start from the runtime.

        Raises:
            HypervisorError: kind WRONG_STATE when it does not run; the reset or restart
                failed (after a failed restart the instance is stopped and cleaned up).
        """
        layout = self._layout(name)
        with self._lock(layout):
            runtime = self._load(layout)
            proc = self._process(layout, runtime)
            if proc is None or runtime is None:
                raise HypervisorError(f"instance {name} is not running", kind=ErrorKind.WRONG_STATE)
            if hard and runtime.hvparams.get("reboot_behavior") != "exit":
                proc.monitor.call(lambda q: q.system_reset())
                log.info("%s: hard reboot (system_reset)", name)
                return
            timeout = float(runtime.hvparams.get("shutdown_timeout", 120))
            events.mark_stopping(layout)
            how = proc.shutdown(timeout=timeout, force=hard)
            self._cleanup_files(layout, runtime)
            self._launch(layout, runtime, paused=False)
        log.info(
            "%s: %s reboot (stopped by %s, restarted from runtime, pid %s)",
            name,
            "hard" if hard else "soft",
            how,
            runtime.pid,
        )

    # --- queries -------------------------------------------------------------------------

    def list_instances(self) -> list[str]:
        """Names of guests whose QEMU runs, or that powered themselves off (not cleaned yet).

        A run-dir entry counts when its QEMU is alive and is theirs, or when the guest
        powered itself off and nothing cleaned it up yet (it is then in state SHUTDOWN).

        Entries of guests that exited otherwise (crash, kill) are cleaned up on the way.

        Raises:
            HypervisorError: the run directory cannot be read.
        """
        return [
            name
            for name in self._entries()
            if self._live(name) is not None or self._powered_off(name) is not None
        ]

    def instance_info(self, name: str) -> InstanceInfo | None:
        """Live state from QMP (status, balloon) and /proc (pid, CPU time).

        A guest whose QMP does not answer is reported RUNNING with ``details["qmp_error"]``,
        so one wedged guest does not hide the others.

        Raises:
            HypervisorError: the run directory cannot be read.
        """
        live = self._live(name)
        if live is None:
            return self._shutdown_info(name)
        layout, runtime, proc = live

        async def query(q: QmpSession) -> tuple[str, int | None]:
            status = await q.query_status()
            try:
                actual: int | None = await q.query_balloon()
            except HypervisorError:
                actual = None
            return status.status, actual

        details: dict[str, Any] = {
            "serial_socket": layout.serial_socket,
            "serial_log": layout.serial_log,
            "qmp_socket": layout.qmp_socket,
        }
        try:
            status, actual = proc.monitor.call(query)
        except HypervisorError as exc:
            status, actual = "unknown", None
            details["qmp_error"] = str(exc)
        state = _STATE_MAP.get(status, InstanceState.RUNNING)
        spec = runtime.spec if runtime else None
        memory = actual // MIB if actual else (spec.memory if spec else 0)
        if runtime:
            details.update(
                max_memory=runtime.spec.memory,
                min_memory=runtime.spec.min_memory,
                accel=runtime.accel,
                accel_reason=runtime.accel_reason,
                qemu_version=runtime.qemu_version,
                machine=runtime.machine,
                start_time=runtime.start_time,
            )
        details["status"] = status
        role = self._migration_role(layout)
        if role:
            details["migration"] = role
        return InstanceInfo(
            name=name,
            state=state,
            memory=memory,
            vcpus=spec.vcpus if spec else 0,
            cpu_time=cpu_time(proc.pid, self.proc) if proc.pid else 0.0,
            pid=proc.pid,
            uuid=runtime.uuid if runtime else "",
            details=details,
        )

    def _shutdown_info(self, name: str) -> InstanceInfo | None:
        """State SHUTDOWN for a guest that powered itself off (None for any other exit)."""
        event = self._powered_off(name)
        if event is None:
            return None
        runtime = self._load(self._layout(name))
        return InstanceInfo(
            name=name,
            state=InstanceState.SHUTDOWN,
            memory=0,
            vcpus=runtime.spec.vcpus if runtime else 0,
            uuid=runtime.uuid if runtime else "",
            details={
                "status": "shutdown",
                "shutdown_reason": event.reason,
                "shutdown_time": event.timestamp,
            },
        )

    def balloon(self, name: str, memory: int) -> int:
        """Balloon a running guest to ``memory`` MiB and wait until it got there.

        Raises:
            HypervisorError: kind WRONG_STATE when not running; kind INVALID for a target
                outside ``[min_memory, memory]`` of the instance; the guest did not reach the
                target within ``balloon_timeout`` (no balloon driver?).
        """
        live = self._live(name)
        if live is None or live[1] is None:
            raise HypervisorError(f"instance {name} is not running", kind=ErrorKind.WRONG_STATE)
        _, runtime, proc = live
        assert runtime is not None
        low, high = runtime.spec.min_memory, runtime.spec.memory
        if not low <= memory <= high:
            raise HypervisorError(
                f"cannot balloon {name} to {memory} MiB: it must stay between min_memory "
                f"{low} MiB and memory {high} MiB",
                kind=ErrorKind.INVALID,
                memory=memory,
            )
        target = memory * MIB
        tolerance = max(MIB, target // 200)
        deadline = time.monotonic() + self.balloon_timeout

        async def act(q: QmpSession) -> int:
            await q.balloon(target)
            while True:
                actual = await q.query_balloon()
                if abs(actual - target) <= tolerance:
                    return actual
                if time.monotonic() > deadline:
                    raise HypervisorError(
                        f"{name} did not reach {memory} MiB within {self.balloon_timeout:g}s "
                        f"(now {actual // MIB} MiB; is the guest's virtio_balloon driver loaded?)",
                        kind=ErrorKind.ENVIRONMENT,
                        actual=actual // MIB,
                    )
                await asyncio.sleep(0.1)

        actual = proc.monitor.call(act)
        log.info("%s: ballooned to %d MiB", name, actual // MIB)
        return round(actual / MIB)

    def resize_disk(self, name: str, index: int, new_size: int) -> None:
        """Grow disk ``index`` of a running guest with QMP ``block_resize``.

        NOTE: QEMU holds a write lock on its images, so ``qemu-img resize`` is refused while
        the guest runs; ``block_resize`` grows the image itself and the guest sees the new
        capacity at once (virtio-blk sends a config-change interrupt).

        Raises:
            HypervisorError: not running (WRONG_STATE), no such disk (NOT_FOUND), QMP failed.
        """
        live = self._live(name)
        if live is None or live[1] is None:
            raise HypervisorError(f"instance {name} is not running", kind=ErrorKind.WRONG_STATE)
        _, runtime, proc = live
        assert runtime is not None
        disk = next((d for d in runtime.disks if d.index == index), None)
        if disk is None:
            raise HypervisorError(
                f"instance {name} has no disk {index} attached", kind=ErrorKind.NOT_FOUND
            )
        node_name = disk.node_name

        async def act(q: QmpSession) -> None:
            await q.block_resize(node_name, new_size * MIB)

        proc.monitor.call(act)
        log.info("%s: disk %d resized online to %d MiB", name, index, new_size)

    def console(self, spec: InstanceSpec, *, node_host: str) -> ConsoleInfo:
        """How to reach the instance: serial first (as Ganeti), else VNC, else SPICE.

        * ``serial_console`` on: ``kind="ssh"``, the ``socat`` command to run on the node
          (leave with Ctrl-]);
        * otherwise VNC (``kind="vnc"``: host, port, ``display``) or SPICE
          (``kind="spice"``: host, port) when enabled;
        * otherwise ``kind="msg"``.

        Whatever the kind, ``details`` carries every enabled graphical console (host, port,
        display, whether a password and TLS protect it) and the message names it, so API
        clients find VNC/SPICE also for guests with a serial console.

        Raises:
            HypervisorError: kind INVALID for unreadable hvparams.
        """
        layout = self._layout(spec.name)
        try:
            hv = self._filled(spec.hvparams)
        except ParamError as exc:
            raise HypervisorError(str(exc), kind=ErrorKind.INVALID) from exc
        details: dict[str, Any] = {}
        texts: list[str] = []
        vnc_host, vnc_port = self._vnc_endpoint(layout, spec, hv, node_host)
        if vnc_port:
            details["vnc"] = {
                "host": vnc_host,
                "port": vnc_port,
                "display": vnc_port - VNC_BASE_PORT,
                "password": bool(hv["vnc_password_file"]),
                "tls": bool(hv["vnc_tls"]),
            }
            texts.append(f" VNC: {vnc_host}:{vnc_port}.")
        if hv["spice_bind"] and spec.network_port:
            spice_host = node_host if hv["spice_bind"] in ("0.0.0.0", "::") else hv["spice_bind"]
            details["spice"] = {
                "host": spice_host,
                "port": spec.network_port,
                "password": bool(hv["spice_password_file"]),
                "tls": bool(hv["spice_use_tls"]),
            }
            texts.append(f" SPICE: {spice_host}:{spec.network_port}.")
        extra = "".join(texts)
        if hv["serial_console"]:
            return ConsoleInfo(
                instance=spec.name,
                kind="ssh",
                host=node_host,
                command=[
                    "socat",
                    f"STDIO,raw,echo=0,escape={_SOCAT_ESCAPE}",
                    f"UNIX-CONNECT:{layout.serial_socket}",
                ],
                socket=layout.serial_socket,
                message=f"Serial console of {spec.name}; press Ctrl-] to leave.{extra}",
                details=details,
            )
        for kind in ("vnc", "spice"):
            if kind in details:
                info = details[kind]
                return ConsoleInfo(
                    instance=spec.name,
                    kind=kind,
                    host=info["host"],
                    port=info["port"],
                    display=info.get("display"),
                    message=f"{kind.upper()} console of {spec.name}.{extra}",
                    details=details,
                )
        return ConsoleInfo(
            instance=spec.name,
            kind="msg",
            message=f"{spec.name} has no console: serial_console is off and neither VNC nor "
            "SPICE is enabled",
        )

    def _vnc_endpoint(
        self, layout: InstanceLayout, spec: InstanceSpec, hv: Mapping[str, Any], node_host: str
    ) -> tuple[str, int | None]:
        address = str(hv["vnc_bind_address"])
        if not address:
            return "", None
        host = node_host if address in ("0.0.0.0", "::") else address
        if spec.network_port is not None and spec.network_port >= VNC_BASE_PORT:
            return host, spec.network_port
        proc = QemuProcess.attach(
            layout, name=spec.name, uuid=spec.uuid, proc=self.proc, qmp_timeout=self.qmp_timeout
        )
        if proc is None:
            return host, None
        with contextlib.suppress(HypervisorError):
            return host, proc.monitor.call(lambda q: q.query_vnc()).port
        return host, None

    def node_info(self) -> HvNodeInfo:
        """Memory from /proc/meminfo, CPUs from os.cpu_count, QEMU's version, KVM usability.

        Raises:
            HypervisorError: /proc/meminfo cannot be read.
        """
        mem = read_meminfo(self.meminfo)
        probe = self.probe_kvm()
        binary = str(KVM_HVPARAMS.specs["kvm_path"].default)
        try:
            version = self.qemu_version(binary)
        except HypervisorError:  # missing or broken binary: verify() reports it
            version = ""
        used = 0
        for name in self._entries():
            layout = self._layout(name)
            runtime = self._load(layout)
            if runtime and self._process(layout, runtime) is not None:
                used += runtime.spec.memory
        return HvNodeInfo(
            hypervisor=self.NAME,
            memory_total=mem.get("MemTotal", 0) // 1024,
            memory_free=mem.get("MemAvailable", mem.get("MemFree", 0)) // 1024,
            memory_hv=used,
            cpu_total=os.cpu_count() or 1,
            hv_version=version,
            details={
                "kvm_usable": probe.usable,
                "kvm_reason": probe.reason,
                "default_accel": "kvm" if probe.usable else "tcg",
            },
        )

    def verify(self) -> list[str]:
        """Problems that keep this node from running KVM guests (empty = fine).

        Checks QEMU (the default ``kvm_path``), ``qemu-img`` and ``socat``. KVM not being
        usable is *not* a problem (guests fall back to TCG); it is logged here and shown by
        :meth:`node_info` (``details["kvm_usable"]``).
        """
        problems = []
        binary = str(KVM_HVPARAMS.specs["kvm_path"].default)
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            problems.append(f"QEMU binary {binary} is missing (install qemu-system-x86)")
        else:
            try:
                self.qemu_version(binary)
            except HypervisorError as exc:
                problems.append(f"{binary} --version failed: {exc}")
        for tool, package in (("qemu-img", "qemu-utils"), ("socat", "socat")):
            if shutil.which(tool) is None:
                problems.append(f"{tool} is missing (install {package})")
        probe = self.probe_kvm()
        log.info("kvm verify: KVM %s: %s", "usable" if probe.usable else "not usable", probe.reason)
        return problems

    def cleanup(self, name: str) -> None:
        """Remove the run files and taps of an instance that no longer runs.

        Raises:
            HypervisorError: kind WRONG_STATE when it still runs.
        """
        layout = self._layout(name)
        with self._lock(layout):
            runtime = self._load(layout)
            if self._process(layout, runtime) is not None:
                raise HypervisorError(
                    f"instance {name} is still running", kind=ErrorKind.WRONG_STATE
                )
            self._cleanup_files(layout, runtime)

"""The core of the KVM driver: construction, per-instance layout, locks, live lookups."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from corral.common.errors import ErrorKind, HypervisorError
from corral.common.paths import Paths
from corral.common.runcmd import Runner, run
from corral.hypervisor.base import (
    Capabilities,
    Hypervisor,
)
from corral.hypervisor.kvm import accel as accel_mod
from corral.hypervisor.kvm import events, network
from corral.hypervisor.kvm.probe import QemuProber
from corral.hypervisor.kvm.process import HARD_STOP_GRACE, PROC, QemuProcess
from corral.hypervisor.kvm.runtime import (
    InstanceLayout,
    InstanceLock,
    KvmRuntime,
    load_runtime,
)
from corral.objects.params.hv import KVM_HVPARAMS
from corral.objects.params.spec import Schema

log = logging.getLogger(__name__)


class KvmCore(Hypervisor):
    """State and helpers shared by the KVM driver and its feature modules.

    The driver (:class:`~corral.hypervisor.kvm.driver.Kvm`) is assembled from this core and
    one class per feature (hotplug, migration, ...) so each concern stays in its own module.

    Args:
        run_dir: the driver's run directory (``paths.hv_run_dir("kvm")``).
        log_dir: where serial and QEMU logs go (default ``<run_dir>/logs``).
        runner: runs short commands (``ip``, ``qemu --version``); tests inject a fake.
        kvm_device, cpuinfo: probed by :func:`accel.probe_kvm`.
        meminfo: read by :meth:`node_info`.
        sys_class_net: where bridges and taps are looked up.
        proc: the procfs mount.
        launch_timeout: seconds QEMU may take to initialise (``-daemonize`` returns).
        qmp_timeout: seconds for each QMP connection and command.
        balloon_timeout: seconds a guest may take to reach a balloon target.
        lock_timeout: seconds to wait for another operation on the same instance.
        data_dir: the node's persistent data directory (UEFI variable stores, uid pool file);
            default ``<parent of run_dir>/kvm-data`` for tests that give only a run dir.
    """

    NAME: ClassVar[str] = "kvm"
    PARAMS: ClassVar[Schema] = KVM_HVPARAMS
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        live_migration=True,
        hotplug_disk=True,
        hotplug_nic=True,
        balloon=True,
        pause=True,
        serial_console=True,
        runs_processes=True,
        online_disk_resize=True,
    )

    def __init__(
        self,
        run_dir: str,
        *,
        log_dir: str | None = None,
        runner: Runner = run,
        kvm_device: str = accel_mod.KVM_DEVICE,
        cpuinfo: str = accel_mod.CPUINFO,
        meminfo: str = "/proc/meminfo",
        sys_class_net: str = network.SYS_CLASS_NET,
        proc: str = PROC,
        launch_timeout: float = 60.0,
        qmp_timeout: float = 10.0,
        balloon_timeout: float = 30.0,
        lock_timeout: float = 600.0,
        data_dir: str | None = None,
    ) -> None:
        super().__init__(run_dir)
        self.log_dir = log_dir or os.path.join(run_dir, "logs")
        # Persistent node files (UEFI variable stores, the uid pool file); see kvm/hostprep.py.
        self.data_dir = data_dir or os.path.join(os.path.dirname(run_dir.rstrip("/")), "kvm-data")
        self.runner = runner
        self.kvm_device = kvm_device
        self.cpuinfo = cpuinfo
        self.meminfo = meminfo
        self.sys_class_net = sys_class_net
        self.proc = proc
        self.launch_timeout = launch_timeout
        self.qmp_timeout = qmp_timeout
        self.balloon_timeout = balloon_timeout
        self.lock_timeout = lock_timeout
        self.facts = QemuProber(runner)  # probed once per binary (kvm/probe.py)

    @classmethod
    def from_paths(cls, paths: Paths) -> Self:
        """The driver of a node laid out by ``paths`` (used by the registry)."""
        return cls(
            paths.hv_run_dir(cls.NAME),
            log_dir=os.path.join(paths.log_dir, "kvm"),
            data_dir=paths.data_dir,
        )

    # --- helpers -------------------------------------------------------------------------

    def _layout(self, name: str) -> InstanceLayout:
        if not name or "/" in name or name.startswith("."):
            raise HypervisorError(f"invalid instance name {name!r}", kind=ErrorKind.INVALID)
        return InstanceLayout(run_dir=self.run_dir, log_dir=self.log_dir, name=name)

    def _lock(self, layout: InstanceLayout, *, wait: bool = True) -> InstanceLock:
        """The instance's lock (see :class:`~corral.hypervisor.kvm.runtime.InstanceLock`)."""
        return InstanceLock(layout, wait=wait, timeout=self.lock_timeout)

    @staticmethod
    def _filled(hvparams: Mapping[str, Any]) -> dict[str, Any]:
        """Typed, complete hvparams (defaults for missing keys).

        Raises:
            ParamError: unknown keys or bad values.
        """
        return KVM_HVPARAMS.fill(KVM_HVPARAMS.check_syntax(dict(hvparams)))

    def qemu_version(self, binary: str) -> str:
        """The version of a QEMU binary (``7.2.22``), cached per binary and mtime.

        Raises:
            HypervisorError: the binary is missing or cannot be run.
        """
        return self.facts.version(binary)

    def machine_types(self, binary: str) -> set[str]:
        """Machine types (and aliases) a QEMU binary supports.

        Raises:
            HypervisorError: the binary is missing or cannot be run.
        """
        return self.facts.machines(binary)

    def probe_kvm(self) -> accel_mod.KvmProbe:
        """Whether KVM can run ordinary guests here (see :mod:`accel`)."""
        return accel_mod.probe_kvm(kvm_device=self.kvm_device, cpuinfo=self.cpuinfo)

    def _process(self, layout: InstanceLayout, runtime: KvmRuntime | None) -> QemuProcess | None:
        return QemuProcess.attach(
            layout,
            name=layout.name,
            uuid=runtime.uuid if runtime else "",
            qmp_timeout=self.qmp_timeout,
            proc=self.proc,
        )

    def _load(self, layout: InstanceLayout) -> KvmRuntime | None:
        try:
            return load_runtime(layout)
        except HypervisorError as exc:
            log.warning("%s: ignoring unreadable runtime file: %s", layout.name, exc)
            return None

    def _cleanup_files(self, layout: InstanceLayout, runtime: KvmRuntime | None) -> None:
        """Remove taps, sockets, pid and runtime files of a stopped instance (never raises)."""
        for nic in runtime.nics if runtime else []:
            if nic.tap:
                network.remove_tap(self.runner, nic.tap)
        shutil.rmtree(layout.dir, ignore_errors=True)

    def _kill_and_clean(self, layout: InstanceLayout, runtime: KvmRuntime | None) -> None:
        """SIGKILL the instance's QEMU (if any) and remove its run files; never raises."""
        proc = self._process(layout, runtime)
        if proc is not None:
            events.mark_stopping(layout)
            try:
                proc.kill()
            except HypervisorError as exc:
                log.warning("%s: %s", layout.name, exc)
        self._cleanup_files(layout, runtime)

    def _quit_now(self, proc: QemuProcess, *, sent: bool = False) -> str:
        """``quit`` a QEMU that has nothing left to save (migrated away, saved to a file).

        Like ``proc.shutdown(force=True)`` but polls for the exit every 5 ms instead of
        50 ms: a migration or a suspend is not over until the source is gone. ``sent``: the
        caller sent ``quit`` already; only wait.

        Returns:
            ``"quit"``, or ``"kill"`` when QEMU did not exit within the grace period.

        Raises:
            HypervisorError: QEMU survived SIGKILL.
        """
        if not sent:
            with contextlib.suppress(HypervisorError):
                proc.monitor.call(lambda q: q.quit())
        deadline = time.monotonic() + HARD_STOP_GRACE
        while proc.alive():
            if time.monotonic() > deadline:
                proc.kill()
                return "kill"
            time.sleep(0.005)
        return "quit"

    # --- live lookups -------------------------------------------------------------------

    def _entries(self) -> list[str]:
        try:
            with os.scandir(self.run_dir) as it:
                return sorted(
                    e.name
                    for e in it
                    if e.is_dir(follow_symlinks=False)
                    and not e.name.startswith(".")
                    and e.name != "logs"
                )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HypervisorError(f"cannot list {self.run_dir}: {exc.strerror}") from exc

    def _live(self, name: str) -> tuple[InstanceLayout, KvmRuntime | None, QemuProcess] | None:
        """The instance's runtime and process if it runs; cleans up a stale entry otherwise."""
        layout = self._layout(name)
        runtime = self._load(layout)
        proc = self._process(layout, runtime)
        if proc is not None:
            return layout, runtime, proc
        with self._lock(layout, wait=False) as locked:
            # NOTE: a busy lock means a start/stop is in progress: leave its files alone.
            if locked and os.path.isdir(layout.dir):
                runtime = self._load(layout)
                # NOTE: a guest that powered itself off keeps its entry: it is reported as
                # SHUTDOWN ("user down") until an operation cleans it (kvm/events.py).
                if self._process(layout, runtime) is None and not events.powered_off(layout):
                    log.info("%s: cleaning up after a guest that is no longer running", name)
                    self._cleanup_files(layout, runtime)
        return None

    def _require_live(self, name: str) -> tuple[InstanceLayout, KvmRuntime, QemuProcess]:
        """The instance's layout, runtime and process.

        Raises:
            HypervisorError: kind WRONG_STATE when it does not run (or has no runtime file).
        """
        live = self._live(name)
        runtime = live[1] if live is not None else None
        if live is None or runtime is None:
            raise HypervisorError(f"instance {name} is not running", kind=ErrorKind.WRONG_STATE)
        return live[0], runtime, live[2]

    def _powered_off(self, name: str) -> events.ShutdownEvent | None:
        """The guest's own power-off if that is how its QEMU ended (and it was not cleaned)."""
        layout = self._layout(name)
        event = events.powered_off(layout)
        if event is None or self._process(layout, self._load(layout)) is not None:
            return None
        return event

    def _launch(
        self,
        layout: InstanceLayout,
        runtime: KvmRuntime,
        *,
        paused: bool,
        incoming: str | None = None,
    ) -> None:
        """Create the run dir and taps, run QEMU, wait for QMP, save the runtime.

        ``incoming`` adds ``-incoming <incoming>`` (the destination of a migration or a
        restore). Implemented by the driver (:class:`~corral.hypervisor.kvm.driver.Kvm`).

        Raises:
            HypervisorError, LaunchError: nothing is left behind.
        """
        raise NotImplementedError

    def _after_launch(
        self, layout: InstanceLayout, runtime: KvmRuntime, proc: QemuProcess, *, incoming: bool
    ) -> None:
        """Hook run by :meth:`_launch` once QMP answers, before the runtime is saved.

        Feature classes override it to re-apply runtime state a fresh QEMU does not get from
        its argv (CPU pinning, NIC carrier) and call ``super()``. ``incoming``: the guest
        waits for a migration stream (device state then comes from the source).

        Raises:
            HypervisorError: the launch fails and is rolled back.
        """

"""The LXC hypervisor driver: system containers as instances.

The pieces: :mod:`lxcconf` builds the lxc.conf (pure), :mod:`mounts` attaches and mounts the
root disk, :mod:`cgroup` reads and changes limits, :mod:`lifecycle` runs the LXC tools and
keeps the runtime file. Semantics (also in docs/hypervisors/lxc.md):

* **start**: disk 0 (a raw file through a loop device, or a block device) is mounted on
  ``<run_dir>/<name>/rootfs``; the generated config is written; ``lxc-start -d`` starts the
  container and the driver waits until it is RUNNING (``lxc_startup_timeout``). On any failure
  the container is killed, the rootfs unmounted, the loop device detached and the files
  removed; the error quotes LXC's own log lines. The container's console goes to
  ``<log_dir>/<name>.console.log`` (truncated at each start).
* **stop**: the container's init is asked to halt (SIGPWR, repeated every second) for up to
  ``timeout`` seconds, then killed (``lxc-stop -k``); processes still left in its cgroups are
  SIGKILLed; then the rootfs tree is unmounted (sub-mounts first), the loop device detached and
  the files removed. ``force`` skips the clean phase.
* **reboot**: stop (soft: clean with a bounded wait; hard: kill) and start again from the
  runtime file, i.e. with the same config inputs. A container cannot reboot itself here: the
  default drops ``sys_boot``.
* **balloon** sets the memory cgroup limit of the running container (the kernel reclaims
  down to it or refuses); **pin_cpus** sets ``cpuset.cpus``; **pause/resume** freeze and thaw
  the container's cgroup.
* **migration** is not supported (kind INVALID, with the reason): a container's processes
  cannot be moved between nodes without CRIU, which Corral does not use; failover and move
  (stop, copy the disk, start) work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from corral.common.errors import CommandError, ErrorKind, HypervisorError, LaunchError, ParamError
from corral.common.paths import Paths
from corral.common.revert import Reverter
from corral.common.runcmd import Runner, run
from corral.hypervisor.base import (
    AttachedDisk,
    Capabilities,
    ConsoleInfo,
    HvNodeInfo,
    Hypervisor,
    InstanceInfo,
    InstanceSpec,
    InstanceState,
)
from corral.hypervisor.kvm.host import read_meminfo
from corral.hypervisor.lxc import mounts
from corral.hypervisor.lxc.cgroup import (
    MIB,
    CgroupLayout,
    ContainerCgroup,
    detect_layout,
    format_cpu_list,
    parse_cpu_list,
)
from corral.hypervisor.lxc.lifecycle import (
    InstanceFiles,
    LxcRuntime,
    LxcTools,
    load_runtime,
    log_tail,
    remove_files,
    save_runtime,
)
from corral.hypervisor.lxc.lxcconf import (
    ConfPaths,
    HostFacts,
    build_conf,
    cpuset_of_mask,
    missing_controllers,
)
from corral.objects.params.hv import LXC_HVPARAMS
from corral.objects.params.spec import Schema

log = logging.getLogger(__name__)

#: LXC's seccomp profile for privileged containers (Debian's lxc package).
SECCOMP_PROFILE = "/usr/share/lxc/config/common.seccomp"
#: Seconds a soft reboot waits for the clean halt before killing.
REBOOT_TIMEOUT = 30.0
#: Tools the driver runs (verify checks them).
TOOLS = {
    "lxc-start": "lxc",
    "lxc-stop": "lxc",
    "lxc-info": "lxc",
    "lxc-wait": "lxc",
    "lxc-attach": "lxc",
    "lxc-console": "lxc",
    "lxc-freeze": "lxc",
    "losetup": "mount",
    "mount": "mount",
    "umount": "mount",
}

_STATES = {
    "RUNNING": InstanceState.RUNNING,
    "STARTING": InstanceState.RUNNING,
    "STOPPING": InstanceState.RUNNING,
    "FROZEN": InstanceState.PAUSED,
    "FREEZING": InstanceState.PAUSED,
    "THAWED": InstanceState.RUNNING,
    "ABORTING": InstanceState.CRASHED,
    "STOPPED": InstanceState.SHUTDOWN,
}


class Lxc(Hypervisor):
    """LXC system containers; see the module docstring for the semantics.

    Args:
        run_dir: the driver's run directory, also its LXC path (``lxc-* -P``).
        log_dir: console and LXC logs (default ``<run_dir>/logs``).
        runner: runs the LXC, losetup and mount commands; tests may inject a fake.
        mountinfo: the mount table read for cgroups and sub-mounts.
        proc: the procfs mount (containers' cgroups).
        meminfo: read by :meth:`node_info`.
    """

    NAME: ClassVar[str] = "lxc"
    PARAMS: ClassVar[Schema] = LXC_HVPARAMS
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        balloon=True, pause=True, serial_console=True, runs_processes=True
    )

    def __init__(
        self,
        run_dir: str,
        *,
        log_dir: str | None = None,
        runner: Runner = run,
        mountinfo: str = mounts.MOUNTINFO,
        proc: str = "/proc",
        meminfo: str = "/proc/meminfo",
    ) -> None:
        super().__init__(run_dir)
        self.log_dir = log_dir or os.path.join(run_dir, "logs")
        self.runner = runner
        self.mountinfo = mountinfo
        self.proc = proc
        self.meminfo = meminfo
        self.tools = LxcTools(runner, run_dir)
        self._version = ""

    @classmethod
    def from_paths(cls, paths: Paths) -> Self:
        """The driver of a node laid out by ``paths`` (used by the registry)."""
        return cls(paths.hv_run_dir(cls.NAME), log_dir=os.path.join(paths.log_dir, "lxc"))

    # --- helpers -------------------------------------------------------------------------

    def _files(self, name: str) -> InstanceFiles:
        if not name or "/" in name or name.startswith(".") or name == "logs":
            raise HypervisorError(f"invalid instance name {name!r}", kind=ErrorKind.INVALID)
        return InstanceFiles(lxcpath=self.run_dir, log_dir=self.log_dir, name=name)

    def _layout(self) -> CgroupLayout:
        return detect_layout(self.mountinfo)

    def _host(self) -> HostFacts:
        return HostFacts(
            cgroups=self._layout(),
            cpu_count=os.cpu_count() or 1,
            seccomp_profile=SECCOMP_PROFILE if os.path.isfile(SECCOMP_PROFILE) else "",
        )

    @staticmethod
    def _filled(hvparams: Mapping[str, Any]) -> dict[str, Any]:
        return LXC_HVPARAMS.fill(LXC_HVPARAMS.check_syntax(dict(hvparams)))

    def _cgroup(self, runtime: LxcRuntime | None, pid: int | None) -> ContainerCgroup | None:
        layout = self._layout()
        if pid is not None:
            with contextlib.suppress(HypervisorError):
                return ContainerCgroup.of_pid(layout, pid, proc=self.proc)
        if runtime is not None and runtime.cgroups:
            return ContainerCgroup(layout, runtime.cgroups)
        return None

    def _running(self, name: str) -> tuple[InstanceFiles, LxcRuntime, ContainerCgroup]:
        """The files, runtime and cgroups of a running instance.

        Raises:
            HypervisorError: kind WRONG_STATE when it does not run.
        """
        files = self._files(name)
        runtime = load_runtime(files)
        state, pid = self.tools.info(name)
        cgroup = self._cgroup(runtime, pid) if state != "STOPPED" else None
        if runtime is None or cgroup is None:
            raise HypervisorError(f"instance {name} is not running", kind=ErrorKind.WRONG_STATE)
        return files, runtime, cgroup

    # --- parameters ----------------------------------------------------------------------

    def validate_params(self, hvparams: Mapping[str, Any]) -> None:
        """Check LXC hvparams against this node.

        Raises:
            ParamError: by key: syntax; a CPU in ``cpu_mask`` the node lacks; a cgroup
                controller (``lxc_cgroup_use``, ``lxc_extra_cgroups``) that is not mounted.
        """
        hv = self._filled(hvparams)
        problems: dict[str, str] = {}
        layout = self._layout()
        try:
            cpuset_of_mask(str(hv["cpu_mask"]), os.cpu_count() or 1)
        except ValueError as exc:
            problems["cpu_mask"] = str(exc)
        missing = missing_controllers(hv, layout)
        if missing:
            key = "lxc_cgroup_use"
            if any(m in str(hv["lxc_extra_cgroups"]) for m in missing):
                key = "lxc_extra_cgroups"
            problems[key] = (
                f"cgroup controller(s) {', '.join(missing)} not mounted on this node "
                f"(available: {', '.join(sorted(layout.controllers())) or 'none'})"
            )
        if problems:
            raise ParamError(problems, context="hvparams/lxc")

    # --- lifecycle -----------------------------------------------------------------------

    def start(
        self, spec: InstanceSpec, disks: Sequence[AttachedDisk], *, paused: bool = False
    ) -> None:
        """Start the container; see the module docstring.

        Raises:
            HypervisorError: kind WRONG_STATE when it already runs; kind INVALID for bad
                parameters, a missing disk 0, a qcow2 disk or a disk without a filesystem;
                :class:`LaunchError` when LXC refused or the container did not reach RUNNING
                in time (with LXC's log lines). Nothing is left behind.
        """
        files = self._files(spec.name)
        try:
            hv = self._filled(spec.hvparams)
            self.validate_params(hv)
        except ParamError as exc:
            raise HypervisorError(str(exc), kind=ErrorKind.INVALID, problems=exc.problems) from exc
        state, _ = self.tools.info(spec.name)
        if state != "STOPPED":
            raise HypervisorError(
                f"instance {spec.name} is already running ({state.lower()})",
                kind=ErrorKind.WRONG_STATE,
            )
        root = self._root_disk(disks)
        # leftovers of an earlier run that was not cleaned up (node crash, daemon killed)
        self._cleanup(files, load_runtime(files))
        host = self._host()
        with Reverter() as rv:
            os.makedirs(self.log_dir, exist_ok=True)
            os.makedirs(files.rootfs, exist_ok=True)
            rv.add(lambda: remove_files(files), "remove files")
            loops: tuple[str, ...] = ()
            device = root.path
            if not mounts.is_block_device(root.path):
                device = mounts.attach_loop(self.runner, root.path, read_only=root.mode == "ro")
                loops = (device,)
                rv.add(lambda: mounts.detach_loop(self.runner, device), "detach loop")
            mounts.mount(self.runner, device, files.rootfs, read_only=root.mode == "ro")
            rv.add(
                lambda: mounts.unmount_tree(self.runner, files.rootfs, mountinfo=self.mountinfo),
                "unmount rootfs",
            )
            try:
                conf = build_conf(
                    spec,
                    hv,
                    paths=ConfPaths(
                        rootfs=files.rootfs, console_log=files.console_log, lxc_log=files.lxc_log
                    ),
                    host=host,
                )
            except ValueError as exc:
                raise HypervisorError(
                    f"cannot configure container {spec.name}: {exc}", kind=ErrorKind.INVALID
                ) from exc
            with open(files.config, "w", encoding="utf-8") as fh:
                fh.write(conf.render())
            with open(files.console_log, "w", encoding="utf-8"):
                pass  # a new console log for this start
            since = os.path.getsize(files.lxc_log) if os.path.exists(files.lxc_log) else 0
            rv.add(lambda: self._kill_and_wait(spec.name), "kill container")
            timeout = float(hv["lxc_startup_timeout"])
            argv = ["lxc-start", "-P", self.run_dir, "-n", spec.name, "-f", files.config, "-d"]
            try:
                self.tools.start(spec.name, files.config, timeout=timeout + 10)
            except CommandError as exc:
                raise LaunchError(
                    f"container {spec.name} failed to start",
                    argv=argv,
                    exitcode=exc.rc,
                    log_tail=log_tail(files.lxc_log, since=since) or exc.stderr,
                ) from exc
            # NOTE: `lxc-start -d` returns once the container runs (or failed), so one
            # lxc-info usually settles it; lxc-wait runs only when it is still starting (a
            # container that already stopped again is reported below, without waiting).
            state, pid = self.tools.info(spec.name)
            if state != "STOPPED" and (state != "RUNNING" or pid is None):
                if not self.tools.wait(spec.name, "RUNNING", timeout=timeout):
                    raise LaunchError(
                        f"container {spec.name} did not reach RUNNING within {timeout:g}s",
                        argv=argv,
                        exitcode=None,
                        log_tail=log_tail(files.lxc_log, since=since),
                    )
                state, pid = self.tools.info(spec.name)
            if pid is None:
                raise LaunchError(
                    f"container {spec.name} stopped right after starting ({state.lower()})",
                    argv=argv,
                    exitcode=None,
                    log_tail=log_tail(files.lxc_log, since=since) or log_tail(files.console_log),
                )
            cgroup = ContainerCgroup.of_pid(host.cgroups, pid, proc=self.proc)
            save_runtime(
                files,
                LxcRuntime(
                    spec=spec,
                    disks=tuple(disks),
                    loop_devices=loops,
                    cgroups=dict(cgroup.paths),
                    pid=pid,
                    started=time.time(),
                ),
            )
            if paused:
                self.tools.freeze(spec.name, frozen=True)
            rv.success()
        log.info("started container %s (pid %s)", spec.name, pid)

    @staticmethod
    def _root_disk(disks: Sequence[AttachedDisk]) -> AttachedDisk:
        if not disks:
            raise HypervisorError(
                "an LXC instance needs a disk 0 holding its root filesystem",
                kind=ErrorKind.INVALID,
            )
        root = min(disks, key=lambda d: d.index)
        if root.format != "raw":
            raise HypervisorError(
                f"disk 0 is {root.format}: LXC mounts raw images and block devices only "
                "(use a raw file disk)",
                kind=ErrorKind.INVALID,
            )
        if not os.path.exists(root.path):
            raise HypervisorError(
                f"disk 0 ({root.path}) does not exist on this node", kind=ErrorKind.NOT_FOUND
            )
        return root

    def _kill_and_wait(self, name: str) -> None:
        self.tools.kill(name)
        self.tools.wait(name, "STOPPED", timeout=10)

    def stop(self, name: str, *, timeout: float, force: bool = False) -> None:
        """Stop the container (clean for ``timeout`` seconds, then kill) and clean up.

        Raises:
            HypervisorError: it could not be killed, or its rootfs could not be unmounted or
                its loop device not detached (the message names what is left).
        """
        files = self._files(name)
        runtime = load_runtime(files)
        state, pid = self.tools.info(name)
        if state != "STOPPED":
            if state in ("FROZEN", "FREEZING"):
                with contextlib.suppress(HypervisorError):
                    self.tools.freeze(name, frozen=False)
            stopped = False
            if not force and timeout > 0:
                stopped = self.tools.request_stop(name, timeout=timeout)
            if not stopped:
                if not force:
                    log.info("container %s did not halt within %gs; killing it", name, timeout)
                self._kill_and_wait(name)
        self._cleanup(files, runtime, pid=pid)
        log.info("stopped container %s", name)

    def _cleanup(
        self, files: InstanceFiles, runtime: LxcRuntime | None, pid: int | None = None
    ) -> None:
        """Kill processes left in the cgroups, unmount, detach loops, remove the files.

        Raises:
            HypervisorError: something could not be removed (named in the message).
        """
        cgroup = self._cgroup(runtime, pid) if (runtime or pid) else None
        if cgroup is not None:
            left = cgroup.kill_all()
            if left:
                raise HypervisorError(
                    f"processes {sorted(left)} of container {files.name} survived SIGKILL",
                    pids=sorted(left),
                )
        mounts.unmount_tree(self.runner, files.rootfs, mountinfo=self.mountinfo)
        loops = list(runtime.loop_devices) if runtime else []
        for dev in loops:
            mounts.detach_loop(self.runner, dev)
        remove_files(files)

    def reboot(self, name: str, *, hard: bool) -> None:
        """Stop (hard: kill at once) and start the container again with its saved inputs.

        Raises:
            HypervisorError: not running (WRONG_STATE), or the stop or start failed (then it
                does not run).
        """
        _, runtime, _ = self._running(name)
        self.stop(name, timeout=0 if hard else REBOOT_TIMEOUT, force=hard)
        self.start(runtime.spec, runtime.disks)

    # --- queries -------------------------------------------------------------------------

    def _entries(self) -> list[str]:
        try:
            names = os.listdir(self.run_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HypervisorError(f"cannot list {self.run_dir}: {exc.strerror}") from exc
        return sorted(
            n
            for n in names
            if not n.startswith(".")
            and os.path.exists(os.path.join(self.run_dir, n, "runtime.json"))
        )

    def list_instances(self) -> list[str]:
        """Containers started by this driver that still have a runtime (running or halted).

        Raises:
            HypervisorError: the run directory cannot be read or LXC cannot be queried.
        """
        return self._entries()

    def instance_info(self, name: str) -> InstanceInfo | None:
        """State, memory limit, CPUs (cpuset) and CPU time of the container; None if unknown.

        A container that halted by itself (its init exited) while its runtime is still there
        is reported as SHUTDOWN until a stop cleans it up.

        Raises:
            HypervisorError: LXC cannot be queried.
        """
        files = self._files(name)
        runtime = load_runtime(files)
        state, pid = self.tools.info(name)
        if runtime is None and state == "STOPPED":
            return None
        cgroup = self._cgroup(runtime, pid) if state != "STOPPED" else None
        spec_memory = runtime.spec.memory if runtime else 0
        memory, vcpus, cpu_time, used = 0, 0, 0.0, 0
        cpus = ""
        if cgroup is not None:
            with contextlib.suppress(HypervisorError, ValueError):
                limit = cgroup.memory_limit()
                memory = limit // MIB if limit is not None else spec_memory
            with contextlib.suppress(HypervisorError):
                cpu_set = cgroup.cpuset()
                vcpus, cpus = len(cpu_set), format_cpu_list(cpu_set)
            cpu_time = cgroup.cpu_time()
            used = cgroup.memory_usage() // MIB
        return InstanceInfo(
            name=name,
            state=_STATES.get(state, InstanceState.CRASHED),
            memory=memory,
            vcpus=vcpus,
            cpu_time=cpu_time,
            pid=pid,
            uuid=runtime.spec.uuid if runtime else "",
            details={
                "lxc_state": state,
                "memory_used": used,
                "cpus": cpus,
                "console_log": files.console_log,
                "rootfs": files.rootfs,
                "loop_devices": list(runtime.loop_devices) if runtime else [],
            },
        )

    # --- live changes --------------------------------------------------------------------

    def balloon(self, name: str, memory: int) -> int:
        """Set the running container's memory cgroup limit to ``memory`` MiB.

        Raises:
            HypervisorError: not running (WRONG_STATE); outside ``[min_memory, memory]`` of the
                instance, or the kernel could not reclaim down to it (INVALID).
        """
        _, runtime, cgroup = self._running(name)
        low, high = runtime.spec.min_memory, runtime.spec.memory
        if not low <= memory <= high:
            raise HypervisorError(
                f"cannot set {name}'s memory to {memory} MiB: it must be between its "
                f"minimum {low} and maximum {high} MiB",
                kind=ErrorKind.INVALID,
            )
        cgroup.set_memory_limit(memory)
        limit = cgroup.memory_limit()
        return limit // MIB if limit is not None else memory

    def pin_cpus(self, name: str, cpu_mask: str) -> None:
        """Set the running container's cpuset from a Ganeti mask (``all``: every CPU).

        Raises:
            HypervisorError: not running (WRONG_STATE); a bad mask or CPUs the node lacks
                (INVALID, ``fields["param"] == "cpu_mask"``).
        """
        _, _, cgroup = self._running(name)
        try:
            cpus = cpuset_of_mask(cpu_mask, os.cpu_count() or 1)
        except ValueError as exc:
            raise HypervisorError(
                f"cannot pin {name}: {exc}", kind=ErrorKind.INVALID, param="cpu_mask"
            ) from exc
        if cpus is None:
            cpus = self._all_cpus(cgroup)
        cgroup.set_cpuset(cpus)

    @staticmethod
    def _all_cpus(cgroup: ContainerCgroup) -> frozenset[int]:
        parent = os.path.dirname(cgroup.dir_of("cpuset"))
        for name in ("cpuset.cpus.effective", "cpuset.cpus"):
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(parent, name), encoding="utf-8") as fh:
                    cpus = parse_cpu_list(fh.read())
                if cpus:
                    return cpus
        return frozenset(range(os.cpu_count() or 1))

    def pause(self, name: str) -> None:
        """Freeze every process of the container.

        Raises:
            HypervisorError: not running, or lxc-freeze failed.
        """
        self._running(name)
        self.tools.freeze(name, frozen=True)

    def resume(self, name: str) -> None:
        """Thaw a frozen container.

        Raises:
            HypervisorError: not running, or lxc-unfreeze failed.
        """
        self._running(name)
        self.tools.freeze(name, frozen=False)

    # --- console, node -------------------------------------------------------------------

    def console(self, spec: InstanceSpec, *, node_host: str) -> ConsoleInfo:
        """The ``lxc-console`` command for the container's console (Ctrl-a q leaves).

        Raises:
            HypervisorError: kind INVALID for a bad instance name.
        """
        files = self._files(spec.name)
        return ConsoleInfo(
            instance=spec.name,
            kind="ssh",
            host=node_host,
            command=self.tools.console_argv(spec.name),
            message=f"Console of container {spec.name}; press Ctrl-a q to leave.",
            details={"console_log": files.console_log},
        )

    def node_info(self) -> HvNodeInfo:
        """Memory from /proc/meminfo, CPUs, LXC's version and the cgroup layout.

        Raises:
            HypervisorError: /proc/meminfo cannot be read.
        """
        mem = read_meminfo(self.meminfo)
        used = 0
        for name in self._entries():
            runtime = load_runtime(self._files(name))
            if runtime is not None:
                used += runtime.spec.memory
        layout = self._layout()
        return HvNodeInfo(
            hypervisor=self.NAME,
            memory_total=mem.get("MemTotal", 0) // 1024,
            memory_free=mem.get("MemAvailable", mem.get("MemFree", 0)) // 1024,
            memory_hv=used,
            cpu_total=os.cpu_count() or 1,
            hv_version=self.lxc_version(),
            details={
                "cgroup": "v2" if layout.pure_v2 else ("hybrid" if layout.v2_mount else "v1"),
                "cgroup_controllers": sorted(layout.controllers()),
            },
        )

    def lxc_version(self) -> str:
        """``lxc-start --version`` ("" when LXC is missing); cached."""
        if not self._version:
            try:
                res = self.runner(["lxc-start", "--version"], timeout=10, c_locale=True)
                self._version = res.stdout.strip()
            except CommandError:
                return ""
        return self._version

    def verify(self) -> list[str]:
        """Problems that keep this node from running containers (empty = fine).

        Checks the LXC, losetup and mount tools and that the memory, cpuset and (cgroup v1)
        devices controllers are mounted.
        """
        problems = [
            f"{tool} is missing (install {package})"
            for tool, package in TOOLS.items()
            if shutil.which(tool) is None
        ]
        try:
            layout = self._layout()
        except HypervisorError as exc:
            return [*problems, str(exc)]
        missing = missing_controllers(self._filled({}), layout)
        if missing:
            problems.append(
                f"cgroup controller(s) {', '.join(missing)} are not mounted (cgroup "
                f"{'v2' if layout.pure_v2 else 'v1'} layout)"
            )
        return problems

    def cleanup(self, name: str) -> None:
        """Remove the leftovers of a container that no longer runs.

        Raises:
            HypervisorError: kind WRONG_STATE when it still runs.
        """
        files = self._files(name)
        state, _ = self.tools.info(name)
        if state != "STOPPED":
            raise HypervisorError(f"instance {name} is still running", kind=ErrorKind.WRONG_STATE)
        self._cleanup(files, load_runtime(files))

    # --- migration: not supported --------------------------------------------------------

    def _no_migration(self) -> HypervisorError:
        return HypervisorError(
            "migration is not supported by the lxc hypervisor (a container's processes "
            "cannot move between nodes); use failover or move, which stop and start it",
            kind=ErrorKind.INVALID,
            hypervisor=self.NAME,
        )

    def migration_info(self, name: str) -> dict[str, Any]:
        """Refused: see :meth:`_no_migration`.

        Raises:
            HypervisorError: always (kind INVALID).
        """
        raise self._no_migration()

    def accept_migration(
        self,
        spec: InstanceSpec,
        disks: Sequence[AttachedDisk],
        info: Mapping[str, Any],
        *,
        listen_host: str,
        port: int,
    ) -> None:
        """Refused.

        Raises:
            HypervisorError: always (kind INVALID).
        """
        raise self._no_migration()

    def migrate(
        self,
        name: str,
        *,
        target_host: str,
        port: int,
        live: bool,
        bandwidth_mib: int | None = None,
        downtime_ms: int | None = None,
    ) -> None:
        """Refused.

        Raises:
            HypervisorError: always (kind INVALID).
        """
        raise self._no_migration()

"""The Xen driver's core: per-instance files, ``xl`` queries, and the instance lifecycle.

:class:`XenCore` holds what every Xen feature needs (the ``xl`` runner, the run directory
layout, waiting for a domain to change) and the lifecycle: start, stop, reboot, list/info,
balloon, CPU pinning, pause/resume and suspend to a file. Migration lives in
:mod:`corral.hypervisor.xen.migration`, the node-level checks in
:mod:`corral.hypervisor.xen.driver`.

Files in the run directory, per instance ``NAME``:

* ``NAME.cfg`` — the ``xl`` configuration the domain was created from (written atomically
  from :func:`corral.hypervisor.xen.xlconf.build_config`); it also marks the domain as this
  driver's: :meth:`XenCore.list_instances` reports only domains that have one, so ``xen-pvm``
  and ``xen-hvm`` (each with its own run directory) never list each other's domains, and
  neither lists domains started by hand.
* ``NAME.json`` — the :class:`XenRuntime`: the spec and disks it was started with (for the
  balloon range, the HVM VNC port and a hard reboot).

All ``xl`` calls go through :class:`corral.hypervisor.xen.xl.Xl`; its errors carry xl's own
message and a kind (NOT_FOUND for "invalid domain identifier", EXISTS for "already exists").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from corral.common import fileio
from corral.common.errors import ErrorKind, HypervisorError, ParamError
from corral.common.paths import Paths
from corral.common.runcmd import Runner, run
from corral.hypervisor.base import (
    AttachedDisk,
    Hypervisor,
    InstanceInfo,
    InstanceSpec,
    InstanceState,
)
from corral.hypervisor.xen import xlconf
from corral.hypervisor.xen.xl import Xl
from corral.hypervisor.xen.xlparse import XlDomain, xen_state
from corral.objects.params.cpumask import cpu_mask_problem, node_cpu_problem, parse_cpu_mask

log = logging.getLogger(__name__)

#: Layout version of ``NAME.json``.
RUNTIME_VERSION = 1
#: Balloon targets within this many MiB (or 0.5 %) of the request count as reached.
BALLOON_TOLERANCE_MIB = 1
#: Names xl gives the two copies of a domain during a migration on one host.
INCOMING_SUFFIX = "--incoming"
MIGRATEDAWAY_SUFFIX = "--migratedaway"


@dataclasses.dataclass(frozen=True, slots=True)
class XenRuntime:
    """What a domain was started with (``NAME.json`` in the run directory)."""

    spec: InstanceSpec
    disks: tuple[AttachedDisk, ...]
    vnc_port: int | None = None
    started: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "version": RUNTIME_VERSION,
            "spec": self.spec.model_dump(mode="json"),
            "disks": [d.model_dump(mode="json") for d in self.disks],
            "vnc_port": self.vnc_port,
            "started": self.started,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> XenRuntime:
        """Read the JSON form.

        Raises:
            ValueError: another version or a malformed record.
        """
        if data.get("version") != RUNTIME_VERSION:
            raise ValueError(f"runtime version {data.get('version')!r} is not understood")
        port = data.get("vnc_port")
        return cls(
            spec=InstanceSpec.model_validate(data["spec"]),
            disks=tuple(AttachedDisk.model_validate(d) for d in data.get("disks", [])),
            vnc_port=int(port) if isinstance(port, int) else None,
            started=float(data.get("started", 0.0)),
        )


def read_vnc_password(path: str) -> str:
    """The VNC password: the first line of ``path`` (Ganeti's ``vnc_password_file``).

    Raises:
        ParamError: the file cannot be read or is empty (key ``vnc_password_file``).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            password = fh.readline().strip()
    except OSError as exc:
        raise ParamError(
            {"vnc_password_file": f"cannot read {path}: {exc.strerror}"}, context="xen config"
        ) from exc
    if not password:
        raise ParamError({"vnc_password_file": f"{path} is empty"}, context="xen config")
    return password


def domain_state(dom: XlDomain) -> InstanceState:
    """Corral's state of a domain from its ``xl list`` flags.

    :func:`~corral.hypervisor.xen.xlparse.xen_state` maps the letters as Ganeti does (the
    paused flag ignored, because Xen also shows it for scheduling and races). This driver
    pauses domains itself (``xl pause``, a paused migration target), so a domain that is
    otherwise running and carries the ``p`` flag is reported as PAUSED.
    """
    state = xen_state(dom.flags)
    if state == InstanceState.RUNNING and "p" in dom.flags:
        return InstanceState.PAUSED
    return state


class XenCore(Hypervisor):
    """Shared state and the lifecycle of the Xen drivers; see the module docstring.

    Args:
        run_dir: the driver's run directory (config and runtime files).
        paths: the node's layout (TLS files for the migration tunnel); ``from_paths`` sets it.
        runner: runs ``xl`` (tests may inject a fake; see tests/unit/hypervisor).
        xl_command: the toolstack binary.
        sys_class_net: where bridges are looked up (:meth:`verify`).
        poll: seconds between two looks at ``xl list`` while waiting.
        gone_timeout: how long a destroyed domain may take to disappear.
        balloon_timeout: how long a guest may take to reach a balloon target.
    """

    #: Whether this driver runs HVM guests (shutdown/reboot need ``-F`` there: ACPI fallback).
    HVM: ClassVar[bool] = False
    #: Seconds ``xl create``/``xl restore`` may take (PV create takes 11-18 s under TCG).
    CREATE_TIMEOUT: ClassVar[float] = 300.0
    #: Seconds a soft reboot waits for the domain to come back (only to log it).
    REBOOT_TIMEOUT: ClassVar[float] = 120.0

    def __init__(
        self,
        run_dir: str,
        *,
        paths: Paths | None = None,
        runner: Runner = run,
        xl_command: str = "xl",
        sys_class_net: str = "/sys/class/net",
        poll: float = 0.5,
        gone_timeout: float = 60.0,
        balloon_timeout: float = 60.0,
    ) -> None:
        super().__init__(run_dir)
        self.paths = paths
        self.runner = runner
        self.xl_command = xl_command
        self.xl = Xl(xl_command, runner=runner)
        self.sys_class_net = sys_class_net
        self.poll = poll
        self.gone_timeout = gone_timeout
        self.balloon_timeout = balloon_timeout

    # --- files -------------------------------------------------------------------------------

    def _check_name(self, name: str) -> str:
        if not name or "/" in name or name.startswith(".") or "\0" in name:
            raise HypervisorError(f"invalid instance name {name!r}", kind=ErrorKind.INVALID)
        return name

    def cfg_path(self, name: str) -> str:
        """The xl config file of instance ``name``."""
        return os.path.join(self.run_dir, self._check_name(name) + ".cfg")

    def runtime_path(self, name: str) -> str:
        """The runtime record of instance ``name``."""
        return os.path.join(self.run_dir, self._check_name(name) + ".json")

    def _owned(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.run_dir, name + ".cfg"))

    def _write(self, path: str, text: str) -> None:
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            fileio.write_atomic(path, text, mode=0o600)
        except OSError as exc:
            raise HypervisorError(
                f"cannot write {path}: {exc.strerror}", kind=ErrorKind.ENVIRONMENT, path=path
            ) from exc

    def _load_runtime(self, name: str) -> XenRuntime | None:
        try:
            with open(self.runtime_path(name), encoding="utf-8") as fh:
                return XenRuntime.from_dict(json.load(fh))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("ignoring unreadable runtime of %s: %s", name, exc)
            return None

    def _remove_files(self, name: str) -> None:
        for path in (self.cfg_path(name), self.runtime_path(name)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise HypervisorError(
                    f"cannot remove {path}: {exc.strerror}", kind=ErrorKind.ENVIRONMENT
                ) from exc

    def _filled(self, hvparams: Mapping[str, Any]) -> dict[str, Any]:
        """The hvparams checked and filled with this driver's defaults.

        Raises:
            ParamError: unknown keys or bad values, by key.
        """
        return self.PARAMS.fill(
            {k: v for k, v in self.PARAMS.check_syntax(dict(hvparams)).items() if v is not None}
        )

    def _config_text(
        self, spec: InstanceSpec, disks: Sequence[AttachedDisk]
    ) -> tuple[str, int | None]:
        """The xl config of ``spec`` and the VNC port it uses (HVM).

        Raises:
            ParamError: a value xl cannot express, or an unreadable ``vnc_password_file``
                (by key).
        """
        vnc_port = spec.network_port if self.HVM else None
        password = None
        if self.HVM:
            path = str(xlconf.filled_params(spec).get("vnc_password_file") or "")
            if path:
                password = read_vnc_password(path)
        text = xlconf.build_config(spec, disks, vnc_port=vnc_port, vnc_password=password)
        return text, vnc_port

    def _write_instance(self, spec: InstanceSpec, disks: Sequence[AttachedDisk]) -> XenRuntime:
        """Write ``NAME.cfg`` and ``NAME.json`` for ``spec``.

        Raises:
            ParamError: a value xl cannot express; HypervisorError: the files cannot be written.
        """
        text, vnc_port = self._config_text(spec, disks)
        runtime = XenRuntime(spec=spec, disks=tuple(disks), vnc_port=vnc_port, started=time.time())
        self._write(self.cfg_path(spec.name), text)
        self._write(self.runtime_path(spec.name), json.dumps(runtime.to_dict()) + "\n")
        return runtime

    # --- xl helpers -------------------------------------------------------------------------

    def _domain(self, name: str) -> XlDomain | None:
        return self.xl.domain(name)

    def _running(self, name: str) -> XlDomain:
        """The live domain of a running (or paused) instance.

        Raises:
            HypervisorError: kind WRONG_STATE when it does not run (absent, shut down, crashed).
        """
        dom = self._domain(self._check_name(name))
        if dom is None or domain_state(dom) not in (InstanceState.RUNNING, InstanceState.PAUSED):
            what = "does not run" if dom is None else f"is {domain_state(dom).value}"
            raise HypervisorError(
                f"instance {name} is not running (the domain {what})",
                kind=ErrorKind.WRONG_STATE,
                instance=name,
            )
        return dom

    def _xl_quiet(self, *args: str, timeout: float = 60.0) -> bool:
        """Run ``xl args``; a vanished domain (NOT_FOUND) is fine. Returns whether it ran.

        Raises:
            HypervisorError: any other xl failure.
        """
        try:
            self.xl.run(*args, timeout=timeout)
        except HypervisorError as exc:
            if exc.kind == ErrorKind.NOT_FOUND:
                return False
            raise
        return True

    def _wait(self, name: str, done: Any, timeout: float) -> XlDomain | None:
        """Poll ``xl list NAME`` until ``done(domain_or_None)`` or ``timeout``; the last look."""
        deadline = time.monotonic() + timeout
        while True:
            dom = self._domain(name)
            if done(dom) or time.monotonic() >= deadline:
                return dom
            time.sleep(self.poll)

    def _wait_gone(self, name: str, *, domid: int | None = None) -> None:
        """Wait until no domain is called ``name`` (or it has another ``domid``).

        NOTE: ``xl destroy``/``xl shutdown -w`` return while Xen still tears the domain down;
        creating the same name too early fails with "Domain with name ... already exists"
        (captured in tests/data/xen). Returning only once the name is free lets a stop be
        followed by a start at once.

        Raises:
            HypervisorError: still there after ``gone_timeout`` (kind ENVIRONMENT).
        """

        def gone(dom: XlDomain | None) -> bool:
            return dom is None or (domid is not None and dom.domid != domid)

        last = self._wait(name, gone, self.gone_timeout)
        if not gone(last):
            assert last is not None
            raise HypervisorError(
                f"domain {name} (id {last.domid}, state {last.flags}) was still there "
                f"{self.gone_timeout:g}s after it was destroyed",
                kind=ErrorKind.ENVIRONMENT,
                instance=name,
                domid=last.domid,
            )

    def _destroy(self, name: str) -> None:
        """``xl destroy`` the domain (gone already: fine) and wait until the name is free.

        Raises:
            HypervisorError: xl refused, or the domain did not disappear in time.
        """
        dom = self._domain(name)
        if dom is None:
            return
        self._xl_quiet("destroy", name)
        self._wait_gone(name, domid=dom.domid)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(
        self, spec: InstanceSpec, disks: Sequence[AttachedDisk], *, paused: bool = False
    ) -> None:
        """Write ``NAME.cfg`` and ``xl create [-p]`` it.

        A domain of that name that is still dying (``d`` flag) is waited for first.

        Raises:
            ParamError: a value xl cannot express, by key (nothing was written).
            HypervisorError: kind WRONG_STATE when a domain of that name exists; otherwise xl's
                own message (its kind: EXISTS for "already exists"). On failure the config
                and runtime files are removed and no half-created domain is left.
        """
        name = self._check_name(spec.name)
        dom = self._domain(name)
        if dom is not None and "d" in dom.flags:
            self._wait_gone(name, domid=dom.domid)
            dom = None
        if dom is not None:
            raise HypervisorError(
                f"instance {name} is already running (domain {dom.domid}, state "
                f"{domain_state(dom).value})",
                kind=ErrorKind.WRONG_STATE,
                instance=name,
            )
        self._write_instance(spec, disks)
        cfg = self.cfg_path(name)
        try:
            self.xl.run("create", *(["-p"] if paused else []), cfg, timeout=self.CREATE_TIMEOUT)
        except HypervisorError as exc:
            self._undo_create(name, exc)
            raise HypervisorError(
                f"cannot start {name}: {exc.message}",
                kind=exc.kind,
                instance=name,
                **{k: v for k, v in exc.fields.items() if k != "instance"},
            ) from exc
        log.info("started domain %s%s", name, " (paused)" if paused else "")

    def _undo_create(self, name: str, exc: HypervisorError) -> None:
        """After a failed create/restore: destroy what xl left, remove the files."""
        # NOTE: "already exists" means another domain holds the name (it was free a moment
        # ago, when we checked): it is not ours to destroy.
        if exc.kind != ErrorKind.EXISTS:
            try:
                self._destroy(name)
            except HypervisorError as undo:
                log.warning("cannot destroy the half-created domain %s: %s", name, undo)
        with contextlib.suppress(HypervisorError):
            self._remove_files(name)

    def stop(self, name: str, *, timeout: float, force: bool = False) -> None:
        """Stop the domain: ``xl shutdown``, wait ``timeout``, then ``xl destroy``.

        The soft phase ends as soon as the guest has shut down (state shutdown, kept by
        ``on_poweroff = "preserve"``) or the domain is gone; a guest that ignores the request
        is destroyed after ``timeout``. ``force`` skips the soft phase. In every case the call
        returns only once the name is free again, and the config is removed. Not running:
        success (leftover files are removed).

        Raises:
            HypervisorError: xl could not destroy the domain, or it did not disappear within
                ``gone_timeout`` (the files are kept then).
        """
        self._check_name(name)
        dom = self._domain(name)
        if dom is not None:
            if not force and timeout > 0 and domain_state(dom) != InstanceState.SHUTDOWN:
                self._soft_stop(name, dom, timeout)
            # NOTE: whatever holds the name now is destroyed: the shut-down domain, one that
            # ignored the request, or one xl re-created meanwhile (the guest rebooted, or
            # crashed with on_crash = "restart").
            left = self._domain(name)
            if left is not None:
                if not force and domain_state(left) != InstanceState.SHUTDOWN:
                    log.info("domain %s did not shut down within %gs; destroying it", name, timeout)
                self._xl_quiet("destroy", name)
                self._wait_gone(name, domid=left.domid)
        self._remove_files(name)
        log.info("stopped domain %s", name)

    def _soft_stop(self, name: str, dom: XlDomain, timeout: float) -> None:
        """Ask the guest to shut down and wait up to ``timeout`` until it did (or is gone)."""
        if "p" in dom.flags:
            # a paused guest cannot react to the request
            self._unpause_all(name)
        args = ["shutdown", *(["-F"] if self.HVM else []), name]
        deadline = time.monotonic() + timeout

        def settled(d: XlDomain | None) -> bool:
            return d is None or d.domid != dom.domid or domain_state(d) == InstanceState.SHUTDOWN

        while True:
            try:
                if not self._xl_quiet(*args, timeout=30):
                    return
                break
            except HypervisorError as exc:
                # NOTE: xl refuses while the guest's PV control driver is not up (a guest
                # still booting, or one without it): ask again until the timeout, as Ganeti
                # retries its soft shutdown; the hard phase follows.
                if time.monotonic() >= deadline:
                    log.warning("xl shutdown of %s was refused: %s", name, exc)
                    return
                log.info("xl shutdown of %s was refused (%s); asking again", name, exc)
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                if settled(self._domain(name)):
                    return
        self._wait(name, settled, max(0.0, deadline - time.monotonic()))

    def reboot(self, name: str, *, hard: bool) -> None:
        """Soft: ``xl reboot`` (the guest restarts itself). Hard: destroy and create again.

        The hard reboot re-creates the domain from the config it was started with
        (``NAME.cfg``), so the guest comes back with the same settings.

        Raises:
            HypervisorError: not running (WRONG_STATE); no config kept (NOT_FOUND); xl failed
                (after a failed hard reboot the domain does not run and the files are gone).
        """
        dom = self._running(name)
        if not hard:
            self.xl.run("reboot", *(["-F"] if self.HVM else []), name, timeout=30)
            log.info("asked domain %s to reboot", name)
            return
        cfg = self.cfg_path(name)
        if not os.path.isfile(cfg):
            raise HypervisorError(
                f"no config kept for {name} ({cfg}); stop and start it instead",
                kind=ErrorKind.NOT_FOUND,
                instance=name,
            )
        self._xl_quiet("destroy", name)
        self._wait_gone(name, domid=dom.domid)
        try:
            self.xl.run("create", cfg, timeout=self.CREATE_TIMEOUT)
        except HypervisorError as exc:
            self._undo_create(name, exc)
            raise HypervisorError(
                f"cannot start {name} again after destroying it (hard reboot): {exc.message}",
                kind=exc.kind,
                instance=name,
            ) from exc
        log.info("hard-rebooted domain %s", name)

    # --- queries -----------------------------------------------------------------------------

    def _info(self, dom: XlDomain, runtime: XenRuntime | None) -> InstanceInfo:
        return InstanceInfo(
            name=dom.name,
            state=domain_state(dom),
            memory=dom.memory,
            vcpus=dom.vcpus,
            cpu_time=dom.cpu_time,
            uuid=runtime.spec.uuid if runtime else "",
            details={
                "domid": dom.domid,
                "flags": dom.flags,
                "config": os.path.join(self.run_dir, dom.name + ".cfg"),
            },
        )

    def list_instances(self) -> list[str]:
        """Domains of this driver (those with a config here), from one ``xl list``.

        Raises:
            HypervisorError: xl cannot be queried (after its retries).
        """
        return [d.name for d in self.xl.domains() if self._owned(d.name)]

    def instance_info(self, name: str) -> InstanceInfo | None:
        """State, memory, vCPUs and CPU time of the domain; None if it is not this driver's.

        Raises:
            HypervisorError: xl cannot be queried.
        """
        self._check_name(name)
        if not self._owned(name):
            return None
        dom = self._domain(name)
        if dom is None:
            return None
        return self._info(dom, self._load_runtime(name))

    def all_instances_info(self) -> list[InstanceInfo]:
        """Every domain of this driver, from one ``xl list`` (Domain-0 excluded).

        Raises:
            HypervisorError: xl cannot be queried.
        """
        return [
            self._info(d, self._load_runtime(d.name))
            for d in self.xl.domains()
            if self._owned(d.name)
        ]

    # --- live changes ------------------------------------------------------------------------

    def balloon(self, name: str, memory: int) -> int:
        """``xl mem-set NAME <memory>m`` and wait until the guest got there.

        The target must lie between the instance's ``min_memory`` (from its runtime; 1 MiB
        when unknown) and the domain's ``maxmem`` as ``xl list -l`` reports it.

        Returns:
            The memory (MiB) the domain has once it reached the target.

        Raises:
            HypervisorError: not running (WRONG_STATE); out of range (INVALID, nothing
                changed); the guest did not reach the target within ``balloon_timeout``
                (ENVIRONMENT: its balloon driver did not respond).
        """
        self._running(name)
        config = self.xl.config(name)
        if config is None:
            raise HypervisorError(f"instance {name} is not running", kind=ErrorKind.WRONG_STATE)
        high = (config.max_memkb or 0) // 1024
        runtime = self._load_runtime(name)
        low = max(1, runtime.spec.min_memory) if runtime else 1
        if not low <= memory <= high:
            raise HypervisorError(
                f"cannot balloon {name} to {memory} MiB: it must stay between min_memory "
                f"{low} MiB and maxmem {high} MiB",
                kind=ErrorKind.INVALID,
                instance=name,
                memory=memory,
            )
        self.xl.run("mem-set", name, f"{memory}m", timeout=30)
        tolerance = max(BALLOON_TOLERANCE_MIB, memory // 200)

        def reached(dom: XlDomain | None) -> bool:
            return dom is None or abs(dom.memory - memory) <= tolerance

        dom = self._wait(name, reached, self.balloon_timeout)
        if dom is None:
            raise HypervisorError(
                f"instance {name} disappeared while ballooning", kind=ErrorKind.WRONG_STATE
            )
        if not reached(dom):
            raise HypervisorError(
                f"{name} did not reach {memory} MiB within {self.balloon_timeout:g}s (now "
                f"{dom.memory} MiB; is the guest's Xen balloon driver loaded?)",
                kind=ErrorKind.ENVIRONMENT,
                instance=name,
                actual=dom.memory,
            )
        log.info("ballooned %s to %d MiB", name, dom.memory)
        return dom.memory

    def pin_cpus(self, name: str, cpu_mask: str) -> None:
        """Pin the domain's vCPUs with ``xl vcpu-pin`` (Ganeti mask syntax).

        One mask pins every vCPU (``xl vcpu-pin NAME all MASK``; ``all`` unpins); one mask per
        vCPU pins each (``xl vcpu-pin NAME <i> MASK_i``).

        Raises:
            HypervisorError: not running (WRONG_STATE); a bad mask, the wrong number of masks
                or CPUs the node lacks (INVALID, ``fields["param"] == "cpu_mask"``); xl failed.
        """
        dom = self._running(name)
        try:
            masks = parse_cpu_mask(cpu_mask)
        except ValueError as exc:
            raise HypervisorError(
                f"cannot pin {name}: {exc}", kind=ErrorKind.INVALID, param="cpu_mask"
            ) from exc
        problem = cpu_mask_problem(cpu_mask, dom.vcpus) or node_cpu_problem(
            cpu_mask, self._node_cpus()
        )
        if problem:
            raise HypervisorError(
                f"cannot pin {name}: {problem}", kind=ErrorKind.INVALID, param="cpu_mask"
            )
        parts = [p.strip() for p in cpu_mask.split(":")]
        if len(masks) == 1:
            self.xl.run("vcpu-pin", name, "all", parts[0], timeout=30)
        else:
            for vcpu, part in enumerate(parts):
                self.xl.run("vcpu-pin", name, str(vcpu), part, timeout=30)
        log.info("pinned %s to %s", name, cpu_mask)

    def _node_cpus(self) -> int:
        try:
            return int(self.xl.info().get("nr_cpus", "0")) or (os.cpu_count() or 1)
        except ValueError:
            return os.cpu_count() or 1

    def pause(self, name: str) -> None:
        """``xl pause``; a paused domain stays paused (not paused twice).

        NOTE: Xen counts pauses: a second ``xl pause`` would need a second ``xl unpause``.

        Raises:
            HypervisorError: not running (WRONG_STATE) or xl failed.
        """
        dom = self._running(name)
        if "p" not in dom.flags:
            self.xl.run("pause", name, timeout=30)
        log.info("paused domain %s", name)

    def resume(self, name: str) -> None:
        """``xl unpause`` until the domain runs; a running domain is left alone.

        Raises:
            HypervisorError: not running (WRONG_STATE) or xl failed.
        """
        self._running(name)
        self._unpause_all(name)
        log.info("resumed domain %s", name)

    def _unpause_all(self, name: str) -> None:
        for _ in range(8):
            dom = self._domain(name)
            if dom is None or "p" not in dom.flags:
                return
            self.xl.run("unpause", name, timeout=30)

    def suspend(self, name: str, state_file: str) -> None:
        """``xl save NAME <file>``: the state goes to ``state_file`` and the domain is gone.

        xl writes to ``<state_file>.tmp``, renamed once the save succeeded, so a failed save
        never leaves a state file behind.

        Raises:
            HypervisorError: not running (WRONG_STATE); ``state_file`` exists (EXISTS); the
                save failed (xl's message; the domain keeps running and no file is left).
        """
        self._running(name)
        if os.path.exists(state_file):
            raise HypervisorError(
                f"a saved state already exists at {state_file}",
                kind=ErrorKind.EXISTS,
                path=state_file,
            )
        tmp = state_file + ".tmp"
        try:
            os.makedirs(os.path.dirname(state_file) or ".", exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        except OSError as exc:
            raise HypervisorError(
                f"cannot prepare {state_file}: {exc.strerror}", kind=ErrorKind.ENVIRONMENT
            ) from exc
        runtime = self._load_runtime(name)
        memory = runtime.spec.memory if runtime else 1024
        try:
            self.xl.run("save", name, tmp, timeout=max(600.0, memory / 4))
            os.replace(tmp, state_file)
        except (HypervisorError, OSError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            # NOTE: xl resumes the domain itself when a save fails after suspending it; make
            # sure it is not left paused either.
            with contextlib.suppress(HypervisorError):
                self._unpause_all(name)
            message = exc.message if isinstance(exc, HypervisorError) else str(exc.strerror)
            raise HypervisorError(
                f"saving {name} to {state_file} failed: {message}",
                kind=exc.kind if isinstance(exc, HypervisorError) else ErrorKind.ENVIRONMENT,
                instance=name,
            ) from exc
        self._wait_gone(name)
        self._remove_files(name)
        log.info("saved domain %s to %s", name, state_file)

    def resume_suspended(
        self, spec: InstanceSpec, disks: Sequence[AttachedDisk], state_file: str
    ) -> None:
        """``xl restore NAME.cfg <file>`` with a config written from ``spec`` and ``disks``.

        The state file is removed once the domain runs again.

        Raises:
            HypervisorError: WRONG_STATE when a domain of that name exists; NOT_FOUND when
                the state file is missing; the restore failed (xl's message; no domain is
                left, the config removed, the state file kept).
        """
        name = self._check_name(spec.name)
        if not os.path.isfile(state_file):
            raise HypervisorError(
                f"no saved state at {state_file}", kind=ErrorKind.NOT_FOUND, path=state_file
            )
        if self._domain(name) is not None:
            raise HypervisorError(f"instance {name} is already running", kind=ErrorKind.WRONG_STATE)
        self._write_instance(spec, disks)
        try:
            self.xl.run(
                "restore",
                self.cfg_path(name),
                state_file,
                timeout=max(self.CREATE_TIMEOUT, spec.memory / 2),
            )
        except HypervisorError as exc:
            self._undo_create(name, exc)
            raise HypervisorError(
                f"restoring {name} from {state_file} failed: {exc.message}",
                kind=exc.kind,
                instance=name,
            ) from exc
        with contextlib.suppress(OSError):
            os.unlink(state_file)
        log.info("restored domain %s from %s", name, state_file)

    def cleanup(self, name: str) -> None:
        """Remove the files of an instance whose domain no longer exists.

        Raises:
            HypervisorError: kind WRONG_STATE when the domain still exists.
        """
        if self._domain(self._check_name(name)) is not None:
            raise HypervisorError(f"instance {name} still exists", kind=ErrorKind.WRONG_STATE)
        self._remove_files(name)

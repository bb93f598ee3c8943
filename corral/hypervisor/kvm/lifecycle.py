"""Pause/resume and suspend to disk/restore of KVM guests.

* **pause** = QMP ``stop`` (the vCPUs stop, QEMU and the guest's memory stay), **resume** =
  ``cont``. Pausing a paused guest and resuming a running one succeed; a guest in any other
  state (migrating in or out, powered off) is refused with kind WRONG_STATE — in particular a
  source left in ``postmigrate`` is never resumed by ``resume`` (only by a failed migration's
  finalize), so one guest never runs twice.
* **suspend** saves the whole guest into a state file and stops QEMU: ``stop``, then a
  migration into the file, then ``quit``. The file is opened by the driver and handed to QEMU
  over QMP (``getfd`` + ``migrate fd:``): unlike ``exec:cat > FILE`` (QEMU 7.2 has no
  ``file:`` URI) no shell runs, nothing needs quoting, and it works the same when QEMU runs as
  another user or chrooted. Beside the state file, ``<state_file>.json`` keeps the runtime
  (argv, devices, accelerator) needed to restore it, since the run directory is volatile. On
  failure the guest runs again (if it ran) and no state file is left.
* **resume_suspended** starts QEMU from the saved runtime, paused, with ``-incoming defer``,
  feeds it the state file (``migrate-incoming fd:``), waits until the state is loaded, then
  ``cont`` (unless the guest was paused when it was saved) and removes both files. On failure
  QEMU is killed and its run files removed, but the state file is kept, so nothing is lost.

The guest does not notice a suspend: its clock stops while it is saved (uptime continues from
where it was) and it neither reboots nor sees an ACPI event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.common.fileio import write_atomic
from corral.hypervisor.base import AttachedDisk, InstanceSpec, MigrationStatus
from corral.hypervisor.kvm import events
from corral.hypervisor.kvm.core import KvmCore
from corral.hypervisor.kvm.migration import FINAL_STATES, POLL, parse_query_migrate, rebase_runtime
from corral.hypervisor.kvm.monitor import QmpSession
from corral.hypervisor.kvm.runtime import InstanceLayout, KvmRuntime, save_runtime

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Layout of ``<state_file>.json``.
SAVED_VERSION = 1
#: A save is not rate limited (the guest is stopped anyway): 1 TiB/s.
SAVE_BANDWIDTH = 1 << 40
#: Seconds a save or restore may take: this much plus one second per 64 MiB of memory.
SAVE_BASE_TIMEOUT = 60.0


def saved_runtime_file(state_file: str) -> str:
    """Where the runtime of a suspended guest is kept, beside its state file."""
    return state_file + ".json"


def _save_timeout(memory_mib: int) -> float:
    return SAVE_BASE_TIMEOUT + memory_mib / 64


class KvmLifecycle(KvmCore):
    """Pause/resume and suspend/restore; see the module docstring."""

    # --- pause / resume --------------------------------------------------------------------

    def pause(self, name: str) -> None:
        """Stop the vCPUs of a running guest (``stop``); a paused guest stays paused.

        Raises:
            HypervisorError: WRONG_STATE when it does not run or is in another state
                (migrating, powered off); QMP failed.
        """
        layout = self._layout(name)
        with self._lock(layout):
            _, _, proc = self._require_live(name)

            async def act(q: QmpSession) -> str:
                status = (await q.query_status()).status
                if status == "running":
                    await q.stop()
                elif status not in ("paused", "prelaunch"):
                    raise HypervisorError(
                        f"instance {name} cannot be paused while it is {status}",
                        kind=ErrorKind.WRONG_STATE,
                        status=status,
                    )
                return status

            before = proc.monitor.call(act)
        log.info("%s: paused (was %s)", name, before)

    def resume(self, name: str) -> None:
        """Let a paused guest (or one started paused) run again (``cont``).

        Raises:
            HypervisorError: WRONG_STATE when it does not run, or is not paused (e.g. the
                source of a migration in ``postmigrate``); QMP failed.
        """
        layout = self._layout(name)
        with self._lock(layout):
            _, _, proc = self._require_live(name)

            async def act(q: QmpSession) -> str:
                status = (await q.query_status()).status
                if status in ("paused", "prelaunch"):
                    await q.cont()
                elif status != "running":
                    raise HypervisorError(
                        f"instance {name} cannot be resumed while it is {status}",
                        kind=ErrorKind.WRONG_STATE,
                        status=status,
                    )
                return status

            before = proc.monitor.call(act)
        log.info("%s: resumed (was %s)", name, before)

    # --- suspend to disk -----------------------------------------------------------------------

    def suspend(self, name: str, state_file: str) -> None:
        """Save the guest into ``state_file`` (and its runtime beside it), then stop QEMU.

        Raises:
            HypervisorError: WRONG_STATE when it does not run (or is migrating); EXISTS when
                ``state_file`` exists; the save failed (the guest then runs again as before and
                no file is left).
        """
        layout = self._layout(name)
        sidecar = saved_runtime_file(state_file)
        with self._lock(layout):
            layout, runtime, proc = self._require_live(name)
            try:
                os.makedirs(os.path.dirname(state_file) or ".", mode=0o700, exist_ok=True)
                fd = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError as exc:
                raise HypervisorError(
                    f"a saved state already exists at {state_file}",
                    kind=ErrorKind.EXISTS,
                    path=state_file,
                ) from exc
            except OSError as exc:
                raise HypervisorError(
                    f"cannot create the state file {state_file}: {exc.strerror}", path=state_file
                ) from exc
            timeout = _save_timeout(runtime.spec.memory)
            started = time.monotonic()

            async def save(q: QmpSession) -> bool:
                status = (await q.query_status()).status
                if status not in ("running", "paused", "prelaunch"):
                    raise HypervisorError(
                        f"instance {name} cannot be suspended while it is {status}",
                        kind=ErrorKind.WRONG_STATE,
                        status=status,
                    )
                running = status == "running"
                try:
                    if running:
                        await q.stop()
                    await q.migrate_set_parameters({"max-bandwidth": SAVE_BANDWIDTH})
                    await q.getfd("corral-save", fd)
                    await q.migrate("fd:corral-save")
                    result = await self._wait_final(q, name, timeout, started)
                    if result.status != "completed":
                        raise HypervisorError(
                            f"saving {name} failed ({result.status}): "
                            f"{result.error or 'no reason given'}",
                            kind=ErrorKind.ENVIRONMENT,
                        )
                except BaseException:
                    if running:
                        with contextlib.suppress(HypervisorError):
                            await q.cont()
                    raise
                return running

            try:
                try:
                    was_running = proc.monitor.call(save)
                finally:
                    os.close(fd)
                self._sync(state_file)
                self._write_saved(sidecar, layout, runtime, was_running)
            except BaseException:
                for path in (state_file, sidecar):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
            events.mark_stopping(layout)
            how = self._quit_now(proc)
            self._cleanup_files(layout, runtime)
        log.info(
            "%s: suspended to %s (%d MiB, %.2fs, QEMU %s)",
            name,
            state_file,
            os.path.getsize(state_file) // MIB,
            time.monotonic() - started,
            how,
        )

    async def _wait_final(
        self, q: QmpSession, name: str, timeout: float, started: float
    ) -> MigrationStatus:
        """Poll ``query-migrate`` until a final state; the parsed status."""
        while True:
            status = parse_query_migrate(await q.query_migrate())
            if status.status in FINAL_STATES:
                return status
            if time.monotonic() - started > timeout:
                with contextlib.suppress(HypervisorError):
                    await q.migrate_cancel()
                raise HypervisorError(
                    f"saving {name} did not finish within {timeout:g}s", kind=ErrorKind.ENVIRONMENT
                )
            await asyncio.sleep(POLL)

    @staticmethod
    def _sync(path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise HypervisorError(f"cannot sync the state file {path}: {exc.strerror}") from exc

    def _write_saved(
        self, path: str, layout: InstanceLayout, runtime: KvmRuntime, was_running: bool
    ) -> None:
        data = {
            "version": SAVED_VERSION,
            "runtime": runtime.to_dict(),
            "run_dir": layout.run_dir,
            "log_dir": layout.log_dir,
            "was_running": was_running,
            "saved_at": time.time(),
        }
        try:
            write_atomic(path, json.dumps(data, indent=1) + "\n", mode=0o600)
        except OSError as exc:
            raise HypervisorError(f"cannot write {path}: {exc.strerror}") from exc

    @staticmethod
    def _read_saved(path: str) -> dict[str, Any]:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError as exc:
            raise HypervisorError(
                f"no saved runtime at {path}: the state file cannot be restored",
                kind=ErrorKind.NOT_FOUND,
                path=path,
            ) from exc
        except (OSError, ValueError) as exc:
            raise HypervisorError(f"cannot read {path}: {exc}", path=path) from exc
        if not isinstance(data, dict) or data.get("version") != SAVED_VERSION:
            raise HypervisorError(f"{path} is not a saved runtime this Corral understands")
        return data

    # --- restore -------------------------------------------------------------------------------

    def resume_suspended(
        self, spec: InstanceSpec, disks: Sequence[AttachedDisk], state_file: str
    ) -> None:
        """Start the guest again from ``state_file`` (written by :meth:`suspend`).

        Raises:
            HypervisorError: WRONG_STATE when it already runs; NOT_FOUND when the state file
                or its saved runtime is missing; INVALID for disks that do not match; the
                restore failed (QEMU killed, run files removed, the state file kept).
        """
        layout = self._layout(spec.name)
        if not os.path.isfile(state_file):
            raise HypervisorError(
                f"no saved state at {state_file}", kind=ErrorKind.NOT_FOUND, path=state_file
            )
        saved = self._read_saved(saved_runtime_file(state_file))
        source = KvmRuntime.from_dict(dict(saved["runtime"]))
        if source.name != spec.name or source.uuid != spec.uuid:
            raise HypervisorError(
                f"{state_file} holds {source.name} ({source.uuid}), not {spec.name}",
                kind=ErrorKind.INVALID,
            )
        saved_layout = InstanceLayout(
            run_dir=str(saved.get("run_dir", "")),
            log_dir=str(saved.get("log_dir", "")),
            name=spec.name,
        )
        runtime = rebase_runtime(source, saved_layout, layout, disks)
        timeout = _save_timeout(runtime.spec.memory)
        started = time.monotonic()
        with self._lock(layout):
            old = self._load(layout)
            if self._process(layout, old) is not None:
                raise HypervisorError(
                    f"instance {spec.name} is already running", kind=ErrorKind.WRONG_STATE
                )
            self._cleanup_files(layout, old)
            self._launch(layout, runtime, paused=True, incoming="defer")
            try:
                proc = self._process(layout, runtime)
                if proc is None:
                    raise HypervisorError(f"QEMU of {spec.name} exited right after starting")
                fd = os.open(state_file, os.O_RDONLY | os.O_CLOEXEC)

                async def load(q: QmpSession) -> str:
                    await q.getfd("corral-restore", fd)
                    await q.migrate_incoming("fd:corral-restore")
                    status = (await q.query_status()).status
                    while status == "inmigrate":
                        if time.monotonic() - started > timeout:
                            raise HypervisorError(
                                f"restoring {spec.name} did not finish within {timeout:g}s",
                                kind=ErrorKind.ENVIRONMENT,
                            )
                        await asyncio.sleep(POLL)
                        status = (await q.query_status()).status
                    if status != "paused":
                        raise HypervisorError(
                            f"restoring {spec.name} ended in state {status}",
                            kind=ErrorKind.ENVIRONMENT,
                        )
                    if saved.get("was_running", True):
                        await q.cont()
                        return "running"
                    return status

                try:
                    status = proc.monitor.call(load)
                finally:
                    os.close(fd)
            except BaseException:
                self._kill_and_clean(layout, runtime)
                raise
            runtime.paused_at_start = False
            save_runtime(layout, runtime)
        for path in (state_file, saved_runtime_file(state_file)):
            with contextlib.suppress(OSError):
                os.unlink(path)
        log.info(
            "%s: restored from %s in %.2fs (%s)",
            spec.name,
            state_file,
            time.monotonic() - started,
            status,
        )

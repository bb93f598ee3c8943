"""Live and non-live migration of KVM guests between nodes (the node-level steps).

A cluster migration (a later issue) calls these steps through node RPCs, in this order::

    source: migration_info(name)                    -> the runtime to replay (JSON)
    target: accept_migration(spec, disks, info,      QEMU started PAUSED with the same device
                             listen_host, port)      set plus ``-incoming defer``, then
                                                     ``migrate-incoming tcp:HOST:PORT``
    source: migrate(name, target_host, port, live,   ``migrate-set-parameters`` (bandwidth,
                    bandwidth_mib, downtime_ms)      downtime), ``stop`` first when not live,
                                                     then ``migrate`` (returns at once)
    source: migration_status(name)  ...until completed/failed/cancelled (``query-migrate``)
    target: finalize_migration_target(spec, success) success: ``cont``, the runtime is the
                                                     instance's own; failure: kill, clean up
    source: finalize_migration_source(name, success) success: quit, clean up; failure: cancel
                                                     if still running, ``cont`` if it ran
    source: abort_migration(name)                    ``migrate_cancel``, the source runs on

Finalizing the target before the source keeps the guest's downtime short (the source sits in
``postmigrate``, stopped, until it is quit). Safety rules that hold whatever the caller does:

* the target never runs the guest by itself: it is started with ``-S``, so after the state
  arrived it stays paused until ``finalize_migration_target(success=True)``;
* ``finalize_migration_source(success=True)`` refuses to quit a source whose migration has not
  completed (it may be the only copy of the guest);
* a source that was paused before the migration stays paused after a failed one.

The destination replays the source's runtime (its argv, so hot-plugged devices recorded there
travel too) with the paths of the destination's layout and disks; QEMU requires the identical
device set on both sides. The migration's own state lives in ``migration.json`` in the run
directory of either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import AttachedDisk, InstanceSpec, MigrationStatus
from corral.hypervisor.kvm import events
from corral.hypervisor.kvm.cmdline import qemu_escape
from corral.hypervisor.kvm.core import KvmCore
from corral.hypervisor.kvm.monitor import QmpSession
from corral.hypervisor.kvm.runtime import InstanceLayout, KvmRuntime, save_runtime

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Layout of the dict returned by :meth:`KvmMigration.migration_info`.
MIGRATION_INFO_VERSION = 1
#: query-migrate states after which nothing changes any more.
FINAL_STATES = frozenset({"completed", "failed", "cancelled"})
#: QEMU run states from which an instance may be migrated (or saved).
MIGRATABLE = frozenset({"running", "paused", "prelaunch"})
#: QEMU's own default bandwidth (MiB/s), used when neither the call nor hvparams give one.
DEFAULT_BANDWIDTH_MIB = 128
#: How often migration and incoming states are polled.
POLL = 0.01


# --- pure helpers ------------------------------------------------------------------------------


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_query_migrate(reply: Mapping[str, Any]) -> MigrationStatus:
    """A :class:`MigrationStatus` from QEMU's ``query-migrate`` answer.

    No ``status`` (no migration ever ran in this QEMU) is ``none``. While a migration is
    active ``downtime_ms`` is QEMU's ``expected-downtime``; once completed, the real one (None
    in the first moments after completion, before QEMU computed it).
    """
    status = str(reply.get("status") or "none")
    ram = reply.get("ram")
    ram = ram if isinstance(ram, dict) else {}
    downtime = reply.get("downtime")
    if downtime is None and status not in FINAL_STATES:
        downtime = reply.get("expected-downtime")
    total_time = reply.get("total-time")
    if status == "completed" and not total_time:
        # NOTE: right after completing, QEMU 7.2 answers total-time 0 and downtime 0 for a
        # moment: the figures are not known yet, rather than zero.
        downtime = total_time = None
    return MigrationStatus(
        status=status,
        transferred=_int(ram.get("transferred")),
        remaining=_int(ram.get("remaining")),
        total=_int(ram.get("total")),
        downtime_ms=_int(downtime) if downtime is not None else None,
        total_time_ms=_int(total_time) if total_time is not None else None,
        error=str(reply.get("error-desc") or ""),
    )


def tcp_uri(host: str, port: int) -> str:
    """``tcp:HOST:PORT`` (IPv6 addresses in brackets).

    Raises:
        HypervisorError: kind INVALID for a port outside 1..65535 or an empty host.
    """
    if not host or not 0 < port < 65536:
        raise HypervisorError(
            f"invalid migration address {host!r}:{port}", kind=ErrorKind.INVALID, port=port
        )
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"tcp:{host}:{port}"


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def rebase_runtime(
    runtime: KvmRuntime,
    src: InstanceLayout,
    dst: InstanceLayout,
    disks: Sequence[AttachedDisk],
) -> KvmRuntime:
    """The runtime of ``src`` replayed at ``dst``: same devices, this side's paths (pure).

    Paths under the source's instance directory (sockets, pid file), its serial and QEMU
    logs, and disk images whose path differs on this side are replaced in every argument;
    nothing else changes (QEMU needs the identical device set on both sides).

    Raises:
        HypervisorError: kind INVALID when the disks do not match the runtime's (count,
            indexes or formats).
    """
    old = {d.index: d for d in runtime.disks}
    new = {d.index: d for d in disks}
    if sorted(old) != sorted(new):
        raise HypervisorError(
            f"the disks given ({sorted(new)}) are not those the guest runs with ({sorted(old)})",
            kind=ErrorKind.INVALID,
        )
    pairs: list[tuple[str, str]] = []

    def add(before: str, after: str) -> None:
        if before != after:
            pairs.append((before, after))
            if qemu_escape(before) != before:
                pairs.append((qemu_escape(before), qemu_escape(after)))

    records = []
    for index in sorted(old):
        disk, attached = old[index], new[index]
        if disk.format != attached.format:
            raise HypervisorError(
                f"disk {index} is {attached.format} here but {disk.format} in the runtime",
                kind=ErrorKind.INVALID,
            )
        add(f"filename={disk.path}", f"filename={attached.path}")
        records.append(dataclasses.replace(disk, path=attached.path))
    add(src.dir + "/", dst.dir + "/")
    add(src.serial_log, dst.serial_log)
    add(src.qemu_log, dst.qemu_log)
    pairs.sort(key=lambda p: len(p[0]), reverse=True)
    argv = []
    for arg in runtime.argv:
        if arg == src.dir:
            arg = dst.dir
        for before, after in pairs:
            arg = arg.replace(before, after)
        argv.append(arg)
    return dataclasses.replace(runtime, argv=argv, disks=records, pid=None)


# --- the feature ---------------------------------------------------------------------------------


class KvmMigration(KvmCore):
    """Node-level migration steps; see the module docstring."""

    # --- state kept in the run directory -----------------------------------------------------

    @staticmethod
    def _read_migration(layout: InstanceLayout) -> dict[str, Any]:
        try:
            with open(layout.migration_file, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _write_migration(layout: InstanceLayout, data: Mapping[str, Any]) -> None:
        # NOTE: no fsync: the run directory is volatile (tmpfs on a host) and this file only
        # matters while QEMU runs; an fsync here would lengthen the migration for nothing.
        tmp = layout.migration_file + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(dict(data)) + "\n")
            os.replace(tmp, layout.migration_file)
        except OSError as exc:
            raise HypervisorError(f"cannot write {layout.migration_file}: {exc.strerror}") from exc

    @staticmethod
    def _forget_migration(layout: InstanceLayout) -> None:
        with contextlib.suppress(OSError):
            os.unlink(layout.migration_file)

    def _migration_role(self, layout: InstanceLayout) -> str:
        """``source`` or ``target`` while a migration is in progress here, else ""."""
        return str(self._read_migration(layout).get("role", ""))

    # --- source side ---------------------------------------------------------------------------

    def migration_info(self, name: str) -> dict[str, Any]:
        """The runtime the destination replays, with the source's layout and run state.

        Raises:
            HypervisorError: WRONG_STATE when it does not run (or is itself migrating in or
                was migrated away already).
        """
        _, runtime, proc = self._require_live(name)
        status = proc.monitor.call(lambda q: q.query_status()).status
        if status not in MIGRATABLE:
            raise HypervisorError(
                f"instance {name} cannot be migrated while it is {status}",
                kind=ErrorKind.WRONG_STATE,
                status=status,
            )
        return {
            "version": MIGRATION_INFO_VERSION,
            "hypervisor": self.NAME,
            "runtime": runtime.to_dict(),
            "run_dir": self.run_dir,
            "log_dir": self.log_dir,
            "running": status == "running",
            "qemu_version": runtime.qemu_version,
            "accel": runtime.accel,
        }

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
        """Send the guest to an accepting destination; returns as soon as QEMU started.

        Bandwidth (MiB/s) and maximum downtime (ms) default to the ``migration_bandwidth``
        and ``migration_downtime`` hvparams the guest was started with. A non-live migration
        stops the vCPUs first. On failure to start, a guest stopped here runs again.

        Raises:
            HypervisorError: WRONG_STATE when not running or already migrating; INVALID for
                a bad address or values; QEMU refused the migration.
        """
        uri = tcp_uri(target_host, port)
        layout = self._layout(name)
        with self._lock(layout):
            layout, runtime, proc = self._require_live(name)
            hv = runtime.hvparams
            bandwidth = (
                bandwidth_mib or _int(hv.get("migration_bandwidth")) or (DEFAULT_BANDWIDTH_MIB)
            )
            downtime = downtime_ms or _int(hv.get("migration_downtime"))
            if bandwidth <= 0 or (downtime_ms is not None and downtime_ms <= 0):
                raise HypervisorError(
                    "migration bandwidth and downtime must be positive", kind=ErrorKind.INVALID
                )
            params: dict[str, object] = {"max-bandwidth": bandwidth * MIB}
            if downtime:
                params["downtime-limit"] = downtime

            async def act(q: QmpSession) -> None:
                status = (await q.query_status()).status
                if status not in MIGRATABLE:
                    raise HypervisorError(
                        f"instance {name} cannot be migrated while it is {status}",
                        kind=ErrorKind.WRONG_STATE,
                        status=status,
                    )
                current = parse_query_migrate(await q.query_migrate()).status
                if current not in FINAL_STATES and current != "none":
                    raise HypervisorError(
                        f"instance {name} is already migrating ({current})",
                        kind=ErrorKind.WRONG_STATE,
                    )
                running = status == "running"
                self._write_migration(
                    layout,
                    {
                        "role": "source",
                        "was_running": running,
                        "target": uri,
                        "live": live,
                        "started": time.time(),
                    },
                )
                stopped = False
                try:
                    # MIGRATION events wake migration_status(wait=...) the moment it ends
                    await q.migrate_set_capabilities({"events": True})
                    await q.migrate_set_parameters(params)
                    if running and not live:
                        await q.stop()
                        stopped = True
                    await q.migrate(uri)
                except BaseException:
                    if stopped:
                        with contextlib.suppress(HypervisorError):
                            await q.cont()
                    self._forget_migration(layout)
                    raise

            proc.monitor.call(act)
        log.info(
            "%s: %s migration to %s started (%d MiB/s, downtime %s ms)",
            name,
            "live" if live else "non-live",
            uri,
            bandwidth,
            downtime or "default",
        )

    def migration_status(self, name: str, *, wait: float = 0.0) -> MigrationStatus:
        """Progress of the outgoing migration (``query-migrate``).

        With ``wait`` it answers once the migration is final or ``wait`` seconds passed,
        over one QMP connection: QEMU's ``MIGRATION`` events (turned on by :meth:`migrate`)
        wake it at once, and it polls every :data:`POLL` seconds besides. (A new connection
        per poll would cost QEMU's main loop a greeting and a negotiation each time, right
        while the migration finishes.)

        Raises:
            HypervisorError: WRONG_STATE when the instance does not run here; QMP failed.
        """
        _, _, proc = self._require_live(name)
        if wait <= 0:
            return parse_query_migrate(proc.monitor.call(lambda q: q.query_migrate()))
        reply = proc.monitor.call(lambda q: q.wait_migration(wait, poll=POLL))
        return parse_query_migrate(reply)

    async def _settle(self, q: QmpSession, name: str, *, cancel: bool) -> MigrationStatus:
        """Cancel the migration if asked, and wait until it reached a final state."""
        deadline = time.monotonic() + self.qmp_timeout
        status = parse_query_migrate(await q.query_migrate())
        if cancel and status.status not in FINAL_STATES and status.status != "none":
            await q.migrate_cancel()
        while status.status not in FINAL_STATES and status.status != "none":
            if time.monotonic() > deadline:
                raise HypervisorError(
                    f"the migration of {name} did not stop within {self.qmp_timeout:g}s "
                    f"(still {status.status})",
                    kind=ErrorKind.ENVIRONMENT,
                )
            await asyncio.sleep(POLL)
            status = parse_query_migrate(await q.query_migrate())
        return status

    def _resume_source(self, name: str, *, completed_ok: bool) -> str:
        """Cancel a running migration and let the guest run again if it ran before.

        Returns:
            The final migration state.

        Raises:
            HypervisorError: not running; with ``completed_ok=False``, the migration had
                already completed (WRONG_STATE); QMP failed.
        """
        layout = self._layout(name)
        with self._lock(layout):
            layout, _, proc = self._require_live(name)
            marker = self._read_migration(layout)

            async def act(q: QmpSession) -> str:
                final = await self._settle(q, name, cancel=True)
                if final.status == "completed" and not completed_ok:
                    raise HypervisorError(
                        f"the migration of {name} has already completed; finalize it instead",
                        kind=ErrorKind.WRONG_STATE,
                    )
                status = (await q.query_status()).status
                was_running = bool(marker.get("was_running", status == "postmigrate"))
                if was_running and status in ("paused", "postmigrate", "finish-migrate"):
                    await q.cont()
                return final.status

            final = proc.monitor.call(act)
            self._forget_migration(layout)
        return final

    def finalize_migration_source(self, name: str, *, success: bool) -> None:
        """Success: quit the source and remove its run files. Failure: resume it.

        Raises:
            HypervisorError: (success) the migration has not completed (WRONG_STATE: the
                source is left alone) or QEMU could not be stopped; (failure) the source is
                gone or could not be resumed.
        """
        if not success:
            final = self._resume_source(name, completed_ok=True)
            log.info("%s: migration failed (%s); the source runs on", name, final)
            return
        layout = self._layout(name)
        with self._lock(layout):
            layout, runtime, proc = self._require_live(name)

            async def check_and_quit(q: QmpSession) -> None:
                status = parse_query_migrate(await q.query_migrate())
                if status.status != "completed":
                    raise HypervisorError(
                        f"the migration of {name} has not completed ({status.status}); "
                        "the source is kept",
                        kind=ErrorKind.WRONG_STATE,
                        status=status.status,
                    )
                events.mark_stopping(layout)
                await q.quit()

            proc.monitor.call(check_and_quit)
            how = self._quit_now(proc, sent=True)
            self._cleanup_files(layout, runtime)
        log.info("%s: migrated away; source stopped (%s)", name, how)

    def abort_migration(self, name: str) -> None:
        """Cancel the outgoing migration; the source runs (or stays paused) as before.

        Raises:
            HypervisorError: not running; the migration already completed (WRONG_STATE).
        """
        final = self._resume_source(name, completed_ok=False)
        log.info("%s: migration aborted (%s)", name, final)

    # --- target side ---------------------------------------------------------------------------

    def _check_info(self, spec: InstanceSpec, info: Mapping[str, Any]) -> KvmRuntime:
        """The source runtime in ``info``, checked against this node.

        Raises:
            HypervisorError: kind INVALID for info of another instance or version, or a
                QEMU/accelerator this node cannot offer.
        """
        if info.get("version") != MIGRATION_INFO_VERSION or not isinstance(
            info.get("runtime"), dict
        ):
            raise HypervisorError(
                f"migration info of version {info.get('version')!r} is not understood",
                kind=ErrorKind.INVALID,
            )
        runtime = KvmRuntime.from_dict(dict(info["runtime"]))
        if runtime.name != spec.name or runtime.uuid != spec.uuid:
            raise HypervisorError(
                f"migration info is for {runtime.name} ({runtime.uuid}), not {spec.name}",
                kind=ErrorKind.INVALID,
            )
        binary = runtime.argv[0] if runtime.argv else ""
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise HypervisorError(
                f"QEMU binary {binary!r} of {spec.name} does not exist on this node",
                kind=ErrorKind.INVALID,
            )
        if runtime.accel == "kvm" and not self.probe_kvm().usable:
            raise HypervisorError(
                f"{spec.name} runs under KVM, which this node cannot offer",
                kind=ErrorKind.INVALID,
            )
        here = self.qemu_version(binary)
        if runtime.qemu_version and _version(here)[:2] < _version(runtime.qemu_version)[:2]:
            raise HypervisorError(
                f"QEMU {here} here is older than the source's {runtime.qemu_version}",
                kind=ErrorKind.INVALID,
            )
        return runtime

    def accept_migration(
        self,
        spec: InstanceSpec,
        disks: Sequence[AttachedDisk],
        info: Mapping[str, Any],
        *,
        listen_host: str,
        port: int,
    ) -> None:
        """Start the destination paused with the source's devices, listening on host:port.

        Raises:
            HypervisorError: WRONG_STATE when the instance already runs here; INVALID for
                info or disks that do not fit this node; LaunchError when QEMU refused. Nothing
                is left behind on failure.
        """
        uri = tcp_uri(listen_host, port)
        layout = self._layout(spec.name)
        problem = layout.socket_problem()
        if problem:
            raise HypervisorError(problem, kind=ErrorKind.INVALID)
        source = self._check_info(spec, info)
        src_layout = InstanceLayout(
            run_dir=str(info.get("run_dir", "")),
            log_dir=str(info.get("log_dir", "")),
            name=source.name,
        )
        runtime = rebase_runtime(source, src_layout, layout, disks)
        with self._lock(layout):
            old = self._load(layout)
            if self._process(layout, old) is not None:
                raise HypervisorError(
                    f"instance {spec.name} is already running here", kind=ErrorKind.WRONG_STATE
                )
            self._cleanup_files(layout, old)
            self._launch(layout, runtime, paused=True, incoming="defer")
            try:
                self._write_migration(
                    layout,
                    {
                        "role": "target",
                        "source_running": bool(info.get("running", True)),
                        "listen": uri,
                        "started": time.time(),
                    },
                )
                proc = self._process(layout, runtime)
                if proc is None:
                    raise HypervisorError(f"QEMU of {spec.name} exited right after starting")
                proc.monitor.call(lambda q: q.migrate_incoming(uri))
            except BaseException:
                self._kill_and_clean(layout, runtime)
                raise
        log.info("%s: accepting a migration on %s (pid %s)", spec.name, uri, runtime.pid)

    def finalize_migration_target(self, spec: InstanceSpec, *, success: bool) -> None:
        """Success: run the guest here; failure: kill the destination and clean up.

        On success the driver waits until the state is loaded, sends ``cont`` (unless the
        source was paused) and keeps the runtime as the instance's own.

        Raises:
            HypervisorError: (success) the destination is gone (the state could not be
                loaded) or still waits for the state (WRONG_STATE), or QMP failed.
        """
        layout = self._layout(spec.name)
        with self._lock(layout):
            runtime = self._load(layout)
            if not success:
                self._kill_and_clean(layout, runtime)
                log.info("%s: incoming migration abandoned; destination removed", spec.name)
                return
            proc = self._process(layout, runtime)
            if proc is None or runtime is None:
                raise HypervisorError(
                    f"the destination QEMU of {spec.name} is not running (see {layout.qemu_log})",
                    kind=ErrorKind.WRONG_STATE,
                )
            marker = self._read_migration(layout)
            deadline = time.monotonic() + self.qmp_timeout

            run = bool(marker.get("source_running", True))

            async def act(q: QmpSession) -> str:
                # NOTE: no `cont` while still `inmigrate`: QEMU would activate the images
                # before the state is in (it only arms the start); wait for the load instead.
                status = (await q.query_status()).status
                while status == "inmigrate":
                    if time.monotonic() > deadline:
                        raise HypervisorError(
                            f"{spec.name} has not received its state yet (inmigrate)",
                            kind=ErrorKind.WRONG_STATE,
                        )
                    await asyncio.sleep(POLL)
                    status = (await q.query_status()).status
                if status == "paused" and run:
                    await q.cont()
                    status = "running"
                return status

            status = proc.monitor.call(act)
            runtime.paused_at_start = False
            save_runtime(layout, runtime)
            self._forget_migration(layout)
        log.info("%s: incoming migration finished; guest %s", spec.name, status)

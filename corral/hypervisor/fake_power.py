"""Pause, suspend and migration for the ``fake`` hypervisor (control-plane tests, benchmarks).

They follow the KVM driver's contracts without any process:

* pause/resume flip the recorded state (paused <-> running); a paused instance stays paused,
  a running one stays running; an instance that does not run is refused (WRONG_STATE);
* suspend moves the instance's record into the state file (refused with EXISTS when one is
  there) and the instance stops; resume_suspended brings it back in the state it was saved
  in and removes the file;
* a migration is recorded in the instance file of each side: ``migrate`` marks the source
  ``active`` (and stops it when not live), the first ``migration_status`` afterwards reports
  ``completed``; the finalize steps and ``abort_migration`` keep the KVM rules (a source whose
  migration did not complete is never quit; a completed one cannot be aborted; a source that
  was paused stays paused after a failure).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import AttachedDisk, InstanceSpec, InstanceState, MigrationStatus

_RUNNING = InstanceState.RUNNING.value
_PAUSED = InstanceState.PAUSED.value


class FakePower:
    """The pause/suspend/migration methods of :class:`~corral.hypervisor.fake.FakeHypervisor`."""

    def _read(self, name: str) -> dict[str, Any] | None:
        raise NotImplementedError  # pragma: no cover - provided by FakeHypervisor

    def _require(self, name: str) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover - provided by FakeHypervisor

    def _write(self, name: str, data: Mapping[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover - provided by FakeHypervisor

    def _path(self, name: str) -> str:
        raise NotImplementedError  # pragma: no cover - provided by FakeHypervisor

    def _forget(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise HypervisorError(f"cannot remove fake instance {name}: {exc}") from exc

    def _state(self, name: str, allowed: tuple[str, ...], what: str) -> dict[str, Any]:
        data = self._require(name)
        if data.get("state") not in allowed or data.get("migration", {}).get("role") == "target":
            raise HypervisorError(
                f"instance {name} cannot be {what} while it is {data.get('state')}",
                kind=ErrorKind.WRONG_STATE,
            )
        return data

    # --- pause / resume ------------------------------------------------------------------------

    def pause(self, name: str) -> None:
        """Record the instance as paused.

        Raises:
            HypervisorError: WRONG_STATE when it does not run (or is migrating in).
        """
        data = self._state(name, (_RUNNING, _PAUSED), "paused")
        data["state"] = _PAUSED
        self._write(name, data)

    def resume(self, name: str) -> None:
        """Record the instance as running.

        Raises:
            HypervisorError: WRONG_STATE when it does not run, or was migrated away.
        """
        data = self._state(name, (_RUNNING, _PAUSED), "resumed")
        if data.get("migration", {}).get("status") == "completed":
            raise HypervisorError(f"instance {name} was migrated away", kind=ErrorKind.WRONG_STATE)
        data["state"] = _RUNNING
        self._write(name, data)

    # --- suspend ---------------------------------------------------------------------------------

    def suspend(self, name: str, state_file: str) -> None:
        """Move the instance's record into ``state_file``; the instance stops.

        Raises:
            HypervisorError: WRONG_STATE when it does not run; EXISTS when a state file is
                there; the file cannot be written.
        """
        data = self._state(name, (_RUNNING, _PAUSED), "suspended")
        try:
            os.makedirs(os.path.dirname(state_file) or ".", exist_ok=True)
            with open(state_file, "x", encoding="utf-8") as fh:
                json.dump(data, fh)
        except FileExistsError as exc:
            raise HypervisorError(
                f"a saved state already exists at {state_file}", kind=ErrorKind.EXISTS
            ) from exc
        except OSError as exc:
            raise HypervisorError(f"cannot write {state_file}: {exc}") from exc
        self._forget(name)

    def resume_suspended(
        self, spec: InstanceSpec, disks: Sequence[AttachedDisk], state_file: str
    ) -> None:
        """Bring the instance back from ``state_file`` (then removed), as it was saved.

        Raises:
            HypervisorError: WRONG_STATE when it runs; NOT_FOUND without a state file;
                INVALID for a state file of another instance.
        """
        if self._read(spec.name) is not None:
            raise HypervisorError(
                f"instance {spec.name} is already running", kind=ErrorKind.WRONG_STATE
            )
        try:
            with open(state_file, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError as exc:
            raise HypervisorError(
                f"no saved state at {state_file}", kind=ErrorKind.NOT_FOUND
            ) from exc
        except (OSError, ValueError) as exc:
            raise HypervisorError(f"cannot read {state_file}: {exc}") from exc
        if not isinstance(data, dict) or data.get("uuid") != spec.uuid:
            raise HypervisorError(
                f"{state_file} is not a saved state of {spec.name}", kind=ErrorKind.INVALID
            )
        self._write(spec.name, data)
        os.unlink(state_file)

    # --- migration -------------------------------------------------------------------------------

    def migration_info(self, name: str) -> dict[str, Any]:
        """The instance's record.

        Raises:
            HypervisorError: WRONG_STATE when it does not run.
        """
        data = self._state(name, (_RUNNING, _PAUSED), "migrated")
        return {"version": 1, "hypervisor": "fake", "instance": data}

    def accept_migration(
        self,
        spec: InstanceSpec,
        disks: Sequence[AttachedDisk],
        info: Mapping[str, Any],
        *,
        listen_host: str,
        port: int,
    ) -> None:
        """Record the incoming instance, paused.

        Raises:
            HypervisorError: WRONG_STATE when it runs here; INVALID for info of another one.
        """
        record = info.get("instance")
        if not isinstance(record, dict) or record.get("uuid") != spec.uuid:
            raise HypervisorError(
                f"migration info is not about {spec.name}", kind=ErrorKind.INVALID
            )
        if self._read(spec.name) is not None:
            raise HypervisorError(
                f"instance {spec.name} is already running here", kind=ErrorKind.WRONG_STATE
            )
        data = dict(record)
        data["migration"] = {"role": "target", "source_state": record.get("state", _RUNNING)}
        data["state"] = _PAUSED
        data["disks"] = [d.path for d in disks]
        self._write(spec.name, data)

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
        """Mark the migration active (stopping the instance when not live).

        Raises:
            HypervisorError: WRONG_STATE when it does not run or already migrates.
        """
        data = self._state(name, (_RUNNING, _PAUSED), "migrated")
        if data.get("migration", {}).get("status") in ("active", "completed"):
            raise HypervisorError(
                f"instance {name} is already migrating", kind=ErrorKind.WRONG_STATE
            )
        data["migration"] = {
            "role": "source",
            "status": "active",
            "was_state": data["state"],
            "target": f"{target_host}:{port}",
            "live": live,
            "started": time.time(),
        }
        if not live:
            data["state"] = _PAUSED
        self._write(name, data)

    def migration_status(self, name: str, *, wait: float = 0.0) -> MigrationStatus:
        """``active`` once, then ``completed`` (the instance then counts as stopped).

        ``wait`` > 0 skips the ``active`` answer (it would complete at once anyway).

        Raises:
            HypervisorError: WRONG_STATE when it does not run here.
        """
        data = self._require(name)
        migration = data.get("migration") or {}
        status = str(migration.get("status", "none"))
        if status == "active":
            migration["status"] = "completed"
            status = "completed" if wait > 0 else status
            data["migration"] = migration
            data["state"] = _PAUSED
            self._write(name, data)
        return MigrationStatus(status=status)

    def finalize_migration_source(self, name: str, *, success: bool) -> None:
        """Success: forget the instance (completed migrations only). Failure: restore it.

        Raises:
            HypervisorError: WRONG_STATE when it does not run or (success) did not complete.
        """
        data = self._require(name)
        migration = data.get("migration") or {}
        if success:
            if migration.get("status") != "completed":
                raise HypervisorError(
                    f"the migration of {name} has not completed ({migration.get('status')})",
                    kind=ErrorKind.WRONG_STATE,
                )
            self._forget(name)
            return
        data["state"] = migration.get("was_state", data.get("state", _RUNNING))
        data.pop("migration", None)
        self._write(name, data)

    def finalize_migration_target(self, spec: InstanceSpec, *, success: bool) -> None:
        """Success: the instance runs here as it ran on the source. Failure: forget it.

        Raises:
            HypervisorError: (success) WRONG_STATE when there is no incoming instance.
        """
        if not success:
            self._forget(spec.name)
            return
        data = self._require(spec.name)
        migration = data.pop("migration", None) or {}
        data["state"] = migration.get("source_state", _RUNNING)
        self._write(spec.name, data)

    def abort_migration(self, name: str) -> None:
        """Cancel an active migration; the instance is as before.

        Raises:
            HypervisorError: WRONG_STATE when it does not run or the migration completed.
        """
        data = self._require(name)
        migration = data.get("migration") or {}
        if migration.get("status") == "completed":
            raise HypervisorError(
                f"the migration of {name} has already completed", kind=ErrorKind.WRONG_STATE
            )
        data["state"] = migration.get("was_state", data.get("state", _RUNNING))
        data.pop("migration", None)
        self._write(name, data)

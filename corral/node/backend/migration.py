"""The node side of migrations: both the source's and the destination's steps.

Each call maps to one step of the hypervisor driver (see ``hypervisor/kvm/migration.py`` for
the order a cluster migration follows and the safety rules). The destination resolves the
instance's disks the way a start does (``Instances.attach_disks``), so shared or replicated
storage is found under this node's paths. Steps that change an instance hold its lock; the
status call does not, so it can be polled while other steps run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import Hypervisor, InstanceSpec, MigrationStatus
from corral.node.backend.instances import HypervisorGetter, InstanceLocks, Instances
from corral.rpc.calls import DiskRef

log = logging.getLogger(__name__)

#: Longest a status call waits for a final state.
MAX_STATUS_WAIT = 30.0


class Migrations:
    """The migration family of node calls."""

    def __init__(self, get_hv: HypervisorGetter, instances: Instances, locks: InstanceLocks):
        """Create the family from a hypervisor getter, the instance family and the locks."""
        self._get_hv = get_hv
        self._instances = instances
        self.locks = locks

    def _driver(self, hypervisor: str, name: str) -> Hypervisor:
        hv = self._get_hv(hypervisor)
        if not hv.CAPABILITIES.live_migration:
            raise HypervisorError(
                f"hypervisor {hypervisor} cannot migrate instances",
                kind=ErrorKind.INVALID,
                instance=name,
            )
        return hv

    # --- source ------------------------------------------------------------------------------

    def info(self, name: str, hypervisor: str) -> dict[str, Any]:
        """What the destination needs to replay the running instance.

        Raises:
            HypervisorError: not supported (INVALID) or not running (WRONG_STATE).
        """
        return self._driver(hypervisor, name).migration_info(name)

    def migrate(
        self,
        name: str,
        hypervisor: str,
        *,
        target_host: str,
        port: int,
        live: bool,
        bandwidth_mib: int | None,
        downtime_ms: int | None,
    ) -> None:
        """Start sending the instance to ``target_host:port`` (returns at once).

        Raises:
            HypervisorError: not supported, not running, already migrating, or refused.
        """
        hv = self._driver(hypervisor, name)
        with self.locks.hold(name):
            hv.migrate(
                name,
                target_host=target_host,
                port=port,
                live=live,
                bandwidth_mib=bandwidth_mib,
                downtime_ms=downtime_ms,
            )
        log.info("migration of %s to %s:%d started (live=%s)", name, target_host, port, live)

    def status(self, name: str, hypervisor: str, *, wait: float = 0.0) -> MigrationStatus:
        """The migration's progress; with ``wait`` as soon as it is final (or after ``wait`` s).

        Raises:
            HypervisorError: not supported, or the instance does not run here.
        """
        hv = self._driver(hypervisor, name)
        return hv.migration_status(name, wait=min(max(wait, 0.0), MAX_STATUS_WAIT))

    def finalize_source(self, name: str, hypervisor: str, *, success: bool) -> None:
        """Quit the source (success) or let it run again (failure).

        Raises:
            HypervisorError: (success) the migration did not complete — the source is kept;
                (failure) the source is gone or could not be resumed.
        """
        hv = self._driver(hypervisor, name)
        with self.locks.hold(name):
            hv.finalize_migration_source(name, success=success)
        log.info("migration of %s finalized on the source (success=%s)", name, success)

    def abort(self, name: str, hypervisor: str) -> None:
        """Cancel the outgoing migration; the source runs on.

        Raises:
            HypervisorError: not running, or the migration already completed (WRONG_STATE).
        """
        hv = self._driver(hypervisor, name)
        with self.locks.hold(name):
            hv.abort_migration(name)
        log.info("migration of %s aborted", name)

    # --- destination ---------------------------------------------------------------------------

    def accept(
        self,
        spec: InstanceSpec,
        disks: Sequence[DiskRef],
        info: Mapping[str, Any],
        *,
        listen_host: str,
        port: int,
    ) -> None:
        """Start the destination paused, waiting for the state on ``listen_host:port``.

        Raises:
            StorageError: a disk's volume is missing here (names the disk index).
            HypervisorError: not supported, already running here, info or disks that do not
                fit, or QEMU refused (nothing is left behind).
        """
        hv = self._driver(spec.hypervisor, spec.name)
        with self.locks.hold(spec.name):
            attached = self._instances.attach_disks(disks)
            hv.accept_migration(spec, attached, info, listen_host=listen_host, port=port)
        log.info("accepting %s on %s:%d", spec.name, listen_host, port)

    def finalize_target(self, spec: InstanceSpec, *, success: bool) -> None:
        """Run the migrated instance here (success) or remove the destination (failure).

        Raises:
            HypervisorError: (success) the state did not arrive or the guest cannot run.
        """
        hv = self._driver(spec.hypervisor, spec.name)
        with self.locks.hold(spec.name):
            hv.finalize_migration_target(spec, success=success)
        log.info("migration of %s finalized on the destination (success=%s)", spec.name, success)

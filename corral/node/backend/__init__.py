"""The node backend: the host-local work behind every master -> node RPC call.

:class:`NodeBackend` has one synchronous method per call of
:data:`corral.rpc.calls.CALLS`, named like the call's wire name, taking the call's request
model and returning its response model. The node daemon runs them in worker threads, so they
are safe to call concurrently: start, shutdown, reboot, balloon and OS scripts of one instance
are serialised by a per-instance lock; everything else is independent or read-only.

Failures raise :class:`~corral.common.errors.CorralError` subclasses (never a bare ``OSError``):
``StorageError`` from the storage drivers, ``HypervisorError`` from the hypervisor drivers,
``OsError`` from OS definitions, ``ParamError`` for requests the node cannot act on.

The work is split by family, one module each:

=============  ===============================================================================
info           node facts: memory, CPUs, boot id, storage space, hypervisor node info
instances      list/info/start/shutdown/reboot/balloon/console through the hypervisor driver
blockdev       create/remove/grow/find/rename/sizes through the storage drivers
osdef          OS definitions: discovery, validation, the OS API environment
osrun          running OS scripts (log files, timeouts, qcow2 raw views)
hooks          the hooks runner (``<hooks_dir>/<hpath>-<phase>.d/``)
power          pause/resume, suspend to disk and restore (Corral extensions)
migration      both sides of a migration: info, accept, migrate, status, finalize, abort
=============  ===============================================================================
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import corral
from corral.common.errors import CorralError
from corral.common.paths import Paths
from corral.hypervisor.base import Hypervisor
from corral.node.backend import info as node_info_mod
from corral.node.backend import membership
from corral.node.backend import verify as node_verify
from corral.node.backend.blockdev import Blockdevs, StorageGetter
from corral.node.backend.hooks import DEFAULT_HOOK_TIMEOUT, HooksRunner
from corral.node.backend.instances import InstanceLocks, Instances
from corral.node.backend.migration import Migrations
from corral.node.backend.osrun import OsScripts
from corral.node.backend.power import Power, schedule_powercycle
from corral.node.backend.transfer import Transfers
from corral.rpc.calls import (
    AbortMigrationRequest,
    AcceptInstanceRequest,
    AllInstancesInfoResponse,
    BlockdevGrowRequest,
    BlockdevInfoResponse,
    BlockdevRenameRequest,
    BlockdevRequest,
    BlockdevSizesRequest,
    BlockdevSizesResponse,
    Empty,
    FinalizeMigrationDstRequest,
    FinalizeMigrationSrcRequest,
    HooksRunRequest,
    HooksRunResponse,
    HvValidateRequest,
    HvVerifyRequest,
    HvVerifyResponse,
    InstanceBalloonRequest,
    InstanceBalloonResponse,
    InstanceConsoleRequest,
    InstanceConsoleResponse,
    InstanceHotplugRequest,
    InstanceHotplugResponse,
    InstanceInfoRequest,
    InstanceInfoResponse,
    InstanceListRequest,
    InstanceListResponse,
    InstancePinCpusRequest,
    InstancePowerRequest,
    InstanceRebootRequest,
    InstanceShutdownRequest,
    InstanceStartRequest,
    InstanceSuspendRequest,
    InstanceSuspendResponse,
    InstanceUnsuspendRequest,
    MigrateInstanceRequest,
    MigrationInfoRequest,
    MigrationInfoResponse,
    MigrationStatusRequest,
    MigrationStatusResponse,
    NodeInfoRequest,
    NodeInfoResponse,
    OsCreateRequest,
    OsDiagnoseResponse,
    OsRenameRequest,
    OsScriptResponse,
    OsVerifyRequest,
    VersionResponse,
)
from corral.rpc.calls_cluster import (
    FileChecksumsRequest,
    FileChecksumsResponse,
    VolumeListRequest,
    VolumeListResponse,
)
from corral.rpc.calls_mobility import (
    TransferExportRequest,
    TransferImportAbortRequest,
    TransferImportStartRequest,
    TransferImportStartResponse,
    TransferImportWaitRequest,
    TransferResult,
)
from corral.rpc.calls_nodes import (
    NodeLeaveRequest,
    NodePowercycleRequest,
    NodePowercycleResponse,
    WriteFilesRequest,
    WriteFilesResponse,
)
from corral.storage.base import StorageDriver

log = logging.getLogger(__name__)

__all__ = ["NodeBackend"]


class NodeBackend:
    """One method per RPC call; see the module docstring.

    Args:
        paths: the node's file layout (storage dir, hooks dir, OS search path, logs...).
        node_name: this node's name in the cluster.
        get_hypervisor: maps a hypervisor name to its driver (default: the registry's
            ``get_hypervisor(name, paths)``); tests may inject another.
        get_storage: maps a disk ``dev_type`` to its driver (default: the storage registry).
        proc_dir: where host facts are read from (``/proc``).
        hook_timeout: seconds one hook script may run.
    """

    def __init__(
        self,
        paths: Paths,
        node_name: str,
        *,
        get_hypervisor: Callable[[str], Hypervisor] | None = None,
        get_storage: StorageGetter | None = None,
        proc_dir: str = "/proc",
        hook_timeout: float | None = None,
    ) -> None:
        self.paths = paths
        self.node_name = node_name
        self._get_hv = get_hypervisor or self._registry_hypervisor
        self._get_storage = get_storage or self._registry_storage
        self._proc_dir = proc_dir
        self.locks = InstanceLocks()
        self.blockdevs = Blockdevs(self._get_storage)
        self.instances = Instances(self._get_hv, self.blockdevs, self.locks)
        self.oses = OsScripts(paths, node_name, self.blockdevs, self.locks)
        self.power = Power(paths.data_dir, self._get_hv, self.instances, self.locks)
        self.migrations = Migrations(self._get_hv, self.instances, self.locks)
        self.hooks = HooksRunner(
            paths.hooks_dir,
            timeout=DEFAULT_HOOK_TIMEOUT if hook_timeout is None else hook_timeout,
            extra_dirs=(paths.ganeti_hooks_dir,),
        )

    # NOTE: the registries are imported on first use so this module imports even while a
    # driver package is broken or missing; the error then names the call that needed it.
    def _registry_hypervisor(self, name: str) -> Hypervisor:
        from corral.hypervisor.registry import get_hypervisor

        return get_hypervisor(name, self.paths)

    def _registry_storage(self, dev_type: str) -> StorageDriver:
        from corral.storage.registry import get_storage

        return get_storage(dev_type, self.paths)

    # --- node ------------------------------------------------------------------------------

    def version(self, req: Empty) -> VersionResponse:
        """Software and protocol version of this node."""
        return VersionResponse(
            software_version=corral.__version__,
            protocol_version=corral.PROTOCOL_VERSION,
            node_name=self.node_name,
        )

    def node_info(self, req: NodeInfoRequest) -> NodeInfoResponse:
        """Memory, CPUs, boot id, storage space and each hypervisor's view of the node.

        A hypervisor that cannot report is listed with zero resources and
        ``details["error"]``; it does not fail the call.

        Raises:
            CorralError: host facts cannot be read; StorageError: a storage dir cannot be
                measured.
        """
        return node_info_mod.node_info(
            node_name=self.node_name,
            hypervisors=req.hypervisors,
            storage_dirs=req.storage_dirs,
            get_hv=self._get_hv,
            file_storage=self._get_storage("file"),
            proc_dir=self._proc_dir,
        )

    def hv_verify(self, req: HvVerifyRequest) -> HvVerifyResponse:
        """Problems each hypervisor finds on this node (an unknown or broken one is a problem)."""
        problems: dict[str, list[str]] = {}
        for name in req.hypervisors:
            try:
                problems[name] = list(self._get_hv(name).verify())
            except CorralError as exc:
                problems[name] = [str(exc)]
        return HvVerifyResponse(problems=problems)

    def hv_validate_params(self, req: HvValidateRequest) -> Empty:
        """Environment-phase check of filled hvparams on this node.

        Raises:
            ParamError: a parameter cannot work here; HypervisorError: unknown hypervisor.
        """
        self._get_hv(req.hypervisor).validate_params(req.hvparams)
        return Empty()

    # --- instances -------------------------------------------------------------------------

    def instance_list(self, req: InstanceListRequest) -> InstanceListResponse:
        """Running instances per hypervisor.

        Raises:
            HypervisorError: a hypervisor is unknown or cannot be queried.
        """
        return InstanceListResponse(instances=self.instances.list_names(req.hypervisors))

    def instance_info(self, req: InstanceInfoRequest) -> InstanceInfoResponse:
        """Live info of one instance (None: not running here).

        Raises:
            HypervisorError: the hypervisor is unknown or cannot be queried.
        """
        return InstanceInfoResponse(info=self.instances.info(req.name, req.hypervisor))

    def all_instances_info(self, req: InstanceListRequest) -> AllInstancesInfoResponse:
        """Live info of every instance of these hypervisors.

        Raises:
            HypervisorError: a hypervisor is unknown or cannot be queried.
        """
        return AllInstancesInfoResponse(instances=self.instances.all_info(req.hypervisors))

    def instance_start(self, req: InstanceStartRequest) -> Empty:
        """Start an instance with its disks (already running: success).

        Raises:
            StorageError: a disk's volume is missing (names the disk index).
            ParamError / HypervisorError: the driver refused or failed (nothing left behind).
        """
        if req.reason:
            log.info("starting %s: %s", req.instance.name, req.reason)
        self.instances.start(req.instance, req.disks, paused=req.paused)
        return Empty()

    def instance_shutdown(self, req: InstanceShutdownRequest) -> Empty:
        """Stop an instance: soft for ``timeout`` seconds, then hard (not running: success).

        Raises:
            HypervisorError: it could not be stopped even by force.
        """
        if req.reason:
            log.info("stopping %s: %s", req.name, req.reason)
        self.instances.shutdown(req.name, req.hypervisor, timeout=req.timeout, force=req.force)
        # NOTE: a stopped instance has no saved state to come back to: a suspended instance
        # that is shut down (or removed) loses it, as documented for suspend.
        self.power.discard(req.name, req.hypervisor)
        return Empty()

    def instance_reboot(self, req: InstanceRebootRequest) -> Empty:
        """Reboot soft (ACPI), hard (reset) or full (stop + start).

        Raises:
            HypervisorError: not running (soft/hard) or the driver failed; StorageError: (full)
                a disk is missing.
        """
        self.instances.reboot(
            req.instance,
            req.disks,
            reboot_type=req.reboot_type,
            shutdown_timeout=req.shutdown_timeout,
        )
        return Empty()

    def instance_balloon(self, req: InstanceBalloonRequest) -> InstanceBalloonResponse:
        """Change a running instance's memory.

        Raises:
            HypervisorError: not supported (INVALID), not running, or target not reached.
        """
        memory = self.instances.balloon(req.name, req.hypervisor, req.memory)
        return InstanceBalloonResponse(memory=memory)

    def instance_console(self, req: InstanceConsoleRequest) -> InstanceConsoleResponse:
        """How to reach the instance's console.

        Raises:
            HypervisorError: the instance has no such console.
        """
        return InstanceConsoleResponse(console=self.instances.console(req.instance, req.node_host))

    def instance_hotplug(self, req: InstanceHotplugRequest) -> InstanceHotplugResponse:
        """Hot-add/remove/modify a device of a running instance (``check``: can it?).

        Raises:
            HypervisorError: not supported (INVALID), not running (WRONG_STATE), no such
                device (NOT_FOUND), or the driver failed (a failed add leaves nothing behind).
            StorageError: the disk to add is missing. ParamError: an incomplete request.
        """
        return self.instances.hotplug(req)

    def instance_pin_cpus(self, req: InstancePinCpusRequest) -> Empty:
        """Pin a running instance's vCPUs (``cpu_mask`` syntax; ``all`` unpins).

        Raises:
            HypervisorError: not supported, not running, or a mask the node cannot honour.
        """
        self.instances.pin_cpus(req.name, req.hypervisor, req.cpu_mask)
        return Empty()

    # --- pause, suspend (Corral extensions) -------------------------------------------------

    def instance_pause(self, req: InstancePowerRequest) -> Empty:
        """Stop a running instance's vCPUs (a paused one stays paused).

        Raises:
            HypervisorError: not supported (INVALID), not running (WRONG_STATE), or failed.
        """
        if req.reason:
            log.info("pausing %s: %s", req.name, req.reason)
        self.power.pause(req.name, req.hypervisor)
        return Empty()

    def instance_resume(self, req: InstancePowerRequest) -> Empty:
        """Let a paused instance run again (a running one is left alone).

        Raises:
            HypervisorError: not supported (INVALID), not paused (WRONG_STATE), or failed.
        """
        if req.reason:
            log.info("resuming %s: %s", req.name, req.reason)
        self.power.resume(req.name, req.hypervisor)
        return Empty()

    def instance_suspend(self, req: InstanceSuspendRequest) -> InstanceSuspendResponse:
        """Save a running instance to a state file on this node and stop it.

        Raises:
            HypervisorError: not supported (INVALID), not running (WRONG_STATE), a saved state
                exists (EXISTS), or the save failed (the instance runs on, no file is left).
        """
        if req.reason:
            log.info("suspending %s: %s", req.name, req.reason)
        return InstanceSuspendResponse(state_file=self.power.suspend(req.name, req.hypervisor))

    def instance_unsuspend(self, req: InstanceUnsuspendRequest) -> Empty:
        """Start an instance from the state file ``instance_suspend`` wrote (then removed).

        Raises:
            ParamError: not this node's state file of the instance. StorageError: a disk is
                missing. HypervisorError: already running, no saved state (NOT_FOUND), or the
                restore failed (the state file is kept).
        """
        if req.reason:
            log.info("unsuspending %s: %s", req.instance.name, req.reason)
        self.power.unsuspend(req.instance, req.disks, req.state_file)
        return Empty()

    # --- migration ---------------------------------------------------------------------------

    def migration_info(self, req: MigrationInfoRequest) -> MigrationInfoResponse:
        """The runtime of a running instance, for the destination (opaque to the master).

        Raises:
            HypervisorError: not supported (INVALID) or not running (WRONG_STATE).
        """
        return MigrationInfoResponse(info=self.migrations.info(req.name, req.hypervisor))

    def accept_instance(self, req: AcceptInstanceRequest) -> Empty:
        """Start a migration's destination paused, listening on ``listen_host:port``.

        Raises:
            StorageError: a disk is missing here. HypervisorError: not supported, already
                running here, unusable info, or QEMU refused (nothing is left behind).
        """
        self.migrations.accept(
            req.instance, req.disks, req.info, listen_host=req.listen_host, port=req.port
        )
        return Empty()

    def migrate_instance(self, req: MigrateInstanceRequest) -> Empty:
        """Start sending a running instance to an accepting destination (returns at once).

        Raises:
            HypervisorError: not supported, not running, already migrating, or refused.
        """
        self.migrations.migrate(
            req.name,
            req.hypervisor,
            target_host=req.target_host,
            port=req.port,
            live=req.live,
            bandwidth_mib=req.bandwidth_mib,
            downtime_ms=req.downtime_ms,
        )
        return Empty()

    def migration_status(self, req: MigrationStatusRequest) -> MigrationStatusResponse:
        """Progress of an outgoing migration (``wait``: answer once it is final).

        Raises:
            HypervisorError: not supported, or the instance does not run here.
        """
        status = self.migrations.status(req.name, req.hypervisor, wait=req.wait)
        return MigrationStatusResponse(status=status)

    def finalize_migration_src(self, req: FinalizeMigrationSrcRequest) -> Empty:
        """Source after a migration: quit it (success) or resume it (failure).

        Raises:
            HypervisorError: (success) the migration did not complete, the source is kept;
                (failure) the source is gone or could not be resumed.
        """
        self.migrations.finalize_source(req.name, req.hypervisor, success=req.success)
        return Empty()

    def finalize_migration_dst(self, req: FinalizeMigrationDstRequest) -> Empty:
        """Destination after a migration: run the guest (success) or kill it (failure).

        Raises:
            HypervisorError: (success) the state did not arrive or the guest cannot run.
        """
        self.migrations.finalize_target(req.instance, success=req.success)
        return Empty()

    def abort_migration(self, req: AbortMigrationRequest) -> Empty:
        """Cancel an outgoing migration; the source runs on.

        Raises:
            HypervisorError: not running, or the migration already completed (WRONG_STATE).
        """
        self.migrations.abort(req.name, req.hypervisor)
        return Empty()

    # --- block devices ---------------------------------------------------------------------

    def blockdev_create(self, req: BlockdevRequest) -> BlockdevInfoResponse:
        """Create a volume.

        Raises:
            StorageError: exists (EXISTS), no room (NO_RESOURCES), bad path/type (INVALID), or
                the tool failed; nothing is left behind.
        """
        return BlockdevInfoResponse(info=self.blockdevs.create(req.volume))

    def blockdev_remove(self, req: BlockdevRequest) -> Empty:
        """Remove a volume (a missing one is fine).

        Raises:
            StorageError: it exists but cannot be removed, or bad path/type.
        """
        self.blockdevs.remove(req.volume)
        return Empty()

    def blockdev_grow(self, req: BlockdevGrowRequest) -> BlockdevInfoResponse:
        """Grow a volume by ``amount`` MiB.

        Raises:
            StorageError: missing (NOT_FOUND), no room (NO_RESOURCES), or the tool failed.
        """
        if req.instance and req.hypervisor and req.disk_index is not None:
            info = self.instances.grow_disk(
                req.volume,
                req.amount,
                name=req.instance,
                hypervisor=req.hypervisor,
                index=req.disk_index,
            )
            return BlockdevInfoResponse(info=info)
        return BlockdevInfoResponse(info=self.blockdevs.grow(req.volume, req.amount))

    def blockdev_find(self, req: BlockdevRequest) -> BlockdevInfoResponse:
        """A volume's facts (None: it does not exist).

        Raises:
            StorageError: it exists but cannot be inspected, or bad path/type.
        """
        return BlockdevInfoResponse(info=self.blockdevs.find(req.volume))

    def blockdev_rename(self, req: BlockdevRenameRequest) -> BlockdevInfoResponse:
        """Rename a volume (file disks follow their instance's name).

        Raises:
            StorageError: missing (NOT_FOUND), target taken (EXISTS), unsupported (INVALID).
        """
        return BlockdevInfoResponse(info=self.blockdevs.rename(req.volume, req.new_logical_id))

    def blockdev_getsizes(self, req: BlockdevSizesRequest) -> BlockdevSizesResponse:
        """Sizes in MiB of the volumes (None where missing).

        Raises:
            StorageError: a volume exists but cannot be inspected.
        """
        return BlockdevSizesResponse(sizes=self.blockdevs.sizes(req.volumes))

    # --- OS definitions --------------------------------------------------------------------

    def os_create(self, req: OsCreateRequest) -> OsScriptResponse:
        """Run the OS's create script (install or reinstall) on the instance's disks.

        Raises:
            OsError: unknown/invalid OS, bad variant or parameters, or the script failed (the
                message quotes its last output lines); StorageError: a disk is missing.
        """
        return self.oses.create(req)

    def os_rename(self, req: OsRenameRequest) -> OsScriptResponse:
        """Run the OS's rename script.

        Raises:
            OsError: as :meth:`os_create`; StorageError: a disk is missing.
        """
        return self.oses.rename(req)

    def os_verify(self, req: OsVerifyRequest) -> Empty:
        """Check the OS (and variant) exists here and accepts the parameters.

        Raises:
            OsError: unknown (NOT_FOUND) or invalid OS, unsupported variant or parameter, or
                the verify script rejected the parameters (INVALID).
        """
        self.oses.verify(req.os, req.osparams)
        return Empty()

    def os_diagnose(self, req: Empty) -> OsDiagnoseResponse:
        """Every OS definition on the node, valid or not."""
        return OsDiagnoseResponse(oses=self.oses.diagnose())

    # --- hooks -----------------------------------------------------------------------------

    def hooks_run(self, req: HooksRunRequest) -> HooksRunResponse:
        """Run the hook scripts of ``<hpath>-<phase>.d`` and report each one.

        Raises:
            ParamError: bad hpath, phase or environment (nothing ran).
        """
        return HooksRunResponse(results=self.hooks.run(req.hpath, req.phase, req.env))

    # --- issue 4: cluster membership (node join, file distribution, certificates) --------

    def node_write_files(self, req: WriteFilesRequest) -> WriteFilesResponse:
        """Install/remove whitelisted cluster files (see ``backend/membership.py``).

        Raises:
            ParamError: an unknown file name (nothing written); CorralError: I/O failure.
        """
        return membership.write_files(self.paths, req)

    def node_leave(self, req: NodeLeaveRequest) -> Empty:
        """Drop this node's cluster identity; the daemon then goes back to join mode.

        Raises:
            CorralError: the files cannot be removed (kind ENVIRONMENT).
        """
        membership.leave(self.paths)
        return Empty()

    def node_powercycle(self, req: NodePowercycleRequest) -> NodePowercycleResponse:
        """Answer, then hard-reset this node after ``req.delay`` seconds (Ganeti's way).

        The reset writes to ``paths.sysrq_trigger`` through the hypervisor driver (see
        :func:`corral.node.backend.power.schedule_powercycle`); a node with a test root only
        writes a file there. Failures of the reset itself can only be logged.

        Raises:
            HypervisorError: an unknown hypervisor (nothing is scheduled then).
        """
        hv = self._get_hv(req.hypervisor) if req.hypervisor else None
        schedule_powercycle(self.paths.sysrq_trigger, hv, delay=req.delay)
        return NodePowercycleResponse(
            message=f"node {self.node_name} will powercycle in {req.delay:g}s"
        )

    # --- issue 4: instance mobility (disk transfer between nodes, shared storage) ---------

    @functools.cached_property
    def transfers(self) -> Transfers:
        """The volume transfer family (``node/backend/transfer.py``), made on first use."""
        return Transfers(self.paths, self.node_name, self.blockdevs)

    def transfer_import_start(self, req: TransferImportStartRequest) -> TransferImportStartResponse:
        """Open a one-shot import into an existing file volume (see ``transfer.py``)."""
        import_id, port, token = self.transfers.import_start(
            req.volume, listen_host=req.listen_host, connect_timeout=req.connect_timeout
        )
        return TransferImportStartResponse(import_id=import_id, port=port, token=token)

    def transfer_export(self, req: TransferExportRequest) -> TransferResult:
        """Stream a file volume to a destination's import; checksums compared."""
        stats = self.transfers.export(
            req.volume,
            dest_node=req.dest_node,
            dest_host=req.dest_host,
            port=req.port,
            token=req.token,
        )
        return TransferResult(bytes=stats.bytes, sha256=stats.sha256)

    def transfer_import_wait(self, req: TransferImportWaitRequest) -> TransferResult:
        """What an import received (waits up to ``req.timeout`` seconds)."""
        stats = self.transfers.import_wait(req.import_id, timeout=req.timeout)
        return TransferResult(bytes=stats.bytes, sha256=stats.sha256)

    def transfer_import_abort(self, req: TransferImportAbortRequest) -> Empty:
        """Close an import's listener."""
        self.transfers.import_abort(req.import_id)
        return Empty()

    # --- issue 4: cluster verify and the watcher ------------------------------------------

    def file_checksums(self, req: FileChecksumsRequest) -> FileChecksumsResponse:
        """sha256 of the cluster files of a role (see ``backend/verify.py``; never raises)."""
        return node_verify.file_checksums(self.paths, req)

    def volume_list(self, req: VolumeListRequest) -> VolumeListResponse:
        """Image files below storage dirs (see ``backend/verify.py``; never raises)."""
        return node_verify.volume_list(self.paths, req)

"""The master -> node RPC calls: one typed request, one typed response and a timeout each.

Every call is a :class:`Call` in :data:`CALLS`. The wire format is JSON over HTTPS with mutual
TLS (``rpc/server.py``, ``rpc/client.py``): ``POST /rpc/<name>`` with the request model as the
body; the answer is ``{"ok": true, "result": <response>}`` or
``{"ok": false, "error": <CorralError.to_wire()>}``.

Timeouts are the longest a healthy node may need; the master gives up after them with an
:class:`~corral.common.errors.RpcError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from corral.hypervisor.base import (
    ConsoleInfo,
    HvNodeInfo,
    InstanceInfo,
    InstanceSpec,
    MigrationStatus,
    NicSpec,
)
from corral.storage.base import VolumeInfo, VolumeSpec


class Msg(BaseModel):
    """Base of all RPC payloads: strict, no unknown fields."""

    model_config = ConfigDict(extra="forbid")


class Empty(Msg):
    """No payload."""


# --- node ------------------------------------------------------------------------------------


class VersionResponse(Msg):
    """Software and protocol version of a node daemon."""

    software_version: str
    protocol_version: int
    node_name: str


class NodeInfoRequest(Msg):
    """Which hypervisors and storage locations to report on."""

    hypervisors: list[str] = Field(default_factory=list)
    storage_dirs: list[str] = Field(default_factory=list)


class StorageSpace(Msg):
    """Space of one storage location."""

    location: str
    total: int  # MiB
    free: int  # MiB


class NodeInfoResponse(Msg):
    """Host facts: memory, CPUs, boot id, storage and hypervisor views."""

    name: str
    boot_id: str
    memory_total: int
    memory_free: int
    cpu_total: int
    storage: list[StorageSpace] = Field(default_factory=list)
    hypervisors: dict[str, HvNodeInfo] = Field(default_factory=dict)


class HvVerifyRequest(Msg):
    """Hypervisors to verify on the node."""

    hypervisors: list[str]


class HvVerifyResponse(Msg):
    """Problems found per hypervisor (empty lists = fine)."""

    problems: dict[str, list[str]]


class HvValidateRequest(Msg):
    """Environment-phase check of filled hvparams."""

    hypervisor: str
    hvparams: dict[str, Any]


# --- instances -------------------------------------------------------------------------------


#: How hypervisors may open file-based disks (Ganeti's ``file_driver``); the first is the default.
FILE_DRIVERS = ("loop", "blktap", "blktap2")


class DiskRef(Msg):
    """An instance disk as the node needs it to attach it."""

    index: int
    volume: VolumeSpec
    mode: Literal["rw", "ro"] = "rw"
    name: str = ""  # the disk's user-given name (OS scripts get it as DISK_<n>_NAME)
    #: the disk's file driver (loop, blktap, blktap2) for file-based volumes; None: loop
    file_driver: str | None = None


class InstanceListRequest(Msg):
    """Hypervisors whose instances to list."""

    hypervisors: list[str]


class InstanceListResponse(Msg):
    """Names of running instances, per hypervisor."""

    instances: dict[str, list[str]]


class InstanceInfoRequest(Msg):
    """One instance to look up."""

    name: str
    hypervisor: str


class InstanceInfoResponse(Msg):
    """Live info of one instance (None: not running here)."""

    info: InstanceInfo | None


class AllInstancesInfoResponse(Msg):
    """Live info of every instance, per hypervisor."""

    instances: list[InstanceInfo]


class InstanceStartRequest(Msg):
    """Start an instance with its disks."""

    instance: InstanceSpec
    disks: list[DiskRef]
    paused: bool = False
    reason: str = ""


class InstanceShutdownRequest(Msg):
    """Stop an instance: soft for ``timeout`` seconds, then hard."""

    name: str
    hypervisor: str
    timeout: float = 120.0
    force: bool = False
    reason: str = ""


class InstanceRebootRequest(Msg):
    """Reboot: soft (guest ACPI), hard (reset) or full (stop, then start)."""

    instance: InstanceSpec
    disks: list[DiskRef]
    reboot_type: Literal["soft", "hard", "full"]
    shutdown_timeout: float = 120.0
    reason: str = ""


class InstanceBalloonRequest(Msg):
    """Change a running instance's memory."""

    name: str
    hypervisor: str
    memory: int


class InstanceBalloonResponse(Msg):
    """Memory after ballooning (MiB)."""

    memory: int


class InstanceConsoleRequest(Msg):
    """Console connection info of an instance."""

    instance: InstanceSpec
    node_host: str


class InstanceConsoleResponse(Msg):
    """The console dict."""

    console: ConsoleInfo


class InstanceHotplugRequest(Msg):
    """Hot-add, hot-remove or modify one device of a running instance, or ask if it can.

    ``action``: ``check`` (can this device kind be hot-plugged now? see the response),
    ``add`` (``disk`` or ``nic`` given), ``remove`` (``index`` and/or ``uuid``), ``modify``
    (NICs only: ``nic`` with the new mode/link moves it; ``link_up`` sets its carrier).
    """

    name: str
    hypervisor: str
    action: Literal["check", "add", "remove", "modify"]
    device: Literal["disk", "nic"]
    disk: DiskRef | None = None
    nic: NicSpec | None = None
    index: int | None = None
    uuid: str = ""
    link_up: bool | None = None


class InstanceHotplugResponse(Msg):
    """For ``check``: whether hotplug is possible now, and why not."""

    supported: bool = True
    reason: str = ""


class InstancePinCpusRequest(Msg):
    """Pin a running instance's vCPUs (Ganeti ``cpu_mask`` syntax; ``all`` unpins)."""

    name: str
    hypervisor: str
    cpu_mask: str


# --- block devices ---------------------------------------------------------------------------


class BlockdevRequest(Msg):
    """Act on one volume."""

    volume: VolumeSpec


class BlockdevGrowRequest(Msg):
    """Grow one volume by ``amount`` MiB.

    When ``instance`` is given and runs on the node with a hypervisor that can resize disks
    online, the hypervisor grows the image (the guest sees the new size); otherwise the
    storage driver does.
    """

    volume: VolumeSpec
    amount: int
    instance: str | None = None
    hypervisor: str | None = None
    disk_index: int | None = None


class BlockdevRenameRequest(Msg):
    """Rename one volume (file disks move with their instance)."""

    volume: VolumeSpec
    new_logical_id: str


class BlockdevInfoResponse(Msg):
    """A volume's facts (None: not found)."""

    info: VolumeInfo | None


class BlockdevSizesRequest(Msg):
    """Volumes to measure."""

    volumes: list[VolumeSpec]


class BlockdevSizesResponse(Msg):
    """Sizes in MiB (None where the volume is missing)."""

    sizes: list[int | None]


# --- OS definitions --------------------------------------------------------------------------


class OsCreateRequest(Msg):
    """Run an OS definition's ``create`` script (install or reinstall)."""

    instance: InstanceSpec
    disks: list[DiskRef]
    os: str  # name[+variant]
    osparams: dict[str, str] = Field(default_factory=dict)
    reinstall: bool = False
    debug: int = 0


class OsRenameRequest(Msg):
    """Run an OS definition's ``rename`` script."""

    instance: InstanceSpec
    disks: list[DiskRef]
    os: str
    old_name: str
    osparams: dict[str, str] = Field(default_factory=dict)
    debug: int = 0


class OsScriptResponse(Msg):
    """Where the script's log was kept on the node, and its last lines."""

    log_file: str
    output_tail: str = ""


class OsVerifyRequest(Msg):
    """Check an OS exists (with its variant) and accepts these parameters."""

    os: str
    osparams: dict[str, str] = Field(default_factory=dict)


class OsInfo(Msg):
    """One OS definition found on the node."""

    name: str
    path: str
    valid: bool
    error: str = ""
    api_versions: list[int] = Field(default_factory=list)
    variants: list[str] = Field(default_factory=list)
    parameters: list[tuple[str, str]] = Field(default_factory=list)
    builtin: bool = False


class OsDiagnoseResponse(Msg):
    """Every OS definition found on the node."""

    oses: list[OsInfo]


# --- pause, suspend, migration (KVM lifecycle; Corral extensions) ----------------------------


class InstancePowerRequest(Msg):
    """Pause or resume a running instance (vCPUs stopped / running again)."""

    name: str
    hypervisor: str
    reason: str = ""


class InstanceSuspendRequest(Msg):
    """Save a running instance to a state file chosen by the node, and stop it."""

    name: str
    hypervisor: str
    reason: str = ""


class InstanceSuspendResponse(Msg):
    """Where the node keeps the saved state."""

    state_file: str


class InstanceUnsuspendRequest(Msg):
    """Start an instance again from the state file :data:`INSTANCE_SUSPEND` wrote."""

    instance: InstanceSpec
    disks: list[DiskRef]
    state_file: str
    reason: str = ""


class MigrationInfoRequest(Msg):
    """The source's runtime of a running instance, for the destination to replay."""

    name: str
    hypervisor: str


class MigrationInfoResponse(Msg):
    """Driver-specific, opaque to the master: handed as is to :data:`ACCEPT_INSTANCE`."""

    info: dict[str, Any]


class AcceptInstanceRequest(Msg):
    """Start the destination of a migration paused, listening on ``listen_host:port``."""

    instance: InstanceSpec
    disks: list[DiskRef]
    info: dict[str, Any]
    listen_host: str
    port: int


class MigrateInstanceRequest(Msg):
    """Start sending a running instance to an accepting destination (returns at once).

    ``bandwidth_mib``/``downtime_ms`` default to the instance's migration hvparams.
    """

    name: str
    hypervisor: str
    target_host: str
    port: int
    live: bool = True
    bandwidth_mib: int | None = None
    downtime_ms: int | None = None


class MigrationStatusRequest(Msg):
    """Progress of an outgoing migration.

    ``wait`` > 0 makes the node answer as soon as the migration reached a final state
    (completed, failed, cancelled) or after ``wait`` seconds (at most 30), whichever is first:
    a long poll that spares the caller a tight polling loop.
    """

    name: str
    hypervisor: str
    wait: float = Field(default=0.0, ge=0.0, le=30.0)


class MigrationStatusResponse(Msg):
    """The migration's state and progress."""

    status: MigrationStatus


class FinalizeMigrationSrcRequest(Msg):
    """Source side after a migration: quit (success) or resume (failure)."""

    name: str
    hypervisor: str
    success: bool


class FinalizeMigrationDstRequest(Msg):
    """Destination side after a migration: run the guest (success) or kill it (failure)."""

    instance: InstanceSpec
    success: bool


class AbortMigrationRequest(Msg):
    """Cancel an outgoing migration; the source runs on."""

    name: str
    hypervisor: str


# --- hooks -----------------------------------------------------------------------------------


class HooksRunRequest(Msg):
    """Run the hook scripts of ``<hpath>-<phase>.d`` with this environment."""

    hpath: str
    phase: Literal["pre", "post"]
    env: dict[str, str]


class HookResult(Msg):
    """Outcome of one hook script."""

    script: str
    status: Literal["success", "fail", "skip"]
    output: str = ""


class HooksRunResponse(Msg):
    """Outcome of every hook script, in the order they ran."""

    results: list[HookResult]


# --- the registry ----------------------------------------------------------------------------

Req = TypeVar("Req", bound=Msg)
Resp = TypeVar("Resp", bound=Msg)


@dataclasses.dataclass(frozen=True, slots=True)
class Call(Generic[Req, Resp]):
    """One RPC: its name on the wire, its types, and how long the master waits."""

    name: str
    request: type[Req]
    response: type[Resp]
    timeout: float


VERSION = Call("version", Empty, VersionResponse, 10)
NODE_INFO = Call("node_info", NodeInfoRequest, NodeInfoResponse, 30)
HV_VERIFY = Call("hv_verify", HvVerifyRequest, HvVerifyResponse, 60)
HV_VALIDATE = Call("hv_validate_params", HvValidateRequest, Empty, 30)
INSTANCE_LIST = Call("instance_list", InstanceListRequest, InstanceListResponse, 30)
INSTANCE_INFO = Call("instance_info", InstanceInfoRequest, InstanceInfoResponse, 30)
ALL_INSTANCES_INFO = Call("all_instances_info", InstanceListRequest, AllInstancesInfoResponse, 60)
INSTANCE_START = Call("instance_start", InstanceStartRequest, Empty, 300)
#: The shutdown RPC waits the instance's own timeout plus this margin.
INSTANCE_SHUTDOWN = Call("instance_shutdown", InstanceShutdownRequest, Empty, 60)
INSTANCE_REBOOT = Call("instance_reboot", InstanceRebootRequest, Empty, 300)
INSTANCE_BALLOON = Call("instance_balloon", InstanceBalloonRequest, InstanceBalloonResponse, 120)
INSTANCE_CONSOLE = Call("instance_console", InstanceConsoleRequest, InstanceConsoleResponse, 30)
#: Removal waits for the guest to release the device (the KVM driver allows 30 s).
INSTANCE_HOTPLUG = Call("instance_hotplug", InstanceHotplugRequest, InstanceHotplugResponse, 120)
INSTANCE_PIN_CPUS = Call("instance_pin_cpus", InstancePinCpusRequest, Empty, 30)
BLOCKDEV_CREATE = Call("blockdev_create", BlockdevRequest, BlockdevInfoResponse, 600)
BLOCKDEV_REMOVE = Call("blockdev_remove", BlockdevRequest, Empty, 300)
BLOCKDEV_GROW = Call("blockdev_grow", BlockdevGrowRequest, BlockdevInfoResponse, 600)
BLOCKDEV_FIND = Call("blockdev_find", BlockdevRequest, BlockdevInfoResponse, 60)
BLOCKDEV_RENAME = Call("blockdev_rename", BlockdevRenameRequest, BlockdevInfoResponse, 60)
BLOCKDEV_SIZES = Call("blockdev_getsizes", BlockdevSizesRequest, BlockdevSizesResponse, 60)
OS_CREATE = Call("os_create", OsCreateRequest, OsScriptResponse, 3600)
OS_RENAME = Call("os_rename", OsRenameRequest, OsScriptResponse, 600)
OS_VERIFY = Call("os_verify", OsVerifyRequest, Empty, 120)
OS_DIAGNOSE = Call("os_diagnose", Empty, OsDiagnoseResponse, 120)
HOOKS_RUN = Call("hooks_run", HooksRunRequest, HooksRunResponse, 600)
INSTANCE_PAUSE = Call("instance_pause", InstancePowerRequest, Empty, 60)
INSTANCE_RESUME = Call("instance_resume", InstancePowerRequest, Empty, 60)
#: Saving takes about a second per GiB of guest memory here; 1 TiB guests need longer.
INSTANCE_SUSPEND = Call("instance_suspend", InstanceSuspendRequest, InstanceSuspendResponse, 1800)
INSTANCE_UNSUSPEND = Call("instance_unsuspend", InstanceUnsuspendRequest, Empty, 1800)
MIGRATION_INFO = Call("migration_info", MigrationInfoRequest, MigrationInfoResponse, 30)
ACCEPT_INSTANCE = Call("accept_instance", AcceptInstanceRequest, Empty, 300)
MIGRATE_INSTANCE = Call("migrate_instance", MigrateInstanceRequest, Empty, 60)
#: The status call may wait up to 30 s for a final state (``MigrationStatusRequest.wait``).
MIGRATION_STATUS = Call("migration_status", MigrationStatusRequest, MigrationStatusResponse, 60)
FINALIZE_MIGRATION_SRC = Call("finalize_migration_src", FinalizeMigrationSrcRequest, Empty, 120)
FINALIZE_MIGRATION_DST = Call("finalize_migration_dst", FinalizeMigrationDstRequest, Empty, 120)
ABORT_MIGRATION = Call("abort_migration", AbortMigrationRequest, Empty, 60)

#: Every call by its wire name.
CALLS: dict[str, Call[Any, Any]] = {
    c.name: c
    for c in (
        VERSION,
        NODE_INFO,
        HV_VERIFY,
        HV_VALIDATE,
        INSTANCE_LIST,
        INSTANCE_INFO,
        ALL_INSTANCES_INFO,
        INSTANCE_START,
        INSTANCE_SHUTDOWN,
        INSTANCE_REBOOT,
        INSTANCE_BALLOON,
        INSTANCE_CONSOLE,
        INSTANCE_HOTPLUG,
        INSTANCE_PIN_CPUS,
        BLOCKDEV_CREATE,
        BLOCKDEV_REMOVE,
        BLOCKDEV_GROW,
        BLOCKDEV_FIND,
        BLOCKDEV_RENAME,
        BLOCKDEV_SIZES,
        OS_CREATE,
        OS_RENAME,
        OS_VERIFY,
        OS_DIAGNOSE,
        HOOKS_RUN,
        INSTANCE_PAUSE,
        INSTANCE_RESUME,
        INSTANCE_SUSPEND,
        INSTANCE_UNSUSPEND,
        MIGRATION_INFO,
        ACCEPT_INSTANCE,
        MIGRATE_INSTANCE,
        MIGRATION_STATUS,
        FINALIZE_MIGRATION_SRC,
        FINALIZE_MIGRATION_DST,
        ABORT_MIGRATION,
    )
}


def register_calls(*calls: Call[Any, Any]) -> None:
    """Add the calls of another module (``calls_<area>.py``) to :data:`CALLS`.

    Raises:
        ValueError: a call of that wire name exists already.
    """
    for call in calls:
        if call.name in CALLS and CALLS[call.name] is not call:
            raise ValueError(f"two RPC calls named {call.name}")
        CALLS[call.name] = call


# NOTE: imported last: these modules build on the models above and register their calls.
from corral.rpc import calls_cluster, calls_mobility, calls_nodes  # noqa: E402, F401

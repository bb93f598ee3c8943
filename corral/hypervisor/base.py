"""The hypervisor driver interface.

A driver is a class with no global state: everything it needs comes in as arguments (the
instance spec, its attached disks) or lives under its own run directory, given at construction.
The node daemon calls drivers from worker threads; methods are synchronous.

Contracts every driver keeps (Nova ``virt/driver.py`` style):

* ``start`` either leaves a running (or paused) instance, or nothing at all: no process, no
  socket, no runtime file, no tap device — and raises :class:`HypervisorError` (or
  :class:`LaunchError`) with the hypervisor's own message.
* ``stop`` is bounded by its timeout: a soft stop that does not finish in time becomes a hard
  one. Stopping an instance that is not running is not an error.
* ``list_instances``/``instance_info`` read the live state (processes, QMP), never a cache;
  they work after the node daemon restarted while guests kept running.
* Parameters are validated in two phases: syntax on the master (``objects/params/hv.py``),
  environment here in :meth:`Hypervisor.validate_params`.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from corral.common.errors import ErrorKind, HypervisorError
from corral.objects.params.spec import Schema


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a driver can do; callers check these instead of catching NotImplementedError."""

    live_migration: bool = False
    hotplug_disk: bool = False
    hotplug_nic: bool = False
    balloon: bool = False
    pause: bool = False
    serial_console: bool = False
    runs_processes: bool = True
    #: a running instance's disk can grow (the guest sees the new size at once)
    online_disk_resize: bool = False


class SpecModel(BaseModel):
    """Base for the data the master sends to drivers (strict, JSON-able)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NicSpec(SpecModel):
    """A NIC as a driver sees it: MAC and filled nicparams."""

    index: int
    uuid: str
    mac: str
    mode: str = "bridged"
    link: str = ""
    ip: str | None = None
    name: str = ""


class InstanceSpec(SpecModel):
    """Everything a driver needs to know about an instance, with parameters already filled."""

    name: str
    uuid: str
    hypervisor: str
    hvparams: dict[str, Any]
    memory: int = Field(description="MiB to start with (maxmem)")
    min_memory: int = Field(description="MiB the instance may be ballooned down to")
    vcpus: int
    nics: list[NicSpec] = Field(default_factory=list)
    os: str = ""
    tags: list[str] = Field(default_factory=list)
    network_port: int | None = None


class AttachedDisk(SpecModel):
    """A disk made available on the node, ready to be given to the guest."""

    index: int
    uuid: str
    path: str
    format: str = "raw"  # raw | qcow2
    mode: str = "rw"  # rw | ro
    size: int = 0  # MiB
    #: how a file-backed disk is given to Xen (Ganeti's file driver: "loop", "blktap",
    #: "blktap2"); None = a block device (Xen's phy:). Other hypervisors ignore it.
    file_driver: str | None = None


class InstanceState(enum.StrEnum):
    """Runtime state of an instance as a driver reports it."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # the guest powered itself off; process may still exist
    CRASHED = "crashed"


class InstanceInfo(SpecModel):
    """Live facts about one instance on this node."""

    name: str
    state: InstanceState
    memory: int  # MiB currently assigned
    vcpus: int
    cpu_time: float = 0.0  # seconds of CPU used
    pid: int | None = None
    uuid: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class HvNodeInfo(SpecModel):
    """What the hypervisor says about the node."""

    hypervisor: str
    memory_total: int  # MiB
    memory_free: int  # MiB
    memory_hv: int = 0  # MiB used by the hypervisor / instances
    cpu_total: int
    cpu_sockets: int = 1
    cpu_nodes: int = 1
    hv_version: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class ConsoleInfo(SpecModel):
    """How to reach an instance's console (RAPI console dict)."""

    instance: str
    kind: str  # ssh | vnc | spice | msg
    host: str = ""
    port: int | None = None
    command: list[str] = Field(default_factory=list)
    message: str = ""
    socket: str = ""
    #: VNC display (port - 5900), as in Ganeti's console dict; None for other kinds
    display: int | None = None
    #: graphical consoles of the instance, also when ``kind`` is the serial one:
    #: ``{"vnc": {host, port, display, password, tls}, "spice": {host, port, password, tls}}``
    details: dict[str, Any] = Field(default_factory=dict)


class MigrationStatus(SpecModel):
    """Progress of an outgoing migration (or of a save to a file)."""

    status: str  # none | setup | active | completed | failed | cancelled
    transferred: int = 0  # bytes
    remaining: int = 0  # bytes
    total: int = 0  # bytes
    downtime_ms: int | None = None
    total_time_ms: int | None = None
    error: str = ""


def linux_powercycle(sysrq_trigger: str) -> None:
    """Reset the machine at once by writing ``b`` to the kernel's SysRq trigger.

    ``sysrq_trigger`` must come from the node's ``Paths`` (``paths.sysrq_trigger``): under a
    test root it is a plain file. The write works whatever ``kernel.sysrq`` allows (the
    trigger file is not filtered). Nothing else is tried: there is no ``reboot -f`` fallback,
    which would ignore the root.

    Raises:
        HypervisorError: the trigger cannot be written (kind ENVIRONMENT).
    """
    try:
        with open(sysrq_trigger, "w", encoding="ascii") as fh:
            fh.write("b")
    except OSError as exc:
        raise HypervisorError(
            f"cannot powercycle the node: writing {sysrq_trigger} failed: {exc.strerror}",
            kind=ErrorKind.ENVIRONMENT,
            path=sysrq_trigger,
        ) from exc


class Hypervisor(abc.ABC):
    """One hypervisor driver; see the module docstring for the contracts."""

    NAME: ClassVar[str]
    PARAMS: ClassVar[Schema]
    CAPABILITIES: ClassVar[Capabilities]

    def __init__(self, run_dir: str) -> None:
        """Create a driver keeping its state under ``run_dir``."""
        self.run_dir = run_dir

    @abc.abstractmethod
    def validate_params(self, hvparams: Mapping[str, Any]) -> None:
        """Environment-phase check of filled hvparams on this node.

        Raises:
            ParamError: a parameter cannot work here (e.g. kernel_path missing), by key.
        """

    @abc.abstractmethod
    def start(
        self, spec: InstanceSpec, disks: Sequence[AttachedDisk], *, paused: bool = False
    ) -> None:
        """Start the instance.

        Raises:
            HypervisorError: the instance already runs, or could not be started; in the
                latter case nothing is left behind.
        """

    @abc.abstractmethod
    def stop(self, name: str, *, timeout: float, force: bool = False) -> None:
        """Stop the instance: soft (ACPI) for up to ``timeout`` seconds, then hard.

        ``force`` skips the soft phase. Stopping an instance that does not run succeeds.
        Runtime files and sockets are cleaned up.

        Raises:
            HypervisorError: the instance could not be stopped even by force.
        """

    @abc.abstractmethod
    def reboot(self, name: str, *, hard: bool) -> None:
        """Reboot a running instance: soft (guest ACPI/CTRL-ALT-DEL) or hard (reset).

        Raises:
            HypervisorError: not running, or the reboot request failed.
        """

    @abc.abstractmethod
    def list_instances(self) -> list[str]:
        """Names of the instances this driver runs on the node.

        Raises:
            HypervisorError: the hypervisor cannot be queried.
        """

    @abc.abstractmethod
    def instance_info(self, name: str) -> InstanceInfo | None:
        """Live information about one instance, or None if it does not run here.

        Raises:
            HypervisorError: the hypervisor cannot be queried.
        """

    def all_instances_info(self) -> list[InstanceInfo]:
        """Live information about every instance (default: one query per instance)."""
        infos = []
        for name in self.list_instances():
            info = self.instance_info(name)
            if info is not None:
                infos.append(info)
        return infos

    @abc.abstractmethod
    def balloon(self, name: str, memory: int) -> int:
        """Change a running instance's memory to ``memory`` MiB; return the new size.

        Raises:
            HypervisorError: not running, not supported, or the guest did not reach the target.
        """

    @abc.abstractmethod
    def console(self, spec: InstanceSpec, *, node_host: str) -> ConsoleInfo:
        """How to connect to the instance's console.

        Raises:
            HypervisorError: the instance has no console of this kind.
        """

    @abc.abstractmethod
    def node_info(self) -> HvNodeInfo:
        """Memory and CPU facts of this node as the hypervisor sees them.

        Raises:
            HypervisorError: the facts cannot be read.
        """

    @abc.abstractmethod
    def verify(self) -> list[str]:
        """Check the node can run this hypervisor; return problems found (empty = fine)."""

    # --- optional features: drivers without the capability refuse with kind INVALID --------

    def _unsupported(self, what: str) -> HypervisorError:
        return HypervisorError(
            f"{what} is not supported by the {self.NAME} hypervisor", kind=ErrorKind.INVALID
        )

    def hotplug_add_disk(self, name: str, disk: AttachedDisk) -> None:
        """Attach a disk to a running instance (``CAPABILITIES.hotplug_disk``).

        Raises:
            HypervisorError: not supported or not running; a failed add leaves nothing behind.
        """
        raise self._unsupported("disk hotplug")

    def hotplug_remove_disk(self, name: str, index: int, uuid: str) -> None:
        """Detach a disk from a running instance, waiting until the guest released it.

        Raises:
            HypervisorError: not supported, not running, no such disk, or the guest did not
                release it in time.
        """
        raise self._unsupported("disk hotplug")

    def hotplug_add_nic(self, name: str, nic: NicSpec) -> None:
        """Attach a NIC to a running instance (``CAPABILITIES.hotplug_nic``).

        Raises:
            HypervisorError: not supported or not running; a failed add leaves nothing behind.
        """
        raise self._unsupported("NIC hotplug")

    def hotplug_remove_nic(self, name: str, index: int, uuid: str) -> None:
        """Detach a NIC from a running instance.

        Raises:
            HypervisorError: not supported, not running, or no such NIC.
        """
        raise self._unsupported("NIC hotplug")

    def hotplug_modify_nic(self, name: str, nic: NicSpec) -> None:
        """Move a running instance's NIC to ``nic.mode``/``nic.link`` (e.g. another bridge).

        The NIC is found by ``nic.uuid`` (else ``nic.index``); the guest keeps the device.

        Raises:
            HypervisorError: not supported (INVALID), not running (WRONG_STATE), no such NIC
                (NOT_FOUND), or the new link cannot be used.
        """
        raise self._unsupported("NIC hotplug")

    def set_nic_link(self, name: str, index: int, uuid: str, up: bool) -> None:
        """Set a running instance's NIC link up or down.

        Raises:
            HypervisorError: not supported, not running, or no such NIC.
        """
        raise self._unsupported("NIC link changes")

    def pin_cpus(self, name: str, cpu_mask: str) -> None:
        """Pin a running instance's process and vCPU threads (Ganeti mask syntax).

        Raises:
            HypervisorError: not supported, not running, or a mask the node cannot honour.
        """
        raise self._unsupported("CPU pinning")

    def pause(self, name: str) -> None:
        """Stop a running instance's vCPUs (``CAPABILITIES.pause``).

        Raises:
            HypervisorError: not supported or not running.
        """
        raise self._unsupported("pause")

    def resume(self, name: str) -> None:
        """Let a paused instance's vCPUs run again.

        Raises:
            HypervisorError: not supported or not running.
        """
        raise self._unsupported("resume")

    def suspend(self, name: str, state_file: str) -> None:
        """Save a running instance's state into ``state_file`` and stop it.

        Raises:
            HypervisorError: not supported, not running, or the save failed (the instance
                then keeps running and no state file is left).
        """
        raise self._unsupported("suspend to disk")

    def resume_suspended(
        self, spec: InstanceSpec, disks: Sequence[AttachedDisk], state_file: str
    ) -> None:
        """Start an instance from a state file written by :meth:`suspend`.

        Raises:
            HypervisorError: not supported, or the restore failed (nothing left running).
        """
        raise self._unsupported("resume from disk")

    def migration_info(self, name: str) -> dict[str, Any]:
        """What the destination needs to accept this running instance (its runtime).

        Raises:
            HypervisorError: not supported or not running.
        """
        raise self._unsupported("migration")

    def accept_migration(
        self,
        spec: InstanceSpec,
        disks: Sequence[AttachedDisk],
        info: Mapping[str, Any],
        *,
        listen_host: str,
        port: int,
    ) -> None:
        """Start the destination side paused, waiting for the incoming state.

        Raises:
            HypervisorError: not supported, or it could not start (nothing left behind).
        """
        raise self._unsupported("migration")

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
        """Start sending a running instance to an accepting destination (returns at once).

        Raises:
            HypervisorError: not supported, not running, or the migration could not start.
        """
        raise self._unsupported("migration")

    def migration_status(self, name: str, *, wait: float = 0.0) -> MigrationStatus:
        """Progress of the instance's outgoing migration.

        With ``wait`` > 0 the driver returns as soon as the migration reached a final state
        (completed, failed, cancelled), or after ``wait`` seconds with the current progress.

        Raises:
            HypervisorError: not supported or not running.
        """
        raise self._unsupported("migration")

    def finalize_migration_source(self, name: str, *, success: bool) -> None:
        """Source side after a migration: quit the guest (success) or resume it (failure).

        Raises:
            HypervisorError: not supported, or the final step failed.
        """
        raise self._unsupported("migration")

    def finalize_migration_target(self, spec: InstanceSpec, *, success: bool) -> None:
        """Destination side after a migration: run the guest (success) or kill it (failure).

        Raises:
            HypervisorError: not supported, or the final step failed.
        """
        raise self._unsupported("migration")

    def abort_migration(self, name: str) -> None:
        """Cancel the instance's outgoing migration; the source keeps running.

        Raises:
            HypervisorError: not supported or not running.
        """
        raise self._unsupported("migration")

    def resize_disk(self, name: str, index: int, new_size: int) -> None:
        """Grow disk ``index`` of a running instance to ``new_size`` MiB, image included.

        Only drivers with ``CAPABILITIES.online_disk_resize`` implement it.

        Raises:
            HypervisorError: not supported (kind INVALID), not running (WRONG_STATE), no such
                disk (NOT_FOUND), or the hypervisor refused.
        """
        raise self._unsupported("online disk resize")

    def powercycle_node(self, sysrq_trigger: str) -> None:
        """Hard-reset the node at once, without a clean shutdown (Ganeti's node powercycle).

        The default is Linux's: write ``b`` to the SysRq trigger, which reboots immediately.
        ``sysrq_trigger`` comes from the node's :class:`~corral.common.paths.Paths`
        (``paths.sysrq_trigger``), so a node with a test root writes a plain file instead of
        resetting the machine. Drivers whose hypervisor needs another way override this.

        Raises:
            HypervisorError: the trigger cannot be written (kind ENVIRONMENT); when the write
                succeeds on a real host this call does not return.
        """
        linux_powercycle(sysrq_trigger)

    def cleanup(self, name: str) -> None:  # noqa: B027 - optional hook
        """Remove leftovers (sockets, runtime files) of an instance that no longer runs."""

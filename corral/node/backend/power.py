"""Pause/resume and suspend to disk/restore of instances on this node (Corral extensions).

Pause and resume stop and restart an instance's vCPUs in place. Suspend saves the whole
instance into a state file the node chooses, ``<data_dir>/suspend/<hypervisor>/<name>.state``
(the driver may keep files beside it, named ``<name>.state.*``), and stops it; unsuspend
starts it again from that file, which is then removed. The state directory is persistent
(unlike the hypervisors' run directories), so a suspended instance survives a node reboot.

Every action holds the instance's lock, like start and stop.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Sequence

from corral.common.errors import ErrorKind, HypervisorError, ParamError
from corral.hypervisor.base import Hypervisor, InstanceSpec, linux_powercycle
from corral.node.backend.instances import HypervisorGetter, InstanceLocks, Instances
from corral.rpc.calls import DiskRef

log = logging.getLogger(__name__)

STATE_SUFFIX = ".state"


class Power:
    """The pause/resume/suspend family of node calls.

    Args:
        data_dir: the node's persistent data directory (state files go under ``suspend/``).
        get_hv: maps a hypervisor name to its driver.
        instances: resolves disks the way a start does.
        locks: the per-instance locks shared with the other families.
    """

    def __init__(
        self,
        data_dir: str,
        get_hv: HypervisorGetter,
        instances: Instances,
        locks: InstanceLocks,
    ) -> None:
        self.data_dir = data_dir
        self._get_hv = get_hv
        self._instances = instances
        self.locks = locks

    def state_dir(self, hypervisor: str) -> str:
        """Where suspended instances of ``hypervisor`` are kept on this node."""
        if not hypervisor or "/" in hypervisor or hypervisor.startswith("."):
            raise ParamError({"hypervisor": f"invalid hypervisor name {hypervisor!r}"})
        return os.path.join(self.data_dir, "suspend", hypervisor)

    def state_file(self, name: str, hypervisor: str) -> str:
        """The state file of instance ``name``.

        Raises:
            ParamError: an instance name that cannot be a file name.
        """
        if not name or "/" in name or name.startswith("."):
            raise ParamError({"name": f"invalid instance name {name!r}"})
        return os.path.join(self.state_dir(hypervisor), name + STATE_SUFFIX)

    def _check_capability(self, hypervisor: str, name: str) -> None:
        hv = self._get_hv(hypervisor)
        if not hv.CAPABILITIES.pause:
            raise HypervisorError(
                f"hypervisor {hypervisor} cannot pause or suspend instances",
                kind=ErrorKind.INVALID,
                instance=name,
            )

    def pause(self, name: str, hypervisor: str) -> None:
        """Stop the instance's vCPUs.

        Raises:
            HypervisorError: not supported (INVALID), not running (WRONG_STATE), or failed.
        """
        self._check_capability(hypervisor, name)
        with self.locks.hold(name):
            self._get_hv(hypervisor).pause(name)
        log.info("paused instance %s", name)

    def resume(self, name: str, hypervisor: str) -> None:
        """Let a paused instance run again.

        Raises:
            HypervisorError: not supported (INVALID), not paused/running (WRONG_STATE), or
                failed.
        """
        self._check_capability(hypervisor, name)
        with self.locks.hold(name):
            self._get_hv(hypervisor).resume(name)
        log.info("resumed instance %s", name)

    def suspend(self, name: str, hypervisor: str) -> str:
        """Save the instance into its state file and stop it; return the file's path.

        Raises:
            HypervisorError: not supported (INVALID), not running (WRONG_STATE), a saved state
                exists already (EXISTS), or the save failed (the instance runs on).
        """
        self._check_capability(hypervisor, name)
        path = self.state_file(name, hypervisor)
        with self.locks.hold(name):
            self._get_hv(hypervisor).suspend(name, path)
        log.info("suspended instance %s to %s", name, path)
        return path

    def unsuspend(self, spec: InstanceSpec, disks: Sequence[DiskRef], state_file: str) -> None:
        """Start the instance from its state file (removed afterwards).

        Raises:
            ParamError: ``state_file`` is not this node's state file of the instance.
            StorageError: a disk's volume is missing.
            HypervisorError: not supported, already running (WRONG_STATE), no saved state
                (NOT_FOUND), or the restore failed (the state file is kept).
        """
        self._check_capability(spec.hypervisor, spec.name)
        expected = self.state_file(spec.name, spec.hypervisor)
        if os.path.realpath(state_file) != os.path.realpath(expected):
            raise ParamError(
                {
                    "state_file": f"{state_file!r} is not the state file of {spec.name} here "
                    f"({expected})"
                }
            )
        with self.locks.hold(spec.name):
            attached = self._instances.attach_disks(disks)
            self._get_hv(spec.hypervisor).resume_suspended(spec, attached, expected)
        log.info("restored instance %s from %s", spec.name, expected)

    def discard(self, name: str, hypervisor: str) -> list[str]:
        """Remove a saved state of the instance (stopping a suspended instance drops it).

        Returns:
            The files removed (none when it had no saved state).
        """
        try:
            base = self.state_file(name, hypervisor)
        except ParamError:
            return []
        removed = []
        for path in [base, *glob.glob(glob.escape(base) + ".*")]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot remove saved state %s: %s", path, exc)
                continue
            removed.append(path)
        if removed:
            log.info("discarded the saved state of %s: %s", name, ", ".join(removed))
        return removed


def schedule_powercycle(
    sysrq_trigger: str, hv: Hypervisor | None, *, delay: float
) -> threading.Thread:
    """Reset the node ``delay`` seconds from now, in a background thread (returns at once).

    Ganeti answers the RPC first and resets afterwards, so the master learns the order
    arrived. ``hv`` resets the machine its way (:meth:`Hypervisor.powercycle_node`); None:
    Linux's (:func:`~corral.hypervisor.base.linux_powercycle`). Failures are logged: nobody
    waits for them any more.

    Returns:
        The (started) thread, for tests.
    """

    def later() -> None:
        time.sleep(delay)
        log.warning("powercycling the node now (writing %s)", sysrq_trigger)
        try:
            if hv is not None:
                hv.powercycle_node(sysrq_trigger)
            else:
                linux_powercycle(sysrq_trigger)
        except Exception:
            log.exception("node powercycle failed")

    thread = threading.Thread(target=later, name="node-powercycle")
    thread.start()
    return thread

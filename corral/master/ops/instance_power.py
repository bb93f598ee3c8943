"""Pause, resume, suspend and unsuspend of instances (Corral extensions; Ganeti has none).

=====================  ==================  ===============================================
opcode                 hooks path          needs
=====================  ==================  ===============================================
OP_INSTANCE_PAUSE      instance-pause      running; the vCPUs stop, the memory stays
OP_INSTANCE_RESUME     instance-resume     paused; the vCPUs run again
OP_INSTANCE_SUSPEND    instance-suspend    running or paused; saved on its primary node
OP_INSTANCE_UNSUSPEND  instance-unsuspend  suspended; restored as it was saved
=====================  ==================  ===============================================

A paused instance keeps ``admin_state`` up: its ``status`` stays ``running`` (Ganeti has no
paused status and its clients know only Ganeti's values); the query field ``run_state`` says
``paused``. A suspended instance is not running: suspend records ``admin_state`` down together
with ``suspended`` and the node's ``suspend_file`` (status ``ADMIN_down``, field ``suspended``
true), so nothing restarts it from scratch behind the administrator's back. Unsuspend marks it
up again. Starting a suspended instance is refused (its saved state would be lost); stopping or
removing it discards the saved state. Rename and reinstall refuse it too.
"""

from __future__ import annotations

from typing import Any

from corral.common.errors import ErrorKind, OpError
from corral.hypervisor.base import InstanceInfo, InstanceState
from corral.master.ops.base import register
from corral.master.ops.common import (
    check_node_memory,
    disk_refs,
    instance_spec,
    is_running,
    live_info,
)
from corral.master.ops.instance import InstanceOperation
from corral.objects.instance import AdminState, AdminStateSource, Instance
from corral.objects.opcodes import (
    OpInstancePause,
    OpInstanceResume,
    OpInstanceSuspend,
    OpInstanceUnsuspend,
)
from corral.objects.params.fill import filled_beparams
from corral.rpc.calls import (
    INSTANCE_PAUSE,
    INSTANCE_RESUME,
    INSTANCE_SUSPEND,
    INSTANCE_UNSUSPEND,
    InstancePowerRequest,
    InstanceSuspendRequest,
    InstanceUnsuspendRequest,
)


def _state(info: InstanceInfo | None) -> str:
    return info.state.value if info is not None else "not running"


def _refuse_suspended(instance: Instance, what: str) -> None:
    if instance.suspended:
        raise OpError(
            f"instance {instance.name} is suspended; unsuspend it before {what}",
            kind=ErrorKind.WRONG_STATE,
            instance=instance.name,
        )


@register
class InstancePause(InstanceOperation[OpInstancePause]):
    """Stop a running instance's vCPUs (QEMU ``stop``); it keeps its memory and devices."""

    OPCODE = OpInstancePause
    HPATH = "instance-pause"

    async def check_prereq(self) -> None:
        """The instance must run, and not be paused already (WRONG_STATE otherwise)."""
        await super().check_prereq()
        _refuse_suspended(self.instance, "pausing it")
        info = await live_info(self.ctx, self.pnode, self.instance)
        if info is None or info.state is not InstanceState.RUNNING:
            raise OpError(
                f"instance {self.instance.name} is not running ({_state(info)}); "
                "only a running instance can be paused",
                kind=ErrorKind.WRONG_STATE,
                instance=self.instance.name,
            )

    async def execute(self) -> Any:
        """Pause it on its node."""
        inst = self.instance
        self.feedback(f"pausing instance {inst.name}")
        await self.ctx.runner.call(
            self.pnode,
            INSTANCE_PAUSE,
            InstancePowerRequest(name=inst.name, hypervisor=inst.hypervisor, reason=self.reason()),
        )
        return None


@register
class InstanceResume(InstanceOperation[OpInstanceResume]):
    """Let a paused instance run again (QEMU ``cont``)."""

    OPCODE = OpInstanceResume
    HPATH = "instance-resume"

    async def check_prereq(self) -> None:
        """The instance must be paused (WRONG_STATE otherwise)."""
        await super().check_prereq()
        _refuse_suspended(self.instance, "resuming it (use unsuspend)")
        info = await live_info(self.ctx, self.pnode, self.instance)
        if info is None or info.state is not InstanceState.PAUSED:
            raise OpError(
                f"instance {self.instance.name} is not paused ({_state(info)})",
                kind=ErrorKind.WRONG_STATE,
                instance=self.instance.name,
            )

    async def execute(self) -> Any:
        """Resume it on its node."""
        inst = self.instance
        self.feedback(f"resuming instance {inst.name}")
        await self.ctx.runner.call(
            self.pnode,
            INSTANCE_RESUME,
            InstancePowerRequest(name=inst.name, hypervisor=inst.hypervisor, reason=self.reason()),
        )
        return None


@register
class InstanceSuspend(InstanceOperation[OpInstanceSuspend]):
    """Save a running (or paused) instance to disk on its primary node and stop it."""

    OPCODE = OpInstanceSuspend
    HPATH = "instance-suspend"

    async def check_prereq(self) -> None:
        """Running or paused, and not suspended already (WRONG_STATE otherwise)."""
        await super().check_prereq()
        _refuse_suspended(self.instance, "suspending it again")
        info = await live_info(self.ctx, self.pnode, self.instance)
        if not is_running(info):
            raise OpError(
                f"instance {self.instance.name} is not running ({_state(info)}); "
                "only a running or paused instance can be suspended",
                kind=ErrorKind.WRONG_STATE,
                instance=self.instance.name,
            )

    async def execute(self) -> Any:
        """Suspend on the node, then record it suspended (and down) with the state file.

        Returns:
            The state file's path on the primary node.
        """
        inst = self.instance
        self.feedback(f"suspending instance {inst.name} to disk on {self.pnode.name}")
        resp = await self.ctx.runner.call(
            self.pnode,
            INSTANCE_SUSPEND,
            InstanceSuspendRequest(
                name=inst.name, hypervisor=inst.hypervisor, reason=self.reason()
            ),
        )

        def change(i: Instance) -> None:
            i.suspended = True
            i.suspend_file = resp.state_file
            i.admin_state = AdminState.DOWN
            i.admin_state_source = AdminStateSource.ADMIN

        self.instance = self.ctx.config.modify_instance(inst.name, change)
        self.feedback(f"instance {inst.name} saved to {resp.state_file}")
        return resp.state_file

    def hook_vars(self) -> dict[str, str]:
        """SUSPEND_FILE (post hooks: where the state was saved)."""
        return {"SUSPEND_FILE": self.instance.suspend_file}


@register
class InstanceUnsuspend(InstanceOperation[OpInstanceUnsuspend]):
    """Start a suspended instance again from its saved state."""

    OPCODE = OpInstanceUnsuspend
    HPATH = "instance-unsuspend"

    async def check_prereq(self) -> None:
        """Suspended, not running, and enough memory on its node."""
        await super().check_prereq()
        inst = self.instance
        if not inst.suspended:
            raise OpError(f"instance {inst.name} is not suspended", kind=ErrorKind.WRONG_STATE)
        if is_running(await live_info(self.ctx, self.pnode, inst)):
            raise OpError(
                f"instance {inst.name} is suspended but runs on {self.pnode.name}",
                kind=ErrorKind.WRONG_STATE,
                instance=inst.name,
            )
        be = filled_beparams(self.cluster, inst)
        await check_node_memory(
            self.ctx, self.pnode, inst.hypervisor, int(be["maxmem"]), f"instance {inst.name}"
        )

    async def execute(self) -> Any:
        """Restore on the node, then record it up and no longer suspended."""
        inst = self.instance
        self.feedback(f"restoring instance {inst.name} from {inst.suspend_file}")
        await self.ctx.runner.call(
            self.pnode,
            INSTANCE_UNSUSPEND,
            InstanceUnsuspendRequest(
                instance=instance_spec(self.cluster, inst),
                disks=disk_refs(inst),
                state_file=inst.suspend_file,
                reason=self.reason(),
            ),
        )

        def change(i: Instance) -> None:
            i.suspended = False
            i.suspend_file = ""
            i.admin_state = AdminState.UP
            i.admin_state_source = AdminStateSource.ADMIN

        self.instance = self.ctx.config.modify_instance(inst.name, change)
        return None

    def hook_vars(self) -> dict[str, str]:
        """SUSPEND_FILE (pre hooks: where the state is restored from)."""
        return {"SUSPEND_FILE": self.instance.suspend_file}

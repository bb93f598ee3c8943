"""Instance queries that go through jobs (Ganeti compatibility): console and query_data."""

from __future__ import annotations

import asyncio
from typing import Any

from corral.common.errors import CorralError, ErrorKind, OpError
from corral.hypervisor.base import InstanceInfo, InstanceState
from corral.master.locking import CLUSTER_LOCK, LockMode, instance_lock
from corral.master.ops.base import Operation, register
from corral.master.ops.common import instance_spec, is_running, volume_spec
from corral.master.ops.instance import InstanceOperation
from corral.objects.cluster import Cluster
from corral.objects.instance import AdminState, AdminStateSource, Instance
from corral.objects.node import Node
from corral.objects.opcodes import OpInstanceConsole, OpInstanceQueryData
from corral.objects.params.fill import filled_beparams, filled_hvparams, filled_nicparams
from corral.rpc.calls import (
    BLOCKDEV_FIND,
    INSTANCE_CONSOLE,
    INSTANCE_INFO,
    BlockdevRequest,
    InstanceConsoleRequest,
    InstanceInfoRequest,
)


def oper_state_name(instance: Instance, running: bool | None, *, powered_off: bool = False) -> str:
    """Ganeti's status word from admin state and run state (``running`` None: unknown).

    ``powered_off``: the node reports the guest powered itself off (``USER_down``).
    """
    if running is None:
        return "ERROR_nodedown"
    if instance.admin_state is AdminState.OFFLINE:
        return "ERROR_up" if running else "ADMIN_offline"
    if instance.admin_state is AdminState.UP:
        if running:
            return "running"
        return "USER_down" if powered_off else "ERROR_down"
    if running:
        return "ERROR_up"
    return "USER_down" if instance.admin_state_source is AdminStateSource.USER else "ADMIN_down"


@register
class InstanceConsole(InstanceOperation[OpInstanceConsole]):
    """How to connect to a running instance's console (RAPI console dict)."""

    OPCODE = OpInstanceConsole
    IDEMPOTENT = True

    def declare_locks(self) -> dict[str, LockMode]:
        """Shared locks only: reading."""
        return {key: LockMode.SHARED for key in super().declare_locks()}

    async def check_prereq(self) -> None:
        """The instance must run (WRONG_STATE with its status otherwise)."""
        await super().check_prereq()
        inst = self.instance
        resp = await self.ctx.runner.call(
            self.pnode,
            INSTANCE_INFO,
            InstanceInfoRequest(name=inst.name, hypervisor=inst.hypervisor),
        )
        if not is_running(resp.info):
            raise OpError(
                f"instance {inst.name} is not running (state {oper_state_name(inst, False)})",
                kind=ErrorKind.WRONG_STATE,
                instance=inst.name,
            )

    async def execute(self) -> Any:
        """Ask the node's hypervisor driver.

        Returns:
            ``{"instance", "kind", "host", "port", "command", "message", ...}``.
        """
        resp = await self.ctx.runner.call(
            self.pnode,
            INSTANCE_CONSOLE,
            InstanceConsoleRequest(
                instance=instance_spec(self.cluster, self.instance), node_host=self.pnode.primary_ip
            ),
        )
        return resp.console.model_dump(mode="json")


@register
class InstanceQueryData(Operation[OpInstanceQueryData]):
    """Detailed information about instances, live state included unless ``static``."""

    OPCODE = OpInstanceQueryData
    IDEMPOTENT = True

    _instances: list[Instance]

    def declare_locks(self) -> dict[str, LockMode]:
        """Shared instance locks with ``use_locking``; otherwise just the cluster lock."""
        locks = {CLUSTER_LOCK: LockMode.SHARED}
        if self.op.use_locking:
            for name in self.op.instances:
                locks[instance_lock(name)] = LockMode.SHARED
        return locks

    async def check_prereq(self) -> None:
        """Every named instance exists (NOT_FOUND otherwise); none named means all."""
        cfg = self.ctx.config
        if self.op.instances:
            self._instances = [cfg.instance(name) for name in dict.fromkeys(self.op.instances)]
        else:
            self._instances = cfg.instances()

    async def execute(self) -> Any:
        """Collect the data (one live query per instance, concurrently).

        Returns:
            ``{name: info}`` where a node that cannot be reached gives ``run_state`` None.
        """
        cluster, cfg = self.cluster, self.ctx.config
        nodes = {n.name: n for n in cfg.nodes()}
        results = await asyncio.gather(
            *(self._one(cluster, nodes.get(inst.primary_node), inst) for inst in self._instances)
        )
        return {inst.name: data for inst, data in zip(self._instances, results, strict=True)}

    async def _one(self, cluster: Cluster, node: Node | None, inst: Instance) -> dict[str, Any]:
        live: InstanceInfo | None = None
        run_state: str | None = None
        pstatus: list[dict[str, Any] | None] = [None] * len(inst.disks)
        if not self.op.static and node is not None and not node.offline:
            try:
                resp = await self.ctx.runner.call(
                    node,
                    INSTANCE_INFO,
                    InstanceInfoRequest(name=inst.name, hypervisor=inst.hypervisor),
                )
                live = resp.info
                run_state = "up" if is_running(live) else "down"
                for idx, disk in enumerate(inst.disks):
                    found = await self.ctx.runner.call(
                        node, BLOCKDEV_FIND, BlockdevRequest(volume=volume_spec(disk))
                    )
                    pstatus[idx] = found.info.model_dump() if found.info else None
            except CorralError as exc:
                self.ctx.log.warning("live data of %s unavailable: %s", inst.name, exc)
                run_state = None
        running = None if run_state is None else run_state == "up"
        return {
            "name": inst.name,
            "uuid": inst.uuid,
            "config_state": inst.admin_state.value,
            "admin_state_source": inst.admin_state_source.value,
            "run_state": run_state,
            "oper_state": None
            if self.op.static
            else oper_state_name(
                inst,
                running,
                powered_off=live is not None and live.state is InstanceState.SHUTDOWN,
            ),
            # Corral: paused/shutdown as the hypervisor sees it; the saved state of suspend
            "hv_state": live.state.value if live is not None else None,
            "suspended": inst.suspended,
            "suspend_file": inst.suspend_file or None,
            "pnode": inst.primary_node,
            "pnode_group": node.group if node else None,
            "snodes": list(inst.secondary_nodes),
            "snodes_group": [],
            "os": inst.os,
            "network_port": inst.network_port,
            "disk_template": inst.disk_template,
            "disks": [
                {
                    "iv_name": f"disk/{idx}",
                    "name": disk.name,
                    "uuid": disk.uuid,
                    "size": disk.size,
                    "mode": disk.mode.value,
                    "dev_type": disk.dev_type,
                    "format": disk.format,
                    "logical_id": disk.logical_id,
                    "pstatus": pstatus[idx],
                    "sstatus": None,
                    "children": [],
                    "spindles": None,
                }
                for idx, disk in enumerate(inst.disks)
            ],
            "nics": [
                [
                    nic.name,
                    nic.uuid,
                    nic.mac,
                    nic.ip,
                    filled_nicparams(cluster, nic).get("mode"),
                    filled_nicparams(cluster, nic).get("link"),
                    filled_nicparams(cluster, nic).get("vlan"),
                    nic.network,
                    None,
                ]
                for nic in inst.nics
            ],
            "hypervisor": inst.hypervisor,
            "hv_instance": dict(inst.hvparams),
            "hv_actual": filled_hvparams(cluster, inst),
            "be_instance": dict(inst.beparams),
            "be_actual": filled_beparams(cluster, inst),
            "os_instance": dict(inst.osparams),
            "os_actual": {**cluster.osparams.get(inst.os_name, {}), **inst.osparams},
            "memory": live.memory if live else None,
            "vcpus": live.vcpus if live else None,
            "state": live.state.value if live else None,
            # what the hypervisor really did (e.g. the accelerator KVM chose, the serial log)
            "hv_runtime": dict(live.details) if live else {},
            "tags": list(inst.tags),
            "serial_no": inst.serial_no,
            "ctime": inst.ctime,
            "mtime": inst.mtime,
        }

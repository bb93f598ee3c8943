"""Running an operation's hooks on the nodes (Ganeti's hooks interface, HOOKS_VERSION 2).

The master builds the whole environment and adds the ``GANETI_`` prefix itself; the node's
runner (``node/backend/hooks.py``) passes the variables through unchanged, with a cleared
environment and a fixed PATH. Layout of the environment (COMPAT.md §5)::

    GANETI_HOOKS_VERSION=2  GANETI_HOOKS_PHASE=PRE|POST  GANETI_CLUSTER  GANETI_MASTER
    GANETI_OP_CODE  GANETI_OBJECT_TYPE  GANETI_DATA_DIR  GANETI_HOOKS_PATH  GANETI_OP_TARGET
    GANETI_<operation vars>          as computed before the operation ran
    GANETI_POST_<operation vars>     post phase only: the same, computed after it ran

Pre hooks: a script exiting non-zero on any reachable node aborts the operation with a
:class:`HookError` naming the node, the script and its output; an unreachable node is logged
and does not count as a refusal. Post hooks: failures are only logged (job log + daemon log).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.common.errors import CorralError, HookError, RpcError
from corral.master.ops.base import Operation
from corral.master.rpcrunner import call_many
from corral.objects.cluster import Cluster
from corral.objects.instance import AdminState, Instance
from corral.objects.params.fill import filled_beparams, filled_hvparams, filled_nicparams
from corral.rpc.calls import HOOKS_RUN, HooksRunRequest, HooksRunResponse

HOOKS_VERSION = 2
PREFIX = "GANETI_"
POST_PREFIX = "GANETI_POST_"


def env_value(value: Any) -> str:
    """A hook variable's text: lists space-joined, None empty, the rest ``str()``."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(env_value(v) for v in value)
    return str(value)


def instance_env(
    cluster: Cluster, instance: Instance, *, status: str | None = None
) -> dict[str, str]:
    """The ``INSTANCE_*`` variables describing ``instance`` (without prefix).

    Args:
        cluster: for the filled parameters.
        instance: the instance (possibly not stored yet, for a create).
        status: ``up``/``down``; default from the instance's admin state.
    """
    be = filled_beparams(cluster, instance)
    hv = filled_hvparams(cluster, instance)
    env: dict[str, str] = {
        "INSTANCE_NAME": instance.name,
        "INSTANCE_UUID": instance.uuid,
        "INSTANCE_PRIMARY": instance.primary_node,
        "INSTANCE_SECONDARY": env_value(instance.secondary_nodes),
        "INSTANCE_OS_TYPE": instance.os,
        "INSTANCE_STATUS": status or ("up" if instance.admin_state is AdminState.UP else "down"),
        "INSTANCE_MINMEM": str(be["minmem"]),
        "INSTANCE_MAXMEM": str(be["maxmem"]),
        "INSTANCE_MEMORY": str(be["maxmem"]),
        "INSTANCE_VCPUS": str(be["vcpus"]),
        "INSTANCE_DISK_TEMPLATE": instance.disk_template,
        "INSTANCE_HYPERVISOR": instance.hypervisor,
        "INSTANCE_TAGS": env_value(instance.tags),
        "INSTANCE_NIC_COUNT": str(len(instance.nics)),
        "INSTANCE_DISK_COUNT": str(len(instance.disks)),
    }
    for idx, nic in enumerate(instance.nics):
        params = filled_nicparams(cluster, nic)
        pre = f"INSTANCE_NIC{idx}_"
        env[pre + "NAME"] = nic.name
        env[pre + "UUID"] = nic.uuid
        env[pre + "MAC"] = nic.mac
        env[pre + "IP"] = env_value(nic.ip)
        env[pre + "MODE"] = env_value(params.get("mode"))
        env[pre + "LINK"] = env_value(params.get("link"))
        env[pre + "VLAN"] = env_value(params.get("vlan"))
        if params.get("mode") == "bridged":
            env[pre + "BRIDGE"] = env_value(params.get("link"))
        if nic.network:
            env[pre + "NETWORK_NAME"] = nic.network
    for idx, disk in enumerate(instance.disks):
        pre = f"INSTANCE_DISK{idx}_"
        env[pre + "SIZE"] = str(disk.size)
        env[pre + "MODE"] = disk.mode.value
        env[pre + "NAME"] = disk.name
        env[pre + "UUID"] = disk.uuid
        env[pre + "DEV_TYPE"] = disk.dev_type
    for key, value in be.items():
        env[f"INSTANCE_BE_{key}"] = env_value(value)
    for key, value in hv.items():
        env[f"INSTANCE_HV_{key}"] = env_value(value)
    return env


def build_env(
    operation: Operation[Any],
    phase: str,
    pre_vars: Mapping[str, str],
    post_vars: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The complete, prefixed environment of one hooks phase.

    Args:
        operation: the running operation (for the opcode, hpath and cluster).
        phase: ``pre`` or ``post``.
        pre_vars: the operation's variables computed before it ran.
        post_vars: the same computed after it ran (post phase only).
    """
    cluster = operation.cluster
    common = {
        "HOOKS_VERSION": str(HOOKS_VERSION),
        "HOOKS_PHASE": phase.upper(),
        "CLUSTER": cluster.name,
        "MASTER": cluster.master_node,
        "OP_CODE": operation.op.OP_ID,
        "OBJECT_TYPE": operation.HTYPE or "CLUSTER",
        "DATA_DIR": operation.ctx.paths.data_dir,
        "HOOKS_PATH": operation.HPATH or "",
        "OP_TARGET": operation.hooks_target(),
    }
    env = {PREFIX + k: v for k, v in pre_vars.items()}
    env.update({PREFIX + k: v for k, v in common.items()})
    if phase == "post" and post_vars is not None:
        env.update({POST_PREFIX + k: v for k, v in post_vars.items()})
    return env


class Hooks:
    """Runs the pre and post hooks of one operation (does nothing without ``HPATH``)."""

    def __init__(self, operation: Operation[Any]) -> None:
        self.operation = operation
        self._pre_vars: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        """Whether this operation has hooks and the cluster runs them."""
        return self.operation.HPATH is not None and self.operation.cluster.hooks_enabled

    async def run_pre(self) -> None:
        """Run the pre hooks.

        Raises:
            HookError: a script failed on a reachable node (names node, script, output).
        """
        if not self.enabled:
            return
        self._pre_vars = self.operation.hooks_env()
        env = build_env(self.operation, "pre", self._pre_vars)
        pre_nodes, _ = self.operation.hooks_nodes()
        failures = await self._run("pre", pre_nodes, env)
        if failures:
            hpath = self.operation.HPATH
            text = "; ".join(
                f"{f['script']} on node {f['node']}" + (f": {f['output']}" if f["output"] else "")
                for f in failures
            )
            raise HookError(
                f"pre-operation hook refused {self.operation.op.OP_ID}: {text}",
                hpath=hpath,
                failures=failures,
            )

    async def run_post(self) -> None:
        """Run the post hooks; failures are logged, never raised."""
        if not self.enabled:
            return
        try:
            post_vars = self.operation.hooks_env()
        except CorralError as exc:
            self.operation.ctx.log.warning("post hooks environment: %s", exc)
            post_vars = dict(self._pre_vars)
        env = build_env(self.operation, "post", self._pre_vars, post_vars)
        _, post_nodes = self.operation.hooks_nodes()
        try:
            failures = await self._run("post", post_nodes, env)
        except Exception as exc:  # the operation is done; its post hooks must not fail it
            self.operation.ctx.log.warning("post hooks could not run: %s", exc, exc_info=True)
            self.operation.feedback(f"post hooks could not run: {exc}")
            return
        for f in failures:
            self.operation.feedback(
                f"post hook {f['script']} failed on node {f['node']}: {f['output']}"
            )

    async def _run(
        self, phase: str, node_names: list[str], env: dict[str, str]
    ) -> list[dict[str, str]]:
        ctx = self.operation.ctx
        nodes = []
        for name in dict.fromkeys(node_names):
            node = ctx.config.read_node(name)
            if node is None or node.offline:
                continue
            nodes.append(node)
        if not nodes:
            return []
        request = HooksRunRequest(
            hpath=self.operation.HPATH or "", phase="pre" if phase == "pre" else "post", env=env
        )
        answers = await call_many(ctx.runner, nodes, HOOKS_RUN, request)
        failures: list[dict[str, str]] = []
        for node_name, answer in answers.items():
            if isinstance(answer, RpcError):
                # NOTE: an unreachable node is not a refusal (Ganeti semantics).
                ctx.log.warning("%s hooks not run on node %s: %s", phase, node_name, answer)
                continue
            if isinstance(answer, CorralError):
                failures.append({"node": node_name, "script": "(runner)", "output": str(answer)})
                continue
            assert isinstance(answer, HooksRunResponse)
            for result in answer.results:
                if result.status == "fail":
                    failures.append(
                        {"node": node_name, "script": result.script, "output": result.output}
                    )
        return failures

"""Helpers shared by the instance operations: specs for the node, live state, resource checks."""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from corral.common.errors import CorralError, ErrorKind, OpError, ParamError
from corral.hypervisor.base import InstanceInfo, InstanceSpec, InstanceState, NicSpec
from corral.master.locking import LockMode, instance_lock, node_lock
from corral.master.ops.base import OpContext
from corral.objects.cluster import Cluster
from corral.objects.instance import Disk, Instance
from corral.objects.node import Node
from corral.objects.params.fill import filled_beparams, filled_hvparams, filled_nicparams
from corral.objects.params.hv import HV_SCHEMAS
from corral.objects.params.schemas import BEPARAMS, expand_be_aliases
from corral.objects.units import check_name
from corral.rpc.calls import (
    INSTANCE_INFO,
    NODE_INFO,
    DiskRef,
    InstanceInfoRequest,
    NodeInfoRequest,
    NodeInfoResponse,
)
from corral.storage.base import VolumeSpec

log = logging.getLogger(__name__)

MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
MAC_PREFIX_RE = re.compile(r"^([0-9a-f]{2}:){2}[0-9a-f]{2}$")
OSPARAM_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
#: First TCP port handed to instances needing one (VNC of KVM guests), as Ganeti.
FIRST_INSTANCE_PORT = 11000
#: Hypervisors whose instances get a ``network_port``.
HV_NEEDS_PORT = ("kvm", "xen-hvm")


# --- specs sent to nodes ---------------------------------------------------------------------


def volume_spec(disk: Disk) -> VolumeSpec:
    """The volume description of a disk for the storage driver on the node."""
    return VolumeSpec(
        dev_type=disk.dev_type,
        logical_id=disk.logical_id,
        size=disk.size,
        format=disk.format,
        uuid=disk.uuid,
        params=dict(disk.params),
    )


def disk_refs(instance: Instance) -> list[DiskRef]:
    """The instance's disks as the node attaches them."""
    return [
        DiskRef(
            index=idx,
            volume=volume_spec(disk),
            mode=disk.mode.value,
            name=disk.name,
            file_driver=disk.file_driver,
        )
        for idx, disk in enumerate(instance.disks)
    ]


def instance_spec(
    cluster: Cluster,
    instance: Instance,
    *,
    hvparams: Mapping[str, Any] | None = None,
    beparams: Mapping[str, Any] | None = None,
) -> InstanceSpec:
    """Everything the hypervisor driver needs, with parameters filled.

    Layers: cluster < instance < the given one-off overrides (already syntax-checked).
    """
    hv = filled_hvparams(cluster, instance)
    hv.update({k: v for k, v in (hvparams or {}).items() if v is not None})
    be = filled_beparams(cluster, instance)
    be.update({k: v for k, v in (beparams or {}).items() if v is not None})
    nics = []
    for idx, nic in enumerate(instance.nics):
        params = filled_nicparams(cluster, nic)
        nics.append(
            NicSpec(
                index=idx,
                uuid=nic.uuid,
                mac=nic.mac,
                mode=str(params.get("mode") or "bridged"),
                link=str(params.get("link") or ""),
                ip=nic.ip,
                name=nic.name,
            )
        )
    return InstanceSpec(
        name=instance.name,
        uuid=instance.uuid,
        hypervisor=instance.hypervisor,
        hvparams=hv,
        memory=int(be["maxmem"]),
        min_memory=int(be["minmem"]),
        vcpus=int(be["vcpus"]),
        nics=nics,
        os=instance.os,
        tags=list(instance.tags),
        network_port=instance.network_port,
    )


def reason_text(job_id: int, op_id: str) -> str:
    """The reason passed to node RPCs (shows up in the node's log)."""
    return f"job {job_id} {op_id}"


# --- locks -----------------------------------------------------------------------------------


def instance_locks(config_instance: Instance | None, name: str) -> dict[str, LockMode]:
    """The usual locks of an instance operation.

    The cluster shared, the instance exclusive, its nodes shared.
    """
    locks = {"cluster": LockMode.SHARED, instance_lock(name): LockMode.EXCLUSIVE}
    if config_instance is not None:
        for node in [config_instance.primary_node, *config_instance.secondary_nodes]:
            locks[node_lock(node)] = LockMode.SHARED
    return locks


# --- live state ------------------------------------------------------------------------------


async def live_info(ctx: OpContext, node: Node, instance: Instance) -> InstanceInfo | None:
    """The instance's live info on ``node`` (None: not running there).

    Raises:
        CorralError: the node cannot be asked (RpcError) or its hypervisor failed.
    """
    resp = await ctx.runner.call(
        node, INSTANCE_INFO, InstanceInfoRequest(name=instance.name, hypervisor=instance.hypervisor)
    )
    return resp.info


def is_running(info: InstanceInfo | None) -> bool:
    """Whether live info says the guest runs (paused counts as running)."""
    return info is not None and info.state in (InstanceState.RUNNING, InstanceState.PAUSED)


async def node_info(
    ctx: OpContext, node: Node, *, hypervisors: list[str], storage_dirs: list[str] | None = None
) -> NodeInfoResponse:
    """The node's facts (memory, storage).

    Raises:
        CorralError: the node cannot be asked.
    """
    return await ctx.runner.call(
        node,
        NODE_INFO,
        NodeInfoRequest(hypervisors=hypervisors, storage_dirs=list(storage_dirs or [])),
    )


async def check_node_memory(
    ctx: OpContext, node: Node, hypervisor: str, needed: int, what: str
) -> None:
    """Refuse when ``node`` has less than ``needed`` MiB free for ``hypervisor``.

    Raises:
        OpError: not enough memory (kind NO_RESOURCES), naming node, need and free memory.
        CorralError: the node cannot be asked.
    """
    info = await node_info(ctx, node, hypervisors=[hypervisor])
    hv = info.hypervisors.get(hypervisor)
    free = hv.memory_free if hv is not None else info.memory_free
    if free < needed:
        raise OpError(
            f"not enough memory on node {node.name} for {what}: needed {needed} MiB, "
            f"free {free} MiB",
            kind=ErrorKind.NO_RESOURCES,
            node=node.name,
            needed=needed,
            free=free,
        )


async def check_storage_space(ctx: OpContext, node: Node, location: str, needed: int) -> None:
    """Refuse when the storage at ``location`` on ``node`` has less than ``needed`` MiB free.

    Raises:
        OpError: not enough space (kind NO_RESOURCES).
        CorralError: the node cannot be asked.
    """
    info = await node_info(ctx, node, hypervisors=[], storage_dirs=[location])
    for space in info.storage:
        if space.free < needed:
            raise OpError(
                f"not enough disk space on node {node.name} in {space.location}: needed "
                f"{needed} MiB, free {space.free} MiB",
                kind=ErrorKind.NO_RESOURCES,
                node=node.name,
                needed=needed,
                free=space.free,
            )


async def ensure_not_running(ctx: OpContext, node: Node, instance: Instance, what: str) -> None:
    """Refuse when the instance is marked up or runs (rename, reinstall, ...).

    Raises:
        OpError: kind WRONG_STATE, saying to shut it down first.
    """
    from corral.objects.instance import AdminState

    if instance.suspended:
        raise OpError(
            f"instance {instance.name} is suspended; unsuspend it (or stop it, which discards "
            f"its saved state) before {what}",
            kind=ErrorKind.WRONG_STATE,
            instance=instance.name,
        )
    if instance.admin_state is AdminState.UP:
        raise OpError(
            f"instance {instance.name} is marked to be up; shut it down before {what}",
            kind=ErrorKind.WRONG_STATE,
            instance=instance.name,
        )
    if is_running(await live_info(ctx, node, instance)):
        raise OpError(
            f"instance {instance.name} is running on {node.name}; shut it down before {what}",
            kind=ErrorKind.WRONG_STATE,
            instance=instance.name,
        )


# --- parameter checks --------------------------------------------------------------------------


def check_beparams(raw: Mapping[str, Any], what: str = "beparams") -> dict[str, Any]:
    """Syntax check of backend parameters (``memory`` sets minmem and maxmem).

    Raises:
        ParamError: unknown keys or bad values, by key.
    """
    try:
        return BEPARAMS.check_syntax(expand_be_aliases(dict(raw)))
    except ParamError as exc:
        raise ParamError(exc.problems, context=what) from None


def check_hvparams(hypervisor: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Syntax check of hypervisor parameters.

    Raises:
        ParamError: unknown hypervisor, unknown keys or bad values, by key.
    """
    schema = HV_SCHEMAS.get(hypervisor)
    if schema is None:
        raise ParamError(
            {"hypervisor": f"unknown hypervisor {hypervisor!r} (known: {', '.join(HV_SCHEMAS)})"}
        )
    return schema.check_syntax(raw)


def check_osparams(raw: Mapping[str, Any]) -> dict[str, str]:
    """Syntax check of OS parameters (names from the OS's parameters.list; values text).

    Raises:
        ParamError: a bad name or a value that is not text, by key.
    """
    problems = {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not OSPARAM_KEY_RE.match(key):
            problems[key] = "not a valid OS parameter name (lowercase letters, digits, _ and -)"
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            problems[key] = f"value must be text, got {type(value).__name__}"
        elif "\0" in str(value) or "\n" in str(value):
            problems[key] = "value must not contain NUL or newline characters"
        else:
            out[key] = str(value)
    if problems:
        raise ParamError(problems, context="osparams")
    return out


def check_memory_range(be: Mapping[str, Any]) -> None:
    """Refuse filled beparams whose minmem exceeds maxmem.

    Raises:
        ParamError: naming ``minmem``.
    """
    if int(be["minmem"]) > int(be["maxmem"]):
        raise ParamError(
            {"minmem": f"minmem ({be['minmem']}) must not exceed maxmem ({be['maxmem']})"},
            context="beparams",
        )


def merge_params(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply checked changes to an instance's own parameters (None drops the override)."""
    out = dict(current)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def check_os_name(os_name: str, field: str = "os_type") -> None:
    """Syntax check of ``name[+variant]``.

    Raises:
        ParamError: naming ``field``.
    """
    name, _, variant = os_name.partition("+")
    why = check_name(name, "OS name")
    if why is None and "+" in os_name:
        why = check_name(variant, "OS variant")
    if why:
        raise ParamError({field: why})


def check_instance_name(name: str, field: str = "instance_name") -> None:
    """Syntax check of an instance name.

    Raises:
        ParamError: naming ``field``.
    """
    why = check_name(name, "instance name")
    if why:
        raise ParamError({field: why})


def normalize_mac(mac: str, field: str) -> str:
    """A MAC address in lowercase ``aa:bb:cc:dd:ee:ff`` form.

    Raises:
        ParamError: not a MAC, or a multicast one, naming ``field``.
    """
    value = mac.strip().lower().replace("-", ":")
    if not MAC_RE.match(value):
        raise ParamError({field: f"not a MAC address: {mac!r}"})
    if int(value[:2], 16) & 1:
        raise ParamError({field: f"{mac} is a multicast address"})
    return value


def generate_mac(prefix: str, used: set[str]) -> str:
    """A random MAC ``<prefix>:xx:yy:zz`` not in ``used`` (and adds it there).

    Raises:
        OpError: the prefix is invalid (INVALID) or no free address was found
            (NO_RESOURCES).
    """
    if not MAC_PREFIX_RE.match(prefix):
        raise OpError(
            f"cluster mac_prefix {prefix!r} is not three hex bytes", kind=ErrorKind.INVALID
        )
    for _ in range(1000):
        mac = prefix + "".join(f":{random.randrange(256):02x}" for _ in range(3))
        if mac not in used:
            used.add(mac)
            return mac
    raise OpError("could not generate a unique MAC address", kind=ErrorKind.NO_RESOURCES)


def check_ip(ip: str | None, field: str) -> str | None:
    """An IP address or None (``none``/empty).

    Raises:
        ParamError: not an address, naming ``field``.
    """
    if ip is None or ip.lower() in ("", "none"):
        return None
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise ParamError({field: f"not an IP address: {ip!r}"}) from None


def file_disk_path(base: str, subdir: str | None, instance: str, index: int) -> str:
    """Where disk ``index`` of a ``file`` instance lives.

    That is ``<base>[/<subdir>]/<instance>/disk<N>``.
    """
    parts = [base]
    if subdir:
        parts.append(subdir)
    parts += [instance, f"disk{index}"]
    return os.path.join(*parts)


#: Disk templates whose disks are image files (``dev_type`` equal to the template's name).
FILE_TEMPLATES = ("file", "sharedfile")


def template_storage_dir(cluster: Cluster, template: str) -> str:
    """The directory new disks of a file-based ``template`` go to.

    ``file``: the node-local ``file_storage_dir``; ``sharedfile``: the cluster's
    ``shared_file_storage_dir``, the same path on every node.

    Raises:
        OpError: ``sharedfile`` without a shared storage dir configured (WRONG_STATE).
    """
    if template == "sharedfile":
        if not cluster.shared_file_storage_dir:
            raise OpError(
                "the cluster has no shared file storage dir; set shared_file_storage_dir "
                "(cluster init --shared-file-storage-dir) to use the sharedfile template",
                kind=ErrorKind.WRONG_STATE,
            )
        return cluster.shared_file_storage_dir
    return cluster.file_storage_dir


def renamed_disk_path(path: str, new_instance: str) -> str:
    """The path of a file disk after its instance is renamed (the instance directory)."""
    inst_dir = os.path.dirname(path)
    return os.path.join(os.path.dirname(inst_dir), new_instance, os.path.basename(path))


def allocate_port(instances: list[Instance]) -> int:
    """The lowest free instance port (>= 11000)."""
    used = {i.network_port for i in instances if i.network_port is not None}
    port = FIRST_INSTANCE_PORT
    while port in used:
        port += 1
    return port


# --- rollback ----------------------------------------------------------------------------------


class AsyncUndo:
    """An undo list for multi-step operations whose undo steps are coroutines.

    Steps run last-first on :meth:`rollback`; a failing step is logged (and reported to the
    job log) and the others still run.
    """

    def __init__(self, ctx: OpContext) -> None:
        self._ctx = ctx
        self._steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def add(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        """Register an undo step."""
        self._steps.append((what, step))

    def clear(self) -> None:
        """Keep everything done so far (the operation succeeded)."""
        self._steps.clear()

    async def rollback(self) -> None:
        """Run the undo steps, last first; never raises for a failing step."""
        while self._steps:
            what, step = self._steps.pop()
            try:
                await step()
                self._ctx.feedback(f"rolled back: {what}")
            except (CorralError, OSError) as exc:
                self._ctx.log.warning("rollback step %r failed: %s", what, exc)
                self._ctx.feedback(f"rollback of {what} failed: {exc}")

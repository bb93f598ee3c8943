"""The checks of ``cluster verify``: pure functions from gathered facts to findings.

``master/ops/cluster.py`` gathers the facts (the store, and the nodes' answers to ``version``,
``file_checksums``, ``hv_verify``, ``all_instances_info``, ``volume_list`` and ``node_info``);
everything here only compares them, so each check is unit-tested with plain data.

A finding is Ganeti's verify error: severity (ERROR fails the verify, WARNING does not), an
error code (:data:`CODES`, Ganeti's ``CV_E*`` names; ``EINSTANCEUP`` is Corral's), the type
and name of the item at fault, and a message. :meth:`Finding.format` prints it as Ganeti does::

    ERROR: node node2: cannot reach the node daemon: ...        (default)
    ERROR:ENODERPC:node:node2:cannot reach the node daemon: ... (--error-codes)
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from corral.hypervisor.base import InstanceInfo, InstanceState
from corral.objects.cluster import Cluster
from corral.objects.instance import AdminState, Instance
from corral.objects.node import Node
from corral.rpc.calls import VersionResponse
from corral.rpc.calls_cluster import FileChecksumsResponse, VolumeListResponse


class Severity(enum.StrEnum):
    """How bad a finding is: only errors make the verify fail."""

    ERROR = "ERROR"
    WARNING = "WARNING"


#: Every error code: the type of item it names and what it means.
CODES: dict[str, tuple[str, str]] = {
    "ECLUSTERCFG": ("cluster", "the cluster configuration is inconsistent"),
    "ECLUSTERFILECHECK": ("cluster", "a cluster file is wrong on the master itself"),
    "ENODERPC": ("node", "the node daemon cannot be reached or a call to it failed"),
    "ENODEVERSION": ("node", "protocol or software version differs from the master's"),
    "ENODEFILECHECK": ("node", "a file that must be identical on all nodes differs or is missing"),
    "ENODEHV": ("node", "the hypervisor reports a problem on the node"),
    "ENODEORPHANINSTANCE": ("node", "an instance the cluster does not know runs on the node"),
    "ENODEORPHANLV": ("node", "a volume (disk image file) belongs to no instance"),
    "ENODEN1": ("node", "not enough memory elsewhere to fail over the node's instances"),
    "EINSTANCEBADNODE": ("instance", "the instance's node is offline, unknown or not vm_capable"),
    "EINSTANCEDOWN": ("instance", "the instance should run but does not run on its primary node"),
    "EINSTANCEUP": ("instance", "the instance runs although it is marked down (ERROR_up)"),
    "EINSTANCEWRONGNODE": ("instance", "the instance runs on a node that is not its primary"),
    "EINSTANCELAYOUT": ("instance", "the instance runs on several nodes at once"),
    "EINSTANCEMISSINGDISK": ("instance", "a disk image of the instance is missing"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """One problem found by verify."""

    severity: Severity
    code: str
    item_type: str
    item: str
    message: str

    def format(self, *, error_codes: bool = False) -> str:
        """Ganeti's line: ``ERROR: node node2: msg`` or ``ERROR:ENODERPC:node:node2:msg``."""
        if error_codes:
            return f"{self.severity}:{self.code}:{self.item_type}:{self.item}:{self.message}"
        item = f" {self.item}" if self.item else ""
        return f"{self.severity}: {self.item_type}{item}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        """The JSON form (the operation's result)."""
        return {
            "severity": self.severity.value,
            "code": self.code,
            "item_type": self.item_type,
            "item": self.item,
            "message": self.message,
        }


class Findings:
    """Collects findings; codes in ``ignore`` are downgraded to warnings (``--ignore-errors``)."""

    def __init__(self, ignore: Iterable[str] = ()) -> None:
        self.items: list[Finding] = []
        self.ignore = frozenset(ignore)

    def add(self, code: str, item: str, message: str, *, warning: bool = False) -> None:
        """Record a finding about ``item`` (its type comes from :data:`CODES`)."""
        item_type = CODES[code][0]
        severity = Severity.WARNING if warning or code in self.ignore else Severity.ERROR
        self.items.append(Finding(severity, code, item_type, item, message))

    def extend(self, other: Findings) -> None:
        """Add another collection's findings (already graded)."""
        self.items.extend(other.items)

    @property
    def ok(self) -> bool:
        """No ERROR finding."""
        return not any(f.severity is Severity.ERROR for f in self.items)


def candidate_role(node: Node, master: str) -> str:
    """The file role of a node: ``master``, ``master-candidate`` or ``regular``."""
    if node.name == master:
        return "master"
    return "master-candidate" if node.master_candidate else "regular"


def _running(info: InstanceInfo | None) -> bool:
    return info is not None and info.state in (InstanceState.RUNNING, InstanceState.PAUSED)


# --- configuration ------------------------------------------------------------------------------


def check_config(
    cluster: Cluster,
    nodes: Sequence[Node],
    instances: Sequence[Instance],
    groups: set[str] | None,
    out: Findings,
) -> None:
    """Consistency of the stored configuration alone (no node is asked).

    ``groups`` is the set of known node group names, or None when the store has none (a
    cluster from before groups existed: every node is in ``default``).
    """
    by_name = {n.name: n for n in nodes}
    master = by_name.get(cluster.master_node)
    if master is None:
        out.add("ECLUSTERCFG", "", f"master node {cluster.master_node} is not a known node")
    else:
        if master.offline:
            out.add("ECLUSTERCFG", "", f"master node {master.name} is marked offline")
        if not master.master_candidate:
            out.add("ECLUSTERCFG", "", f"master node {master.name} is not a master candidate")
        if not master.master_capable:
            out.add("ECLUSTERCFG", "", f"master node {master.name} is not master_capable")
    if not cluster.enabled_hypervisors:
        out.add("ECLUSTERCFG", "", "no hypervisor is enabled")
    if groups is not None:
        for node in nodes:
            if node.group not in groups:
                out.add("ECLUSTERCFG", "", f"node {node.name} is in unknown group {node.group}")
    addresses: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
    for node in nodes:
        addresses[(node.primary_ip, node.rpc_port)].append(node.name)
    for (ip, port), names in sorted(addresses.items()):
        if len(names) > 1:
            out.add("ECLUSTERCFG", "", f"nodes {', '.join(names)} share the address {ip}:{port}")

    macs: dict[str, list[str]] = collections.defaultdict(list)
    ports: dict[int, list[str]] = collections.defaultdict(list)
    volumes: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    enabled_hvs = set(cluster.enabled_hypervisors)
    for inst in instances:
        if inst.primary_node not in by_name:
            out.add(
                "ECLUSTERCFG",
                "",
                f"instance {inst.name} has unknown primary node {inst.primary_node}",
            )
        for sec in inst.secondary_nodes:
            if sec not in by_name:
                out.add("ECLUSTERCFG", "", f"instance {inst.name} has unknown secondary node {sec}")
        if inst.hypervisor not in enabled_hvs:
            out.add(
                "ECLUSTERCFG",
                "",
                f"instance {inst.name} uses hypervisor {inst.hypervisor}, which is not enabled",
            )
        if inst.disk_template not in cluster.enabled_disk_templates:
            out.add(
                "ECLUSTERCFG",
                "",
                f"instance {inst.name} uses disk template {inst.disk_template}, which is not "
                "enabled",
                warning=True,
            )
        for idx, nic in enumerate(inst.nics):
            macs[nic.mac.lower()].append(f"{inst.name}/nic{idx}")
        if inst.network_port is not None:
            ports[inst.network_port].append(inst.name)
        for idx, disk in enumerate(inst.disks):
            if not disk.logical_id:
                continue
            # file disks are node-local: the same path on two nodes is two files
            scope = inst.primary_node if disk.dev_type == "file" else ""
            volumes[(scope, disk.logical_id)].append(f"{inst.name}/disk{idx}")
    for mac, users in sorted(macs.items()):
        if len(users) > 1:
            out.add("ECLUSTERCFG", "", f"MAC {mac} is used more than once: {', '.join(users)}")
    for port, users in sorted(ports.items()):
        if len(users) > 1:
            out.add(
                "ECLUSTERCFG", "", f"network port {port} is used more than once: {', '.join(users)}"
            )
    for (_, path), users in sorted(volumes.items()):
        if len(users) > 1:
            out.add("ECLUSTERCFG", "", f"volume {path} is used more than once: {', '.join(users)}")


# --- nodes --------------------------------------------------------------------------------------


def check_version(
    node: str,
    answer: VersionResponse,
    *,
    software_version: str,
    protocol_version: int,
    out: Findings,
) -> bool:
    """Compare a node's versions with the master's; False when the protocol differs.

    A different protocol is an error (the node's other answers are not trusted then); a
    different software version with the same protocol is a warning, as in Ganeti.
    """
    if answer.node_name != node:
        out.add("ENODERPC", node, f"the node daemon answers as {answer.node_name!r}")
    if answer.protocol_version != protocol_version:
        out.add(
            "ENODEVERSION",
            node,
            f"protocol version mismatch: master {protocol_version}, node {answer.protocol_version}",
        )
        return False
    if answer.software_version != software_version:
        out.add(
            "ENODEVERSION",
            node,
            f"software version mismatch: master {software_version}, node {answer.software_version}",
            warning=True,
        )
    return True


def check_files(master: str, answers: Mapping[str, FileChecksumsResponse], out: Findings) -> None:
    """Every cluster file must have the same checksum on all nodes that hold it.

    The reference is the master's copy when the master answered, else the most common one.
    A file missing everywhere (the CRL before any node was removed) is fine.
    """
    holders: dict[str, dict[str, str | None]] = collections.defaultdict(dict)
    for node, answer in answers.items():
        for name, checksum in answer.checksums.items():
            holders[name][node] = checksum
        for name, reason in sorted(answer.errors.items()):
            out.add("ENODEFILECHECK", node, f"cannot read {name}: {reason}")
    for name, by_node in sorted(holders.items()):
        present = [c for c in by_node.values() if c is not None]
        if not present:
            continue
        if master in by_node:
            reference = by_node[master]
            if reference is None:
                out.add("ECLUSTERFILECHECK", "", f"file {name} is missing on the master {master}")
                continue
            whose = "the master's"
        else:
            reference = collections.Counter(present).most_common(1)[0][0]
            whose = "most nodes'"
        for node, checksum in sorted(by_node.items()):
            if node in answers and name in answers[node].errors:
                continue
            if checksum is None:
                out.add("ENODEFILECHECK", node, f"file {name} is missing")
            elif checksum != reference:
                out.add(
                    "ENODEFILECHECK",
                    node,
                    f"file {name} differs from {whose} copy (sha256 {checksum[:12]}..., "
                    f"expected {reference[:12]}...)",
                )


def check_hypervisors(node: str, problems: Mapping[str, Sequence[str]], out: Findings) -> None:
    """Each hypervisor problem a node reports is an error."""
    for hv, msgs in sorted(problems.items()):
        for msg in msgs:
            out.add("ENODEHV", node, f"hypervisor {hv}: {msg}")


# --- instances ----------------------------------------------------------------------------------


def check_instances(
    nodes: Sequence[Node],
    instances: Sequence[Instance],
    live: Mapping[str, Mapping[str, InstanceInfo]],
    out: Findings,
) -> None:
    """Instances run where the config says and nowhere else; nothing unknown runs.

    ``live`` has the instances of each node that answered (offline and unreachable nodes are
    absent: what runs there is unknown, so nothing is reported for their instances).
    """
    by_name = {n.name: n for n in nodes}
    known = {i.name for i in instances}
    for inst in instances:
        pnode = by_name.get(inst.primary_node)
        if pnode is None:
            continue  # reported by check_config
        if pnode.offline:
            out.add("EINSTANCEBADNODE", inst.name, f"instance lives on offline node {pnode.name}")
        elif not pnode.vm_capable:
            out.add(
                "EINSTANCEBADNODE", inst.name, f"instance lives on non-vm_capable node {pnode.name}"
            )
        running_on = sorted(n for n, infos in live.items() if _running(infos.get(inst.name)))
        for node in running_on:
            if node != inst.primary_node:
                out.add("EINSTANCEWRONGNODE", inst.name, f"instance should not run on node {node}")
        if len(running_on) > 1:
            out.add(
                "EINSTANCELAYOUT",
                inst.name,
                f"instance runs on {len(running_on)} nodes at once: {', '.join(running_on)}",
            )
        if inst.primary_node not in live:
            continue  # offline or unreachable: its state is unknown
        info = live[inst.primary_node].get(inst.name)
        if inst.admin_state is AdminState.UP and not _running(info):
            if info is not None and info.state is InstanceState.SHUTDOWN:
                out.add(
                    "EINSTANCEDOWN",
                    inst.name,
                    f"the guest powered itself off on {inst.primary_node} (USER_down); the "
                    "watcher records it",
                    warning=True,
                )
            else:
                state = f" (state {info.state})" if info is not None else ""
                out.add(
                    "EINSTANCEDOWN",
                    inst.name,
                    f"instance not running on its primary node {inst.primary_node}{state}",
                )
        elif inst.admin_state is not AdminState.UP and _running(info):
            out.add(
                "EINSTANCEUP",
                inst.name,
                f"instance is marked {inst.admin_state} but runs on {inst.primary_node}",
            )
    for node, infos in sorted(live.items()):
        for name in sorted(infos):
            if name not in known:
                out.add(
                    "ENODEORPHANINSTANCE",
                    node,
                    f"instance {name} runs on the node but is unknown to the cluster "
                    f"(state {infos[name].state})",
                )


# --- volumes ------------------------------------------------------------------------------------


def expected_volumes(instances: Sequence[Instance]) -> tuple[dict[str, set[str]], set[str]]:
    """The image files the config knows: ``file`` disks per primary node, ``sharedfile`` ones."""
    local: dict[str, set[str]] = collections.defaultdict(set)
    shared: set[str] = set()
    for inst in instances:
        for disk in inst.disks:
            if not disk.logical_id:
                continue
            if disk.dev_type == "file":
                local[inst.primary_node].add(disk.logical_id)
            elif disk.dev_type == "sharedfile":
                shared.add(disk.logical_id)
    return local, shared


def check_volumes(
    instances: Sequence[Instance],
    local_dir: str,
    listings: Mapping[str, VolumeListResponse],
    shared_dir: str,
    shared_lister: str | None,
    out: Findings,
) -> None:
    """Orphan volumes (files nobody uses) and missing disks (files the config needs).

    Args:
        instances: every instance.
        local_dir: the cluster's ``file_storage_dir`` (listed on every node in ``listings``).
        listings: each answering vm_capable node's listing.
        shared_dir: the ``shared_file_storage_dir`` ("" if none).
        shared_lister: the node whose listing holds the shared dir (None: not listed).
        out: where findings go.
    """
    local, shared = expected_volumes(instances)
    for node, listing in sorted(listings.items()):
        for directory, reason in sorted(listing.errors.items()):
            out.add("ENODERPC", node, f"cannot list the storage directory {directory}: {reason}")
        if listing.truncated:
            out.add("ENODEORPHANLV", node, "too many files in the storage dirs", warning=True)
        present = set(listing.volumes.get(local_dir, []))
        for path in sorted(present - local[node]):
            out.add("ENODEORPHANLV", node, f"volume {path} is unknown", warning=True)
        if shared_dir and node == shared_lister:
            for path in sorted(set(listing.volumes.get(shared_dir, [])) - shared):
                out.add("ENODEORPHANLV", node, f"shared volume {path} is unknown", warning=True)
    shared_listing = listings.get(shared_lister) if shared_lister else None
    for inst in instances:
        own = listings.get(inst.primary_node)
        for idx, disk in enumerate(inst.disks):
            files: list[str] | None = None
            where = inst.primary_node
            if disk.dev_type == "file" and own is not None:
                files = _dir_listing(own, local_dir, disk.logical_id)
            elif disk.dev_type == "sharedfile" and shared_listing is not None:
                where = f"the shared storage (listed on {shared_lister})"
                files = _dir_listing(shared_listing, shared_dir, disk.logical_id)
            if files is not None and disk.logical_id not in files:
                out.add(
                    "EINSTANCEMISSINGDISK",
                    inst.name,
                    f"disk/{idx} ({disk.logical_id}) is missing on {where}",
                )


def _dir_listing(listing: VolumeListResponse, directory: str, path: str) -> list[str] | None:
    """The listing that covers ``path`` (None: the path is outside ``directory``)."""
    if not directory or not path.startswith(directory.rstrip("/") + "/"):
        return None
    if directory in listing.errors:
        return None
    return listing.volumes.get(directory, [])


# --- N+1 ----------------------------------------------------------------------------------------


def check_n_plus_one(
    nodes: Sequence[Node],
    instances: Sequence[Instance],
    free_memory: Mapping[str, int],
    maxmem: Mapping[str, int],
    out: Findings,
) -> None:
    """Whether each node's failover-able instances fit elsewhere if the node dies.

    Failover-able: admin up, ``sharedfile`` disks only (``file`` disks stay with their node).
    The other online vm_capable nodes of the same group take them (largest instance first,
    each onto the node with the most free memory); a node whose instances do not all fit is
    an ENODEN1 error. ``free_memory`` is each answering node's free MiB, ``maxmem`` each
    instance's maximum memory in MiB.
    """
    by_name = {n.name: n for n in nodes}
    movable: dict[str, list[Instance]] = collections.defaultdict(list)
    for inst in instances:
        if (
            inst.admin_state is AdminState.UP
            and inst.disks
            and all(d.dev_type == "sharedfile" for d in inst.disks)
        ):
            movable[inst.primary_node].append(inst)
    for node_name, insts in sorted(movable.items()):
        node = by_name.get(node_name)
        if node is None:
            continue
        free = {
            n.name: free_memory[n.name]
            for n in nodes
            if n.name != node_name
            and n.group == node.group
            and n.vm_capable
            and not n.offline
            and n.name in free_memory
        }
        unplaced: list[str] = []
        for inst in sorted(insts, key=lambda i: -maxmem.get(i.name, 0)):
            need = maxmem.get(inst.name, 0)
            target = max(free, key=lambda n: free[n], default=None)
            if target is None or free[target] < need:
                unplaced.append(f"{inst.name} ({need} MiB)")
                continue
            free[target] -= need
        if unplaced:
            out.add(
                "ENODEN1",
                node_name,
                "not enough memory on the other nodes to fail over "
                f"{', '.join(unplaced)} if this node fails",
            )


def summary(findings: Sequence[Finding]) -> dict[str, Any]:
    """The operation's result: ``{"ok", "findings"}``."""
    return {
        "ok": not any(f.severity is Severity.ERROR for f in findings),
        "findings": [f.to_dict() for f in findings],
    }

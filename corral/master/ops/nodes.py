"""Operations: nodes (``node add|readd|remove|modify``) and the cluster files they need.

* **Add** (``OP_NODE_ADD``): the new host runs ``corral-noded --join``; the master joins it
  with the token the administrator copied (``rpc/join.py``: reachability, version, CSR signed
  by the cluster CA, cluster files), then stores the node. Any failure before the store write
  leaves the cluster unchanged and the host in join mode.
* **Readd** (``OP_NODE_ADD`` with ``readd``): with a join token (the host was reinstalled or
  told to leave) the node is joined again and its old certificate revoked; without one the
  node must answer as a member, and gets its files again. Offline/drained are cleared.
* **Remove** (``OP_NODE_REMOVE``): refused for the master and for nodes instances use. The node
  leaves the store, is told to leave the cluster (best effort), and its certificate serial is
  added to the CA's revocation list (``crl.pem``), which is distributed to every node: from
  then on node daemons and the master's RPC client refuse that certificate.
* **Modify** (``OP_NODE_SET_PARAMS``): Ganeti's rules — the master cannot be offlined,
  drained, demoted or made non-master-capable; offline or drained nodes are not candidates;
  a candidate must be master-capable; a node with instances cannot become non-vm-capable.
  Promotion sends the master candidates' files (CA key, RAPI certificate and users) to the
  node, demotion removes them.

Revoked serials are kept in the store (``/corral/crl``) so any master can rebuild the CRL.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

import corral
from corral.common.errors import CorralError, ErrorKind, OpError, ParamError
from corral.master.config import ClusterConfig, DeleteKey, PutObject, node_key
from corral.master.locking import CLUSTER_LOCK, LockMode
from corral.master.ops.base import Operation, register
from corral.master.ops.groups import get_group
from corral.master.rpcrunner import call_many, node_address
from corral.node.backend.membership import read_cluster_files, role_file_names
from corral.objects.base import ConfigObject
from corral.objects.group import DEFAULT_GROUP
from corral.objects.node import Node
from corral.objects.opcodes_node import (
    OpNodeAdd,
    OpNodePowercycle,
    OpNodeRemove,
    OpNodeSetParams,
)
from corral.objects.units import check_name
from corral.rpc import crl, tls
from corral.rpc.calls_nodes import (
    CLUSTER_FILE_NAMES,
    NODE_LEAVE,
    NODE_POWERCYCLE,
    NODE_WRITE_FILES,
    NodeLeaveRequest,
    NodePowercycleRequest,
    WriteFilesRequest,
)
from corral.rpc.join import join_node

REVOKED_KEY = "/corral/crl"
#: The files only master candidates hold (removed from a demoted node).
CANDIDATE_ONLY_FILES = [n for n, only in CLUSTER_FILE_NAMES.items() if only]


class Revocations(ConfigObject):
    """Serial numbers (hex) of every certificate the cluster CA revoked."""

    serials: list[str] = []


def node_role(node: Node, master: str) -> str:
    """The role deciding which cluster files a node holds (see ``membership.role_file_names``)."""
    return node.role(master).value


def revoked(config: ClusterConfig) -> list[str]:
    """The revoked serials (hex) stored in the cluster."""
    found = config.read(REVOKED_KEY, Revocations)
    return list(found.value.serials) if found else []


def write_local_crl(op: Operation[Any]) -> None:
    """(Re)write this master's ``crl.pem`` from the serials in the store.

    Raises:
        TlsError: the CA is missing or invalid here, or the file cannot be written.
    """
    crl.write_crl(op.ctx.paths, [int(s, 16) for s in revoked(op.ctx.config)])


async def distribute_files(
    op: Operation[Any], nodes: list[Node], *, names: list[str] | None = None
) -> dict[str, CorralError]:
    """Send each (online) node the cluster files of its role, or only ``names``.

    Candidates' files are only ever sent to master/candidate nodes. Failures do not raise:
    they are reported in the job log and returned (the caller decides).
    """
    master = op.cluster.master_node
    failures: dict[str, CorralError] = {}
    targets = [n for n in nodes if not n.offline and n.name != master]
    by_role: dict[str, list[Node]] = {}
    for node in targets:
        by_role.setdefault(node_role(node, master), []).append(node)
    for role, members in by_role.items():
        wanted = [n for n in role_file_names(role) if names is None or n in names]
        files = read_cluster_files(op.ctx.paths, role)
        files = [f for f in files if f.name in wanted]
        if not files:
            continue
        answers = await call_many(
            op.ctx.runner, members, NODE_WRITE_FILES, WriteFilesRequest(files=files)
        )
        for name, answer in answers.items():
            if isinstance(answer, CorralError):
                failures[name] = answer
                op.feedback(f"WARNING: could not update the cluster files on {name}: {answer}")
    return failures


def _check_version(node: str) -> Any:
    def check(software: str, protocol: int) -> None:
        if software != corral.__version__ or protocol != corral.PROTOCOL_VERSION:
            raise OpError(
                f"node {node} runs Corral {software} (protocol {protocol}), the master "
                f"{corral.__version__} (protocol {corral.PROTOCOL_VERSION}); install the same "
                "version on it first",
                kind=ErrorKind.ENVIRONMENT,
                node=node,
                node_version=software,
                master_version=corral.__version__,
            )

    return check


def _resolve(name: str, primary_ip: str | None) -> str:
    if primary_ip:
        return primary_ip
    try:
        return str(socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0])
    except OSError as exc:
        raise OpError(
            f"cannot resolve node name {name!r} ({exc}); give its address (--primary-ip)",
            kind=ErrorKind.ENVIRONMENT,
            node=name,
        ) from exc


def _check_ip(value: str | None, field: str) -> None:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ParamError({field: f"not an IP address: {value!r}"}) from None


@register
class NodeAdd(Operation[OpNodeAdd]):
    """Add (or re-add) a node through the join protocol (see the module docstring)."""

    OPCODE = OpNodeAdd
    HPATH = "node-add"
    HTYPE = "NODE"

    def check_arguments(self) -> None:
        """Valid name, addresses and port; a token for a new node.

        Raises:
            ParamError: naming the field.
        """
        why = check_name(self.op.node_name, "node name")
        if why:
            raise ParamError({"node_name": why})
        _check_ip(self.op.primary_ip, "primary_ip")
        _check_ip(self.op.secondary_ip, "secondary_ip")
        if self.op.port is not None and not 0 < self.op.port < 65536:
            raise ParamError({"port": f"must be a TCP port, got {self.op.port}"})
        if not self.op.readd and not self.op.join_token:
            raise ParamError(
                {
                    "join_token": "required: run 'corral-noded --join' on the new host and "
                    "pass the token it prints"
                }
            )
        if self.op.master_candidate and self.op.master_capable is False:
            raise ParamError({"master_candidate": "a master candidate must be master-capable"})

    def declare_locks(self) -> dict[str, Any]:
        """The cluster lock, exclusively (membership changes are rare and global)."""
        return {CLUSTER_LOCK: LockMode.EXCLUSIVE}

    async def check_prereq(self) -> None:
        """Name new (or known, for readd), address not another node's, group exists.

        Raises:
            OpError: EXISTS, NOT_FOUND or WRONG_STATE naming the conflict.
        """
        config = self.ctx.config
        name = self.op.node_name
        existing = config.read_node(name)
        if self.op.readd:
            if existing is None:
                raise OpError(
                    f"node {name!r} is not in the cluster; add it instead",
                    kind=ErrorKind.NOT_FOUND,
                    node=name,
                )
            if name == self.cluster.master_node:
                raise OpError(
                    "the master node cannot be re-added", kind=ErrorKind.WRONG_STATE, node=name
                )
        elif existing is not None:
            raise OpError(
                f"node {name!r} is already in the cluster (use readd)",
                kind=ErrorKind.EXISTS,
                node=name,
            )
        self._ip = _resolve(name, self.op.primary_ip or (existing.primary_ip if existing else None))
        self._port = self.op.port or (existing.rpc_port if existing else self.cluster.noded_port)
        for other in config.nodes():
            if other.name != name and other.primary_ip == self._ip and other.rpc_port == self._port:
                raise OpError(
                    f"address {self._ip}:{self._port} is node {other.name}'s already",
                    kind=ErrorKind.NOT_UNIQUE,
                    node=name,
                )
        group = self.op.group or (existing.group if existing else DEFAULT_GROUP)
        get_group(config, group)
        self._group = group
        self._existing = existing

    def _new_node(self, serial: int | None) -> Node:
        existing = self._existing
        base = (
            existing.model_copy() if existing else Node(name=self.op.node_name, primary_ip=self._ip)
        )
        master_capable = self.op.master_capable
        if master_capable is None:
            master_capable = base.master_capable if existing else True
        candidate = self.op.master_candidate
        if candidate is None:
            candidate = base.master_candidate if existing else False
        updates: dict[str, Any] = {
            "primary_ip": self._ip,
            "secondary_ip": self.op.secondary_ip or (base.secondary_ip if existing else ""),
            "rpc_port": self._port,
            "master_candidate": bool(candidate and master_capable),
            "master_capable": master_capable,
            "vm_capable": base.vm_capable
            if self.op.vm_capable is None and existing
            else (True if self.op.vm_capable is None else self.op.vm_capable),
            "group": self._group,
            "offline": False,
            "drained": False,
        }
        if serial is not None:
            updates["cert_serial"] = f"{serial:x}"
        node = base.model_copy(update=updates)
        if existing:
            node.touch()
        return node

    async def execute(self) -> Any:
        """Join (or refresh) the node, then store it.

        Raises:
            RpcError / TlsError / OpError: see ``rpc/join.py``; nothing was stored.
        """
        config = self.ctx.config
        paths = self.ctx.paths
        planned = self._new_node(None)
        role = node_role(planned, self.cluster.master_node)
        if self.op.join_token:
            if not os.path.exists(paths.crl):
                # NOTE: an (empty) CRL exists from the first join on; it is written only when
                # missing, so every node keeps the byte-identical copy verify compares.
                write_local_crl(self)
            addresses = [self._ip] + ([self.op.secondary_ip] if self.op.secondary_ip else [])
            with open(paths.ca_cert, "rb") as fh:
                ca_pem = fh.read()
            self.feedback(f"joining {self.op.node_name} at {self._ip}:{self._port}")
            joined = await join_node(
                node_address(planned),
                token=self.op.join_token,
                addresses=addresses,
                ca_pem=ca_pem,
                sign_csr=lambda csr: tls.sign_csr(paths, csr, self.op.node_name, addresses),
                files=read_cluster_files(paths, role),
                check_version=_check_version(self.op.node_name),
            )
            node = self._new_node(joined.cert_serial)
        else:
            node = self._new_node(None)
            failed = await distribute_files(self, [node])
            if failed:
                raise OpError(
                    f"node {node.name} cannot be reached as a cluster member "
                    f"({failed[node.name]}); to re-join it, run 'corral-noded --join' there "
                    "and pass the token",
                    kind=ErrorKind.ENVIRONMENT,
                    node=node.name,
                )
        old_serial = self._existing.cert_serial if self._existing else ""
        try:
            if self._existing is None:
                config.add_node(node)
            else:
                current = config.node_versioned(node.name)
                config.commit([PutObject(node_key(node.name), node, current.revision)])
        except CorralError:
            if self.op.join_token:
                # NOTE: the node holds a certificate now; do not leave it usable.
                await self._revoke([f"{node.cert_serial}"])
            raise
        if self.op.join_token and old_serial and old_serial != node.cert_serial:
            await self._revoke([old_serial])
        self.feedback(f"node {node.name} {'re-added' if self._existing else 'added'}")
        return None

    async def _revoke(self, serials: list[str]) -> None:
        add_revocations(self.ctx.config, serials)
        write_local_crl(self)
        await distribute_files(self, self.ctx.config.nodes(), names=["crl"])

    def hooks_env(self) -> dict[str, str]:
        """NODE_NAME, NODE_PIP, NODE_SIP, MASTER_CAPABLE, VM_CAPABLE (Ganeti's names)."""
        return {
            "OP_TARGET": self.op.node_name,
            "NODE_NAME": self.op.node_name,
            "NODE_PIP": self.op.primary_ip or "",
            "NODE_SIP": self.op.secondary_ip or "",
            "MASTER_CAPABLE": str(self.op.master_capable is not False),
            "VM_CAPABLE": str(self.op.vm_capable is not False),
        }

    def hooks_target(self) -> str:
        """The node's name."""
        return self.op.node_name


def add_revocations(config: ClusterConfig, serials: list[str]) -> None:
    """Add serials (hex) to the stored revocation list (idempotent).

    Raises:
        StoreError: the store cannot be written.
    """
    wanted = [s for s in serials if s]
    if not wanted:
        return
    found = config.read(REVOKED_KEY, Revocations)
    if found is None:
        config.commit([PutObject(REVOKED_KEY, Revocations(serials=sorted(set(wanted))), 0)])
        return

    def change(rev: Revocations) -> None:
        rev.serials = sorted(set(rev.serials) | set(wanted))

    config.modify(REVOKED_KEY, Revocations, change, missing=lambda: CorralError("gone"))


def node_instances(config: ClusterConfig, name: str) -> tuple[list[str], list[str]]:
    """Instances with ``name`` as primary, and as secondary node."""
    primary, secondary = [], []
    for inst in config.instances():
        if inst.primary_node == name:
            primary.append(inst.name)
        elif name in inst.secondary_nodes:
            secondary.append(inst.name)
    return primary, secondary


@register
class NodeRemove(Operation[OpNodeRemove]):
    """Remove a node and revoke its certificate (see the module docstring)."""

    OPCODE = OpNodeRemove
    HPATH = "node-remove"
    HTYPE = "NODE"

    def declare_locks(self) -> dict[str, Any]:
        """The cluster lock, exclusively."""
        return {CLUSTER_LOCK: LockMode.EXCLUSIVE}

    async def check_prereq(self) -> None:
        """The node exists, is not the master and no instance uses it.

        Raises:
            OpError: NOT_FOUND, or WRONG_STATE naming the instances.
        """
        config = self.ctx.config
        self._node = config.node(self.op.node_name)
        if self.op.node_name == self.cluster.master_node:
            raise OpError(
                "the master node cannot be removed (fail the master over first)",
                kind=ErrorKind.WRONG_STATE,
                node=self.op.node_name,
            )
        primary, secondary = node_instances(config, self.op.node_name)
        if primary or secondary:
            raise OpError(
                f"node {self.op.node_name} still holds instances "
                f"({', '.join(primary + secondary)}); move or remove them first",
                kind=ErrorKind.WRONG_STATE,
                node=self.op.node_name,
                instances=primary + secondary,
            )

    async def _serial(self) -> str:
        if self._node.cert_serial:
            return self._node.cert_serial
        # NOTE: a node from before serials were recorded: read the certificate it presents.
        try:
            pem = tls.fetch_server_certificate(
                self._node.primary_ip, self._node.rpc_port, timeout=5
            )
        except CorralError as exc:
            self.feedback(f"WARNING: cannot read the certificate of {self._node.name}: {exc}")
            return ""
        from cryptography import x509

        return f"{x509.load_pem_x509_certificate(pem).serial_number:x}"

    async def execute(self) -> Any:
        """Delete the node, tell it to leave, revoke its certificate, distribute the CRL."""
        config = self.ctx.config
        node = self._node
        serial = await self._serial()
        current = config.node_versioned(node.name)
        config.commit([DeleteKey(node_key(node.name), current.revision)])
        if not node.offline:
            try:
                await self.ctx.runner.call(node, NODE_LEAVE, NodeLeaveRequest(reason="removed"))
            except CorralError as exc:
                self.feedback(f"WARNING: node {node.name} was not told to leave: {exc}")
        if serial:
            add_revocations(config, [serial])
            write_local_crl(self)
            await distribute_files(self, config.nodes(), names=["crl"])
            self.feedback(f"certificate {serial} of {node.name} revoked")
        else:
            self.feedback(f"WARNING: certificate of {node.name} unknown, not revoked")
        return None

    def hooks_env(self) -> dict[str, str]:
        """NODE_NAME."""
        return {"OP_TARGET": self.op.node_name, "NODE_NAME": self.op.node_name}

    def hooks_target(self) -> str:
        """The node's name."""
        return self.op.node_name


@register
class NodeSetParams(Operation[OpNodeSetParams]):
    """Change roles and flags of a node, with Ganeti's rules (see the module docstring)."""

    OPCODE = OpNodeSetParams
    HPATH = "node-modify"
    HTYPE = "NODE"

    _FLAGS = ("master_candidate", "offline", "drained", "master_capable", "vm_capable")

    def check_arguments(self) -> None:
        """Something to change; at most one of candidate/offline/drained set to True.

        Raises:
            ParamError: naming the fields.
        """
        changes = {f: getattr(self.op, f) for f in self._FLAGS if getattr(self.op, f) is not None}
        if not changes and self.op.secondary_ip is None and not self.op.ndparams:
            raise ParamError({"node_name": "no changes given"})
        trues = [f for f in ("master_candidate", "offline", "drained") if changes.get(f)]
        if len(trues) > 1:
            raise ParamError(
                {f: "only one of master_candidate, offline, drained can be set" for f in trues}
            )
        _check_ip(self.op.secondary_ip, "secondary_ip")

    def declare_locks(self) -> dict[str, Any]:
        """The cluster lock, exclusively (the candidate count is cluster-wide)."""
        return {CLUSTER_LOCK: LockMode.EXCLUSIVE}

    def _planned(self, node: Node) -> Node:
        new = node.model_copy()
        op = self.op
        if op.master_capable is not None:
            new.master_capable = op.master_capable
        if op.vm_capable is not None:
            new.vm_capable = op.vm_capable
        if op.offline is not None:
            new.offline = op.offline
        if op.drained is not None:
            new.drained = op.drained
        if op.master_candidate is not None:
            new.master_candidate = op.master_candidate
        # Ganeti: an offline or drained node is demoted; setting a node online again
        # does not promote it by itself.
        if op.offline or op.drained:
            new.master_candidate = False
        if op.offline:
            new.drained = False
        if op.drained:
            new.offline = False
        if op.master_candidate:
            new.offline = new.drained = False
        if op.secondary_ip is not None:
            new.secondary_ip = op.secondary_ip
        return new

    async def check_prereq(self) -> None:
        """Apply the rules against the current state.

        Raises:
            OpError: WRONG_STATE naming the rule that forbids the change.
        """
        config = self.ctx.config
        name = self.op.node_name
        self._node = config.node(name)
        new = self._planned(self._node)
        master = self.cluster.master_node

        def refuse(why: str) -> OpError:
            return OpError(f"node {name}: {why}", kind=ErrorKind.WRONG_STATE, node=name)

        if name == master:
            if new.offline or new.drained:
                raise refuse("the master node cannot be set offline or drained")
            if not new.master_candidate and self.op.master_candidate is False:
                raise refuse("the master node cannot be demoted from master candidate")
            if not new.master_capable:
                raise refuse("the master node must stay master-capable")
        if new.master_candidate and not new.master_capable:
            raise refuse(
                "a master candidate must be master-capable (demote it in the same command: "
                "--master-candidate=no)"
                if self._node.master_candidate
                else "it is not master-capable, it cannot be a master candidate"
            )
        if not new.vm_capable and self._node.vm_capable:
            primary, secondary = node_instances(config, name)
            if primary or secondary:
                raise refuse(
                    f"it holds instances ({', '.join(primary + secondary)}); "
                    "it cannot become non-vm-capable"
                )
        others = [n for n in config.nodes() if n.name != name]
        candidates = [n for n in [*others, new] if n.master_candidate and not n.offline]
        if not candidates and not any(n.name == master for n in [*others, new]):
            raise refuse("at least one master candidate must remain")
        if self._node.master_candidate and not new.master_candidate and not candidates:
            raise refuse("it is the last master candidate")
        self._new = new

    async def execute(self) -> Any:
        """Store the change, then update the node's cluster files for its new role.

        Returns:
            Ganeti's list of ``[parameter, new value]`` changed.
        """
        new = self._new
        old = self._node
        changed = [
            [f, getattr(new, f)]
            for f in (*self._FLAGS, "secondary_ip")
            if getattr(new, f) != getattr(old, f)
        ]

        def change(node: Node) -> None:
            for field, value in changed:
                setattr(node, field, value)

        self.ctx.config.modify_node(new.name, change)
        master = self.cluster.master_node
        old_role, new_role = node_role(old, master), node_role(new, master)
        if not new.offline and (old.offline or old_role != new_role):
            await distribute_files(self, [new])
            # NOTE: also after coming back online: the node may have been demoted while it
            # was offline (unreachable), so it may still hold the candidates' files.
            if not set(CANDIDATE_ONLY_FILES) <= set(role_file_names(new_role)):
                try:
                    await self.ctx.runner.call(
                        new, NODE_WRITE_FILES, WriteFilesRequest(remove=CANDIDATE_ONLY_FILES)
                    )
                except CorralError as exc:
                    self.feedback(f"WARNING: could not remove master files from {new.name}: {exc}")
        for field, value in changed:
            self.feedback(f"{new.name}: {field} -> {value}")
        return changed

    def hooks_env(self) -> dict[str, str]:
        """NODE_NAME and the requested flags (Ganeti's names)."""
        env = {"OP_TARGET": self.op.node_name, "NODE_NAME": self.op.node_name}
        for field in self._FLAGS:
            value = getattr(self.op, field)
            env[field.upper()] = "" if value is None else str(value)
        return env

    def hooks_target(self) -> str:
        """The node's name."""
        return self.op.node_name


@register
class NodePowercycle(Operation[OpNodePowercycle]):
    """Hard-reset a node through its node daemon (Ganeti's ``LUNodePowercycle``).

    No locks are taken, as in Ganeti: a powercycle is what an administrator does to a node
    whose jobs hang. The master node needs ``force``. The node answers first and resets about
    a second later, so the job succeeds with the node's message; instances on it go down with
    it (the watcher restarts them when it is back).
    """

    OPCODE = OpNodePowercycle

    def declare_locks(self) -> dict[str, LockMode]:
        """No locks (see the class docstring)."""
        return {}

    async def check_prereq(self) -> None:
        """The node exists; the master only with ``force``.

        Raises:
            OpError: NOT_FOUND, or WRONG_STATE for the master without ``force``.
        """
        self._node = self.ctx.config.node(self.op.node_name)
        if self.op.node_name == self.cluster.master_node and not self.op.force:
            raise OpError(
                f"{self.op.node_name} is the master node; powercycling it needs force",
                kind=ErrorKind.WRONG_STATE,
                node=self.op.node_name,
            )

    async def execute(self) -> Any:
        """Order the powercycle; the node's answer (what it is about to do)."""
        cluster = self.cluster
        hypervisor = cluster.default_hypervisor if cluster.enabled_hypervisors else ""
        answer = await self.ctx.runner.call(
            self._node, NODE_POWERCYCLE, NodePowercycleRequest(hypervisor=hypervisor)
        )
        self.feedback(answer.message)
        return answer.message

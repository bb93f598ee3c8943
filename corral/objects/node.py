"""The node object: one host of the cluster."""

from __future__ import annotations

import enum

from corral.objects.base import ConfigObject


class NodeRole(enum.StrEnum):
    """A node's role, as Ganeti's ``role`` field letters describe it."""

    MASTER = "master"
    CANDIDATE = "master-candidate"
    REGULAR = "regular"
    DRAINED = "drained"
    OFFLINE = "offline"


class Node(ConfigObject):
    """A host running a node daemon."""

    name: str
    primary_ip: str
    secondary_ip: str = ""
    rpc_port: int = 1811
    master_candidate: bool = True
    offline: bool = False
    drained: bool = False
    master_capable: bool = True
    vm_capable: bool = True
    group: str = "default"
    #: Serial number (hex) of the node certificate the cluster CA issued at add/readd
    #: ("" for a node created before, e.g. by ``cluster init``); revoked at removal.
    cert_serial: str = ""

    def role(self, master_name: str) -> NodeRole:
        """This node's role given the current master's name."""
        if self.name == master_name:
            return NodeRole.MASTER
        if self.offline:
            return NodeRole.OFFLINE
        if self.drained:
            return NodeRole.DRAINED
        if self.master_candidate:
            return NodeRole.CANDIDATE
        return NodeRole.REGULAR

"""Instances and their disks and NICs."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from corral.objects.base import ConfigObject, new_uuid


class AdminState(enum.StrEnum):
    """What the administrator wants the instance to be (Ganeti ``admin_state``)."""

    UP = "up"
    DOWN = "down"
    OFFLINE = "offline"


class AdminStateSource(enum.StrEnum):
    """Who set the admin state: an administrator, or the guest powering itself off."""

    ADMIN = "admin"
    USER = "user"


class DiskMode(enum.StrEnum):
    """Access mode of a disk."""

    RW = "rw"
    RO = "ro"


class Disk(BaseModel):
    """One instance disk.

    ``logical_id`` is the storage driver's name for the volume: for ``file`` disks, the
    absolute path of the image file on the primary node.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    uuid: str = Field(default_factory=new_uuid)
    name: str = ""
    size: int  # MiB
    mode: DiskMode = DiskMode.RW
    dev_type: str = "file"
    format: str = "raw"
    logical_id: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    #: how a hypervisor opens a file-based disk (Ganeti's ``file_driver``: ``loop``,
    #: ``blktap``, ``blktap2``); None: the default, ``loop``. Ignored for block devices.
    file_driver: str | None = None


class NIC(BaseModel):
    """One instance network interface."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    uuid: str = Field(default_factory=new_uuid)
    name: str = ""
    mac: str
    ip: str | None = None
    network: str | None = None
    nicparams: dict[str, Any] = Field(default_factory=dict)


class Instance(ConfigObject):
    """A virtual machine or container.

    Parameter dicts hold only the values set on this instance; the effective values are
    the cluster's filled with these (see :mod:`corral.objects.params.fill`).
    """

    name: str
    primary_node: str
    secondary_nodes: list[str] = Field(default_factory=list)
    os: str
    hypervisor: str
    hvparams: dict[str, Any] = Field(default_factory=dict)
    beparams: dict[str, Any] = Field(default_factory=dict)
    osparams: dict[str, Any] = Field(default_factory=dict)
    disk_template: str
    disks: list[Disk] = Field(default_factory=list)
    nics: list[NIC] = Field(default_factory=list)
    admin_state: AdminState = AdminState.DOWN
    admin_state_source: AdminStateSource = AdminStateSource.ADMIN
    disks_active: bool = False
    network_port: int | None = None
    #: Corral: saved to disk by ``instance suspend`` (its state file is on the primary node,
    #: at ``suspend_file``); ``unsuspend`` restores it, a stop or removal discards it.
    suspended: bool = False
    suspend_file: str = ""

    @property
    def os_name(self) -> str:
        """The OS definition's name (without ``+variant``)."""
        return self.os.split("+", 1)[0]

    @property
    def os_variant(self) -> str:
        """The OS variant (empty when none was given)."""
        return self.os.split("+", 1)[1] if "+" in self.os else ""

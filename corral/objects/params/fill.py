"""Layered parameter defaults: schema default < cluster < (group) < instance.

This is the one place where effective parameters are computed; everything that needs the
values an instance actually runs with calls these functions.
"""

from __future__ import annotations

from typing import Any

from corral.objects.cluster import Cluster
from corral.objects.instance import NIC, Disk, Instance
from corral.objects.params.hv import HV_SCHEMAS
from corral.objects.params.schemas import BEPARAMS, DISKPARAMS, NICPARAMS


def filled_hvparams(cluster: Cluster, instance: Instance) -> dict[str, Any]:
    """The hypervisor parameters ``instance`` runs with."""
    schema = HV_SCHEMAS[instance.hypervisor]
    return schema.fill(cluster.hvparams.get(instance.hypervisor), instance.hvparams)


def filled_beparams(cluster: Cluster, instance: Instance) -> dict[str, Any]:
    """The backend parameters (memory, vCPUs, ...) ``instance`` runs with."""
    return BEPARAMS.fill(cluster.beparams, instance.beparams)


def filled_nicparams(cluster: Cluster, nic: NIC) -> dict[str, Any]:
    """The parameters of one NIC."""
    return NICPARAMS.fill(cluster.nicparams, nic.nicparams)


def filled_diskparams(cluster: Cluster, template: str, disk: Disk | None = None) -> dict[str, Any]:
    """The parameters of a disk template (and of one disk, if given)."""
    schema = DISKPARAMS[template]
    return schema.fill(cluster.diskparams.get(template), disk.params if disk else None)

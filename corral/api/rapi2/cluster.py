"""RAPI v2 cluster resources.

``/``, ``/2``, ``/version``, ``/2/info``, ``/2/features``, ``/2/os``.
"""

from __future__ import annotations

import platform
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

import corral
from corral.api.fields import os_names
from corral.api.rapi2.common import READ, ok, service_of
from corral.objects.cluster import Cluster

router = APIRouter()

#: RAPI version (Ganeti ``constants.RAPI_VERSION``).
RAPI_VERSION = 2
#: OS API version of the OS definitions Corral runs (Ganeti 2.x/3.x: 20).
OS_API_VERSION = 20
#: Features advertised on ``/2/features``; the RAPI client checks them before using the
#: version-1 request bodies of create, reinstall, node migrate and node evacuate.
#: Only features whose resources exist: node-migrate-reqv1 and node-evac-res1 come with the
#: node migrate/evacuate resources (multi-node clusters).
FEATURES = ["instance-create-reqv1", "instance-reinstall-reqv1"]


def cluster_info(cluster: Cluster) -> dict[str, Any]:
    """The ``/2/info`` dict (Ganeti ``QueryClusterInfo`` keys Corral can fill)."""
    filled = cluster.to_info()
    return {
        "name": cluster.name,
        "master": cluster.master_node,
        "software_version": corral.__version__,
        "protocol_version": corral.PROTOCOL_VERSION,
        "os_api_version": OS_API_VERSION,
        "export_version": 0,
        "vcs_version": f"corral-{corral.__version__}",
        "architecture": [platform.architecture()[0], platform.machine()],
        "default_hypervisor": cluster.default_hypervisor,
        "enabled_hypervisors": list(cluster.enabled_hypervisors),
        "hvparams": filled["hvparams"],
        "os_hvp": {},
        "beparams": filled["beparams"],
        "osparams": dict(cluster.osparams),
        "nicparams": filled["nicparams"],
        "diskparams": filled["diskparams"],
        "ndparams": {},
        "ipolicy": {},
        "candidate_pool_size": 10,
        "master_netdev": cluster.master_netdev,
        "master_netmask": cluster.master_netmask,
        "master_ip": cluster.master_ip,
        "use_external_mip_script": cluster.use_external_mip_script,
        "volume_group_name": None,
        "file_storage_dir": cluster.file_storage_dir,
        "shared_file_storage_dir": "",
        "enabled_disk_templates": list(cluster.enabled_disk_templates),
        "maintain_node_health": False,
        "uid_pool": [],
        "default_iallocator": "",
        "default_iallocator_params": {},
        "reserved_lvs": [],
        "primary_ip_version": 4,
        "prealloc_wipe_disks": False,
        "hidden_os": [],
        "blacklisted_os": [],
        "mac_prefix": cluster.mac_prefix,
        "rapi_port": cluster.rapi_port,
        "noded_port": cluster.noded_port,
        "store": cluster.store,
        "hooks_enabled": cluster.hooks_enabled,
        "ctime": cluster.ctime,
        "mtime": cluster.mtime,
        "uuid": cluster.uuid,
        "tags": list(cluster.tags),
        "serial_no": cluster.serial_no,
    }


@router.get("/", dependencies=[READ])
async def root() -> JSONResponse:
    """Supported for legacy reasons (Ganeti answers ``null``)."""
    return ok(None)


@router.get("/2", dependencies=[READ])
async def root_v2() -> JSONResponse:
    """The ``/2`` resource (``null``, as Ganeti)."""
    return ok(None)


@router.get("/version", dependencies=[READ])
async def version() -> JSONResponse:
    """The remote API version: ``2``."""
    return ok(RAPI_VERSION)


@router.get("/2/features", dependencies=[READ])
async def features() -> JSONResponse:
    """Optional features this server implements."""
    return ok(list(FEATURES))


@router.get("/2/info", dependencies=[READ])
async def info(request: Request) -> JSONResponse:
    """Cluster information; ``master`` is the current leader master."""
    service = service_of(request)
    info = cluster_info(service.cluster())
    info["master"] = service.leader() or info["master"]
    return ok(info)


@router.get("/2/os", dependencies=[READ])
async def oses(request: Request) -> JSONResponse:
    """Names of the valid OS definitions (``name`` or ``name+variant``)."""
    return ok(os_names(await service_of(request).os_diagnose()))

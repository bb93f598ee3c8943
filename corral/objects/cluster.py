"""The cluster object: cluster-wide settings and parameter defaults."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from corral.objects.base import ConfigObject
from corral.objects.params.hv import HV_SCHEMAS
from corral.objects.params.schemas import BEPARAMS, DISKPARAMS, NICPARAMS


class Cluster(ConfigObject):
    """Cluster-wide configuration.

    Parameter dicts hold *cluster-level values*; missing keys fall back to the schema
    defaults (see :func:`corral.objects.params.fill.filled_hvparams`).
    """

    name: str
    master_node: str
    enabled_hypervisors: list[str]
    hvparams: dict[str, dict[str, Any]] = Field(default_factory=dict)
    beparams: dict[str, Any] = Field(default_factory=dict)
    nicparams: dict[str, Any] = Field(default_factory=dict)
    diskparams: dict[str, dict[str, Any]] = Field(default_factory=dict)
    osparams: dict[str, dict[str, Any]] = Field(default_factory=dict)
    enabled_disk_templates: list[str] = Field(default_factory=lambda: ["file", "diskless"])
    file_storage_dir: str = "/srv/corral/disks"
    #: Where ``sharedfile`` disks go: the same path on every node (NFS); "" = not set up.
    shared_file_storage_dir: str = ""
    mac_prefix: str = "aa:00:00"
    rapi_port: int = 5080
    noded_port: int = 1811
    store: str = "sqlite"
    hooks_enabled: bool = True
    #: The master IP (Ganeti's names): kept on the leader master's ``master_netdev``; "" = none.
    master_ip: str = ""
    master_netdev: str = ""
    master_netmask: int = 32
    #: Run ``<root>/etc/ganeti/scripts/master-ip-setup`` instead of ``ip address add/del``.
    use_external_mip_script: bool = False

    @property
    def default_hypervisor(self) -> str:
        """The first enabled hypervisor (used when an instance does not name one)."""
        return self.enabled_hypervisors[0]

    def to_info(self) -> dict[str, Any]:
        """Filled parameter view for ``/2/info`` and ``cluster info``."""
        return {
            "hvparams": {
                hv: HV_SCHEMAS[hv].fill(self.hvparams.get(hv)) for hv in self.enabled_hypervisors
            },
            "beparams": {"default": BEPARAMS.fill(self.beparams)},
            "nicparams": {"default": NICPARAMS.fill(self.nicparams)},
            "diskparams": {
                tpl: schema.fill(self.diskparams.get(tpl)) for tpl, schema in DISKPARAMS.items()
            },
        }

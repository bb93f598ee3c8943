"""The node group object: a set of nodes sharing allocation policy and node parameters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from corral.objects.base import ConfigObject

#: The group every cluster has; nodes added without ``--group`` go there.
DEFAULT_GROUP = "default"


class Group(ConfigObject):
    """A node group (Ganeti's ``NodeGroup``)."""

    name: str
    alloc_policy: Literal["preferred", "last_resort", "unallocable"] = "preferred"
    ndparams: dict[str, Any] = Field(default_factory=dict)
    diskparams: dict[str, Any] = Field(default_factory=dict)
    ipolicy: dict[str, Any] = Field(default_factory=dict)

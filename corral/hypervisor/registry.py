"""The hypervisor driver registry: name -> driver class, and one driver object per node root.

Drivers have no global state (DESIGN.md): everything lives under the run directory derived
from the node's :class:`~corral.common.paths.Paths`, so several node daemons with their own
roots on one machine each get their own driver objects.
"""

from __future__ import annotations

import threading

from corral.common.errors import ErrorKind, HypervisorError
from corral.common.paths import Paths
from corral.hypervisor.base import Hypervisor
from corral.hypervisor.fake import FakeHypervisor
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.lxc.driver import Lxc
from corral.hypervisor.xen.driver import XenHvm, XenPvm

#: Every hypervisor Corral knows, by the name used in hvparams and ``enabled_hypervisors``.
HYPERVISORS: dict[str, type[Hypervisor]] = {
    Kvm.NAME: Kvm,
    Lxc.NAME: Lxc,
    XenPvm.NAME: XenPvm,
    XenHvm.NAME: XenHvm,
    FakeHypervisor.NAME: FakeHypervisor,
}

_cache: dict[tuple[str, str], Hypervisor] = {}
_cache_lock = threading.Lock()


def get_hypervisor(name: str, paths: Paths) -> Hypervisor:
    """The driver ``name`` for the node laid out by ``paths`` (one object per name and root).

    The driver's run directory is ``paths.hv_run_dir(name)``; drivers that also need other
    directories (the KVM driver's log directory) get them through a ``from_paths`` class
    method.

    Raises:
        HypervisorError: kind INVALID for an unknown name (the message lists the known ones).
    """
    cls = HYPERVISORS.get(name)
    if cls is None:
        raise HypervisorError(
            f"unknown hypervisor {name!r} (known: {', '.join(sorted(HYPERVISORS))})",
            kind=ErrorKind.INVALID,
            hypervisor=name,
        )
    key = (name, paths.root)
    with _cache_lock:
        driver = _cache.get(key)
        if driver is None:
            factory = getattr(cls, "from_paths", None)
            driver = factory(paths) if factory is not None else cls(paths.hv_run_dir(name))
            _cache[key] = driver
        return driver

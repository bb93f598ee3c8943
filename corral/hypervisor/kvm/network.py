"""Host side of KVM NICs: the tap devices QEMU attaches to.

The driver creates a persistent tap per NIC that has a network backend before QEMU starts
(``ip tuntap add``), attaches it to the NIC's bridge in bridged mode, brings it up, and
removes it after QEMU exited. QEMU opens it by name (``-netdev tap,ifname=...,script=no``),
so no helper script runs and nothing needs QEMU to be privileged for networking.

Routed mode only creates the tap and brings it up; the routes towards the guest's IP are the
administrator's (or a later issue's) business, as Ganeti's ``kvm-ifup`` did it.
"""

from __future__ import annotations

import logging
import os

from corral.common.errors import CommandError, ErrorKind, HypervisorError
from corral.common.runcmd import Runner
from corral.hypervisor.kvm.runtime import NicRuntime

log = logging.getLogger(__name__)

#: Where the kernel shows network interfaces; an argument so tests can fake it.
SYS_CLASS_NET = "/sys/class/net"

IP_TIMEOUT = 10.0


def bridge_exists(name: str, *, sys_class_net: str = SYS_CLASS_NET) -> bool:
    """Whether ``name`` is a Linux bridge on this host."""
    return os.path.isdir(os.path.join(sys_class_net, name, "bridge"))


def interface_exists(name: str, *, sys_class_net: str = SYS_CLASS_NET) -> bool:
    """Whether a network interface called ``name`` exists."""
    return os.path.exists(os.path.join(sys_class_net, name))


def check_nic_links(nics: list[NicRuntime], *, sys_class_net: str = SYS_CLASS_NET) -> None:
    """Check that every bridged NIC's bridge exists and no tap name is taken.

    Raises:
        HypervisorError: kind ENVIRONMENT, naming the NIC and the bridge or tap.
    """
    for nic in nics:
        if not nic.tap:
            continue
        if nic.mode == "bridged" and not bridge_exists(nic.link, sys_class_net=sys_class_net):
            raise HypervisorError(
                f"NIC {nic.index}: bridge {nic.link!r} does not exist on this node",
                kind=ErrorKind.ENVIRONMENT,
                nic=nic.index,
                link=nic.link,
            )
        if interface_exists(nic.tap, sys_class_net=sys_class_net):
            raise HypervisorError(
                f"NIC {nic.index}: tap device {nic.tap!r} already exists "
                "(left over from an earlier start? stop the instance to clean it up)",
                kind=ErrorKind.WRONG_STATE,
                nic=nic.index,
                tap=nic.tap,
            )


def create_tap(runner: Runner, nic: NicRuntime) -> None:
    """Create ``nic.tap``, attach it to its bridge (bridged mode) and bring it up.

    On failure the tap is removed again before the error is raised.

    Raises:
        HypervisorError: an ``ip`` command failed (its stderr is in the message).
    """
    try:
        runner(["ip", "tuntap", "add", "dev", nic.tap, "mode", "tap"], timeout=IP_TIMEOUT)
    except CommandError as exc:
        raise HypervisorError(
            f"NIC {nic.index}: cannot create tap {nic.tap}: {exc}", tap=nic.tap
        ) from exc
    try:
        if nic.mode == "bridged":
            runner(["ip", "link", "set", "dev", nic.tap, "master", nic.link], timeout=IP_TIMEOUT)
        runner(["ip", "link", "set", "dev", nic.tap, "up"], timeout=IP_TIMEOUT)
    except CommandError as exc:
        remove_tap(runner, nic.tap)
        raise HypervisorError(
            f"NIC {nic.index}: cannot connect tap {nic.tap} to {nic.link!r}: {exc}",
            tap=nic.tap,
            link=nic.link,
        ) from exc


def remove_tap(runner: Runner, tap: str) -> None:
    """Delete a tap device; a tap that is already gone is fine. Never raises."""
    try:
        runner(["ip", "tuntap", "del", "dev", tap, "mode", "tap"], timeout=IP_TIMEOUT, check=False)
    except CommandError:
        log.warning("cannot remove tap %s", tap, exc_info=True)

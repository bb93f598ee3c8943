"""Choosing QEMU's accelerator: KVM when it can run ordinary guests, TCG otherwise.

``/dev/kvm`` existing is not enough. On the project's test machines it is provided by a
nested-virtualization module (``kvm_pvm``) that only runs specially built guest kernels: an
ordinary kernel hangs under ``-accel kvm``. The reliable sign, measured there (TESTING.md), is
that ``/proc/cpuinfo`` shows neither ``vmx`` (Intel VT-x) nor ``svm`` (AMD-V) although
``/dev/kvm`` opens. So KVM counts as usable only when both hold:

* ``/dev/kvm`` opens for reading and writing, and
* the CPU flags in ``/proc/cpuinfo`` include ``vmx`` or ``svm``.

The paths are arguments so tests can point them at fake files.
"""

from __future__ import annotations

import dataclasses
import os

from corral.common.errors import ErrorKind, HypervisorError

#: The KVM device node.
KVM_DEVICE = "/dev/kvm"
#: Where the CPU flags are read.
CPUINFO = "/proc/cpuinfo"

ACCEL_CHOICES = ("auto", "kvm", "tcg")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KvmProbe:
    """What was found about KVM on this host."""

    usable: bool
    reason: str  # why KVM is (not) usable, in words for logs and ``verify``


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AccelChoice:
    """The accelerator chosen for one start, and why."""

    accel: str  # "kvm" | "tcg"
    requested: str  # "auto" | "kvm" | "tcg"
    reason: str


def _cpu_flags(cpuinfo: str) -> set[str]:
    """The union of the ``flags`` lines of a ``/proc/cpuinfo`` text."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags.update(value.split())
    return flags


def probe_kvm(*, kvm_device: str = KVM_DEVICE, cpuinfo: str = CPUINFO) -> KvmProbe:
    """Tell whether KVM can run ordinary guests on this host.

    Never raises: every problem becomes ``usable=False`` with the reason.
    """
    try:
        fd = os.open(kvm_device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmProbe(usable=False, reason=f"{kvm_device} cannot be opened: {exc.strerror}")
    os.close(fd)
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        return KvmProbe(usable=False, reason=f"{cpuinfo} cannot be read: {exc.strerror}")
    flags = _cpu_flags(text)
    if "vmx" in flags or "svm" in flags:
        virt = "vmx" if "vmx" in flags else "svm"
        return KvmProbe(usable=True, reason=f"{kvm_device} opens and the CPU has {virt}")
    return KvmProbe(
        usable=False,
        reason=(
            f"{kvm_device} opens but {cpuinfo} shows neither vmx nor svm "
            "(a nested or paravirtual KVM module that cannot run ordinary guests)"
        ),
    )


def choose_accel(requested: str, probe: KvmProbe) -> AccelChoice:
    """Resolve the ``accel`` hvparam against what the host offers.

    Args:
        requested: ``auto``, ``kvm`` or ``tcg``.
        probe: the result of :func:`probe_kvm`.

    Raises:
        HypervisorError: kind INVALID for an unknown value; kind ENVIRONMENT when ``kvm`` was
            asked for explicitly but is not usable here (the message says why).
    """
    if requested == "tcg":
        return AccelChoice(accel="tcg", requested=requested, reason="tcg requested")
    if requested == "kvm":
        if not probe.usable:
            raise HypervisorError(
                f"accel=kvm was requested but KVM is not usable on this node: {probe.reason}; "
                "use accel=auto or accel=tcg",
                kind=ErrorKind.ENVIRONMENT,
                param="accel",
            )
        return AccelChoice(accel="kvm", requested=requested, reason=probe.reason)
    if requested == "auto":
        accel = "kvm" if probe.usable else "tcg"
        return AccelChoice(accel=accel, requested=requested, reason=probe.reason)
    raise HypervisorError(
        f"accel must be one of {', '.join(ACCEL_CHOICES)}, got {requested!r}",
        kind=ErrorKind.INVALID,
        param="accel",
    )

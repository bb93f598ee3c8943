"""CPU pinning of KVM guests: the ``cpu_mask`` hypervisor parameter (Ganeti's syntax).

Semantics (as Ganeti's KVM driver, also in docs/hypervisors/kvm.md):

* one mask (``"0-2,4"``): every thread of the QEMU process (vCPUs, I/O, main loop) is pinned
  to those CPUs with ``sched_setaffinity``; threads QEMU creates later inherit it;
* one mask per vCPU (``"0:1"``, ``"0-2,4:all:1,3"``): each vCPU thread (thread ids from QMP
  ``query-cpus-fast``) gets its own mask; the other threads are left alone. Where several
  vCPUs share a thread (single-threaded TCG) the thread gets the union of their masks;
* ``all`` means every CPU of the node: at start nothing is done, at a runtime change
  (:meth:`KvmPinning.pin_cpus`) it undoes an earlier pinning.

The mask is applied at every launch (start, soft reboot, migration destination) from the
runtime's hvparams, and changed at runtime by :meth:`KvmPinning.pin_cpus`, which also records
the new mask in the runtime so a later restart keeps it.

Checks: the syntax on the master (``objects/params/cpumask.py``), the number of masks against
the vCPUs on the master and here, and that every CPU exists on this node here
(:meth:`KvmPinning._cpu_mask_problem`, used by ``validate_params``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.kvm.core import KvmCore
from corral.hypervisor.kvm.monitor import CpuInfo, QmpSession
from corral.hypervisor.kvm.process import QemuProcess
from corral.hypervisor.kvm.runtime import InstanceLayout, KvmRuntime, save_runtime
from corral.objects.params.cpumask import (
    CPU_MASK_ALL,
    cpu_mask_problem,
    node_cpu_problem,
    parse_cpu_mask,
)

log = logging.getLogger(__name__)


def affinity_plan(
    masks: list[frozenset[int] | None],
    *,
    cpu_count: int,
    process_threads: Iterable[int],
    vcpu_threads: Mapping[int, int],
) -> dict[int, frozenset[int]]:
    """Thread id -> the CPUs it may run on (pure; see the module docstring).

    Args:
        masks: :func:`parse_cpu_mask` of the mask (None = all CPUs).
        cpu_count: CPUs of the node (``all`` = ``0 .. cpu_count-1``).
        process_threads: every thread of the QEMU process (used for a single mask).
        vcpu_threads: vCPU index -> thread id (used for per-vCPU masks).
    """
    every = frozenset(range(cpu_count))
    if len(masks) == 1:
        only = masks[0]
        return dict.fromkeys(process_threads, only if only is not None else every)
    plan: dict[int, frozenset[int]] = {}
    for index, thread in sorted(vcpu_threads.items()):
        if index >= len(masks):
            continue
        mask = masks[index]
        plan[thread] = plan.get(thread, frozenset()) | (mask if mask is not None else every)
    return plan


class KvmPinning(KvmCore):
    """The CPU pinning feature of the KVM driver."""

    def _node_cpu_count(self) -> int:
        """CPUs of this node (tests may override)."""
        return os.cpu_count() or 1

    def _cpu_mask_problem(self, hv: Mapping[str, Any]) -> str | None:
        """Why the filled hvparams' ``cpu_mask`` cannot work on this node (None: it can)."""
        return node_cpu_problem(str(hv.get("cpu_mask", CPU_MASK_ALL)), self._node_cpu_count())

    def _threads(self, pid: int) -> list[int]:
        try:
            return sorted(int(t) for t in os.listdir(os.path.join(self.proc, str(pid), "task")))
        except OSError as exc:
            raise HypervisorError(
                f"cannot list the threads of QEMU (pid {pid}): {exc.strerror}", pid=pid
            ) from exc

    def _apply_mask(self, name: str, proc: QemuProcess, mask: str, vcpus: int) -> int:
        """Pin the guest's threads; return how many threads were pinned.

        Raises:
            HypervisorError: kind INVALID (param ``cpu_mask``) for a mask that does not fit
                the vCPUs or the node; the affinity cannot be set (QMP or the kernel refused).
        """
        problem = cpu_mask_problem(mask, vcpus) or node_cpu_problem(mask, self._node_cpu_count())
        if problem:
            raise HypervisorError(
                f"cannot pin {name}: cpu_mask {mask!r}: {problem}",
                kind=ErrorKind.INVALID,
                param="cpu_mask",
            )
        masks = parse_cpu_mask(mask)
        assert proc.pid is not None
        vcpu_threads: dict[int, int] = {}
        if len(masks) > 1:
            vcpu_threads = {c.cpu_index: c.thread_id for c in proc.monitor.call(_vcpus)}
        plan = affinity_plan(
            masks,
            cpu_count=self._node_cpu_count(),
            process_threads=self._threads(proc.pid) if len(masks) == 1 else (),
            vcpu_threads=vcpu_threads,
        )
        pinned = 0
        for thread, cpus in plan.items():
            try:
                os.sched_setaffinity(thread, cpus)
            except ProcessLookupError:
                continue  # a short-lived QEMU worker thread ended meanwhile
            except OSError as exc:
                raise HypervisorError(
                    f"cannot pin thread {thread} of {name} to CPUs {sorted(cpus)}: {exc.strerror}",
                    param="cpu_mask",
                ) from exc
            pinned += 1
        log.info("%s: cpu_mask %r applied to %d thread(s)", name, mask, pinned)
        return pinned

    def pin_cpus(self, name: str, cpu_mask: str) -> None:
        """Pin a running guest (Ganeti mask syntax); ``all`` removes the pinning.

        The new mask is recorded in the runtime, so a soft reboot keeps it.

        Raises:
            HypervisorError: kind WRONG_STATE when the instance does not run; kind INVALID
                (``fields["param"] == "cpu_mask"``) for a bad mask, a mask count that is
                neither 1 nor the number of vCPUs, or a CPU the node does not have; the
                affinity could not be set.
        """
        layout = self._layout(name)
        with self._lock(layout):
            live = self._live(name)
            if live is None or live[1] is None:
                raise HypervisorError(
                    f"cannot pin {name}: the instance is not running", kind=ErrorKind.WRONG_STATE
                )
            layout, runtime, proc = live
            assert runtime is not None
            try:
                parse_cpu_mask(cpu_mask)
            except ValueError as exc:
                raise HypervisorError(
                    f"cannot pin {name}: cpu_mask {cpu_mask!r}: {exc}",
                    kind=ErrorKind.INVALID,
                    param="cpu_mask",
                ) from exc
            self._apply_mask(name, proc, cpu_mask, runtime.spec.vcpus)
            runtime.hvparams["cpu_mask"] = cpu_mask
            save_runtime(layout, runtime)

    def _after_launch(
        self, layout: InstanceLayout, runtime: KvmRuntime, proc: QemuProcess, *, incoming: bool
    ) -> None:
        """Apply the runtime's ``cpu_mask`` to a freshly launched QEMU (``all``: nothing).

        Raises:
            HypervisorError: as :meth:`_apply_mask` (the launch is then rolled back).
        """
        super()._after_launch(layout, runtime, proc, incoming=incoming)
        mask = str(runtime.hvparams.get("cpu_mask", CPU_MASK_ALL))
        if mask.strip() != CPU_MASK_ALL:
            self._apply_mask(runtime.name, proc, mask, runtime.spec.vcpus)


async def _vcpus(q: QmpSession) -> list[CpuInfo]:
    return await q.query_cpus_fast()

"""Node facts: memory, CPUs, boot id, storage space and the hypervisors' views.

The host facts come from ``/proc`` (a different directory can be given for tests). A hypervisor
that cannot report (not installed, broken) does not fail the whole call: it is reported with
zero resources and ``details["error"]``, so the master still learns about the node and about
the hypervisors that work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from corral.common.errors import CorralError, ErrorKind
from corral.hypervisor.base import HvNodeInfo, Hypervisor
from corral.rpc.calls import NodeInfoResponse, StorageSpace
from corral.storage.base import StorageDriver

log = logging.getLogger(__name__)

MiB = 1024 * 1024


def parse_meminfo(text: str) -> tuple[int, int]:
    """Total and available memory in MiB from ``/proc/meminfo`` text (pure).

    Available is ``MemAvailable`` (kernel 3.14+), else ``MemFree + Buffers + Cached``.

    Raises:
        CorralError: (ENVIRONMENT) ``MemTotal`` is missing or a value is not a number.
    """
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            kib = int(parts[0])
        except ValueError as exc:
            raise CorralError(
                f"cannot parse /proc/meminfo line {line!r}", kind=ErrorKind.ENVIRONMENT
            ) from exc
        values[key.strip()] = kib
    if "MemTotal" not in values:
        raise CorralError("/proc/meminfo has no MemTotal", kind=ErrorKind.ENVIRONMENT)
    if "MemAvailable" in values:
        free = values["MemAvailable"]
    else:
        free = values.get("MemFree", 0) + values.get("Buffers", 0) + values.get("Cached", 0)
    return values["MemTotal"] // 1024, free // 1024


def read_host_memory(proc_dir: str = "/proc") -> tuple[int, int]:
    """Total and available host memory in MiB.

    Raises:
        CorralError: (ENVIRONMENT) /proc/meminfo cannot be read or parsed.
    """
    return parse_meminfo(_read(os.path.join(proc_dir, "meminfo")))


def read_boot_id(proc_dir: str = "/proc") -> str:
    """The kernel's boot id (changes at every boot; the master detects reboots with it).

    Raises:
        CorralError: (ENVIRONMENT) the file cannot be read or is empty.
    """
    boot_id = _read(os.path.join(proc_dir, "sys/kernel/random/boot_id")).strip()
    if not boot_id:
        raise CorralError("the kernel's boot_id is empty", kind=ErrorKind.ENVIRONMENT)
    return boot_id


def cpu_count() -> int:
    """Number of CPUs of the host (at least 1)."""
    return os.cpu_count() or 1


def storage_space(driver: StorageDriver, locations: Sequence[str]) -> list[StorageSpace]:
    """Total and free MiB of every storage location.

    Raises:
        StorageError: a location cannot be measured.
    """
    result = []
    for location in locations:
        total, free = driver.space(location)
        result.append(StorageSpace(location=location, total=total, free=free))
    return result


def hypervisor_infos(
    names: Sequence[str], get_hv: Callable[[str], Hypervisor]
) -> dict[str, HvNodeInfo]:
    """Each hypervisor's view of the node; failures are reported, not raised."""
    result: dict[str, HvNodeInfo] = {}
    for name in names:
        try:
            result[name] = get_hv(name).node_info()
        except CorralError as exc:
            log.warning("hypervisor %s cannot report node info: %s", name, exc)
            result[name] = unavailable_hv_info(name, str(exc))
        except Exception as exc:  # a broken driver must not hide the others
            log.exception("hypervisor %s failed while reporting node info", name)
            result[name] = unavailable_hv_info(name, f"{type(exc).__name__}: {exc}")
    return result


def unavailable_hv_info(name: str, error: str) -> HvNodeInfo:
    """The entry of a hypervisor that could not report: no resources, and why."""
    return HvNodeInfo(
        hypervisor=name,
        memory_total=0,
        memory_free=0,
        cpu_total=0,
        details={"available": False, "error": error},
    )


def node_info(
    *,
    node_name: str,
    hypervisors: Sequence[str],
    storage_dirs: Sequence[str],
    get_hv: Callable[[str], Hypervisor],
    file_storage: StorageDriver,
    proc_dir: str = "/proc",
) -> NodeInfoResponse:
    """Everything ``node_info`` answers.

    Raises:
        CorralError: the host facts (memory, boot id) cannot be read, or a storage location
            cannot be measured. Hypervisor failures are reported in their entry instead.
    """
    total, free = read_host_memory(proc_dir)
    return NodeInfoResponse(
        name=node_name,
        boot_id=read_boot_id(proc_dir),
        memory_total=total,
        memory_free=free,
        cpu_total=cpu_count(),
        storage=storage_space(file_storage, storage_dirs),
        hypervisors=hypervisor_infos(hypervisors, get_hv),
    )


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise CorralError(
            f"cannot read {path}: {exc.strerror or exc}", kind=ErrorKind.ENVIRONMENT
        ) from exc

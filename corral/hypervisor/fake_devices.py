"""Hotplug and CPU pinning for the ``fake`` hypervisor (control-plane tests and benchmarks).

The devices of a fake instance live in its JSON file (``disk_devices``, ``nic_devices``,
``cpu_mask``) and change the way a real driver's would, with the same contracts: a stopped
instance is refused with kind WRONG_STATE, an unknown device with NOT_FOUND, a device attached
twice with EXISTS, a disk whose image file does not exist with ENVIRONMENT (as QEMU refuses
it), a bad CPU mask with INVALID. Indices follow the master's lists (removing device 1 moves
device 2 to index 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import AttachedDisk, NicSpec
from corral.objects.params.cpumask import cpu_mask_problem, node_cpu_problem


def nic_record(nic: NicSpec) -> dict[str, Any]:
    """How the fake instance file records a NIC."""
    return {
        "index": nic.index,
        "uuid": nic.uuid,
        "mac": nic.mac,
        "mode": nic.mode,
        "link": nic.link,
        "up": True,
    }


def _find(items: list[dict[str, Any]], index: int, uuid: str, what: str, name: str) -> int:
    for pos, item in enumerate(items):
        if (uuid and item.get("uuid") == uuid) or (not uuid and item.get("index") == index):
            return pos
    raise HypervisorError(
        f"instance {name} has no {what} {index}{f' ({uuid})' if uuid else ''} attached",
        kind=ErrorKind.NOT_FOUND,
    )


def _insert(items: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    out = [{**i, "index": i["index"] + 1} if i["index"] >= new["index"] else i for i in items]
    return sorted([*out, new], key=lambda i: int(i["index"]))


def _remove(items: list[dict[str, Any]], pos: int) -> list[dict[str, Any]]:
    gone = items[pos]
    return [
        {**i, "index": i["index"] - 1} if i["index"] > gone["index"] else i
        for n, i in enumerate(items)
        if n != pos
    ]


class FakeDevices:
    """The device methods of :class:`~corral.hypervisor.fake.FakeHypervisor`."""

    def _require(self, name: str) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover - provided by FakeHypervisor

    def _write(self, name: str, data: Mapping[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover - provided by FakeHypervisor

    def _running(self, name: str, what: str) -> dict[str, Any]:
        try:
            return self._require(name)
        except HypervisorError as exc:
            raise HypervisorError(
                f"cannot {what}: instance {name} is not running", kind=ErrorKind.WRONG_STATE
            ) from exc

    def hotplug_add_disk(self, name: str, disk: AttachedDisk) -> None:
        """Record a hot-added disk.

        Raises:
            HypervisorError: WRONG_STATE (not running), EXISTS (attached already),
                ENVIRONMENT (the image file does not exist).
        """
        data = self._running(name, f"hot-add disk {disk.index}")
        disks = list(data.get("disk_devices", []))
        if any(d.get("uuid") == disk.uuid for d in disks):
            raise HypervisorError(f"disk {disk.uuid} is attached already", kind=ErrorKind.EXISTS)
        if not os.path.exists(disk.path):
            raise HypervisorError(
                f"cannot hot-add disk {disk.index} to {name}: {disk.path} does not exist",
                kind=ErrorKind.ENVIRONMENT,
            )
        data["disk_devices"] = _insert(
            disks, {"index": disk.index, "uuid": disk.uuid, "path": disk.path}
        )
        data["disks"] = [d["path"] for d in data["disk_devices"]]
        self._write(name, data)

    def hotplug_remove_disk(self, name: str, index: int, uuid: str) -> None:
        """Forget a disk.

        Raises:
            HypervisorError: WRONG_STATE (not running), NOT_FOUND (no such disk).
        """
        data = self._running(name, f"hot-remove disk {index}")
        disks = list(data.get("disk_devices", []))
        data["disk_devices"] = _remove(disks, _find(disks, index, uuid, "disk", name))
        data["disks"] = [d["path"] for d in data["disk_devices"]]
        self._write(name, data)

    def hotplug_add_nic(self, name: str, nic: NicSpec) -> None:
        """Record a hot-added NIC.

        Raises:
            HypervisorError: WRONG_STATE (not running), EXISTS (attached already).
        """
        data = self._running(name, f"hot-add NIC {nic.index}")
        nics = list(data.get("nic_devices", []))
        if any(n.get("uuid") == nic.uuid for n in nics):
            raise HypervisorError(f"NIC {nic.uuid} is attached already", kind=ErrorKind.EXISTS)
        data["nic_devices"] = _insert(nics, nic_record(nic))
        self._write(name, data)

    def hotplug_remove_nic(self, name: str, index: int, uuid: str) -> None:
        """Forget a NIC.

        Raises:
            HypervisorError: WRONG_STATE (not running), NOT_FOUND (no such NIC).
        """
        data = self._running(name, f"hot-remove NIC {index}")
        nics = list(data.get("nic_devices", []))
        data["nic_devices"] = _remove(nics, _find(nics, index, uuid, "NIC", name))
        self._write(name, data)

    def hotplug_modify_nic(self, name: str, nic: NicSpec) -> None:
        """Record a NIC's new mode and link.

        Raises:
            HypervisorError: WRONG_STATE (not running), NOT_FOUND (no such NIC).
        """
        data = self._running(name, f"modify NIC {nic.index}")
        nics = list(data.get("nic_devices", []))
        pos = _find(nics, nic.index, nic.uuid, "NIC", name)
        nics[pos] = {**nics[pos], "mode": nic.mode, "link": nic.link}
        data["nic_devices"] = nics
        self._write(name, data)

    def set_nic_link(self, name: str, index: int, uuid: str, up: bool) -> None:
        """Record a NIC's carrier.

        Raises:
            HypervisorError: WRONG_STATE (not running), NOT_FOUND (no such NIC).
        """
        data = self._running(name, f"set the link of NIC {index}")
        nics = list(data.get("nic_devices", []))
        pos = _find(nics, index, uuid, "NIC", name)
        nics[pos] = {**nics[pos], "up": bool(up)}
        data["nic_devices"] = nics
        self._write(name, data)

    def pin_cpus(self, name: str, cpu_mask: str) -> None:
        """Record a CPU mask after the checks a real driver makes.

        Raises:
            HypervisorError: WRONG_STATE (not running); INVALID (``param`` cpu_mask) for a
                bad mask, a mask count that fits neither 1 nor the vCPUs, a missing CPU.
        """
        data = self._running(name, "pin CPUs")
        problem = cpu_mask_problem(cpu_mask, int(data.get("vcpus", 1))) or node_cpu_problem(
            cpu_mask, os.cpu_count() or 1
        )
        if problem:
            raise HypervisorError(
                f"cannot pin {name}: cpu_mask {cpu_mask!r}: {problem}",
                kind=ErrorKind.INVALID,
                param="cpu_mask",
            )
        data["cpu_mask"] = cpu_mask
        self._write(name, data)

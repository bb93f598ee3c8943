"""FakeHotplugQmp: a FAKE QEMU monitor with a small device model, for hotplug unit tests.

It extends FakeQmpServer (a real UNIX socket, qemu.qmp on the client side) with the state a
hotplug touches — block nodes, devices with PCI slots or root ports, netdevs, passed file
descriptors, link states — and answers blockdev-add/del, getfd/closefd, device_add/del
(followed by a ``DEVICE_DELETED`` event unless the "guest" ignores unplug requests),
netdev_add/del, set_link, query-pci, query-named-block-nodes and qom-list the way QEMU 7.2
does, including its refusals (missing image, duplicate id, slot in use, node in use, ifname
given with fd). ``fail`` makes a command fail on purpose. Real QEMU runs in
tests/integration/test_kvm_hotplug.py.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from tests.unit.hypervisor.fake_qmp import FakeQmpServer


def _error(desc: str, cls: str = "GenericError") -> dict[str, Any]:
    return {"error": {"class": cls, "desc": desc}}


class FakeHotplugQmp(FakeQmpServer):
    """A FAKE monitor; ``devices`` maps id -> {"driver", "bus", "slot", "drive", "netdev"}."""

    def __init__(
        self,
        path: str,
        *,
        devices: dict[str, dict[str, Any]] | None = None,
        fail: dict[str, str] | None = None,
        ack_unplug: bool = True,
    ) -> None:
        super().__init__(path)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, dict[str, Any]] = dict(devices or {})
        self.netdevs: set[str] = set()
        self.fds: set[str] = set()  # passed with getfd, not yet used
        self.links: dict[str, bool] = {}
        self.fail = dict(fail or {})
        self.ack_unplug = ack_unplug
        self.events_sent: list[str] = []
        self._pending_event: dict[str, Any] | None = None

    # --- helpers ---------------------------------------------------------------------------

    def _slots(self) -> dict[int, str]:
        used = {0: "", 1: ""}  # host bridge, PIIX3
        for dev_id, dev in self.devices.items():
            if dev.get("bus") in (None, "", "pci.0") and dev.get("slot") is not None:
                used[int(dev["slot"])] = dev_id
        return used

    def _reply(self, msg: dict[str, Any]) -> dict[str, Any]:
        command = msg.get("execute", "")
        args: dict[str, Any] = msg.get("arguments") or {}
        if command in self.fail:
            return _error(self.fail[command])
        handler = getattr(self, "_cmd_" + command.replace("-", "_"), None)
        if handler is None:
            return _error(f"The command {command} has not been found", "CommandNotFound")
        result: dict[str, Any] = handler(args)
        return result

    def _handle(self, conn: socket.socket, msg: dict[str, Any]) -> bool:
        if msg.get("execute") == "qmp_capabilities":
            return super()._handle(conn, msg)
        self.received.append(msg)
        reply = self._reply(msg)
        self._send(conn, {**reply, "id": msg.get("id")})
        pending = self._pending_event
        if pending is not None:
            self._pending_event = None
            self._send(conn, pending)
        return True

    # --- commands --------------------------------------------------------------------------

    def _cmd_blockdev_add(self, args: dict[str, Any]) -> dict[str, Any]:
        node = args.get("node-name", "")
        if node in self.nodes:
            return _error(f"Duplicate nodes with node-name='{node}'")
        if not isinstance(args.get("read-only", False), bool):
            return _error("Invalid parameter type for 'read-only', expected: boolean")
        if args.get("driver") in ("file", "host_device"):
            filename = args.get("filename", "")
            if not os.path.exists(filename):
                return _error(f"Could not open '{filename}': No such file or directory")
        elif args.get("file") not in self.nodes:
            return _error(f"Cannot find device='' nor node-name='{args.get('file')}'")
        self.nodes[node] = dict(args)
        return {"return": {}}

    def _cmd_blockdev_del(self, args: dict[str, Any]) -> dict[str, Any]:
        node = args.get("node-name", "")
        if node not in self.nodes:
            return _error(f"Failed to find node with node-name='{node}'")
        users = [n for n, o in self.nodes.items() if o.get("file") == node]
        users += [d for d, o in self.devices.items() if o.get("drive") == node]
        if users:
            return _error(f"Node '{node}' is busy: block device is in use by {users[0]}")
        del self.nodes[node]
        return {"return": {}}

    def _cmd_device_add(self, args: dict[str, Any]) -> dict[str, Any]:
        dev_id = args.get("id", "")
        if dev_id in self.devices:
            return _error(f"Duplicate device ID '{dev_id}'")
        if args.get("drive") and args["drive"] not in self.nodes:
            return _error(f"Property 'virtio-blk-device.drive' can't find value '{args['drive']}'")
        if args.get("netdev") and args["netdev"] not in self.netdevs:
            return _error(
                f"Property 'virtio-net-device.netdev' can't find value '{args['netdev']}'"
            )
        bus = args.get("bus", "")
        slot: int | None = None
        if bus in ("", "pci.0"):
            slots = self._slots()
            slot = (
                int(str(args["addr"]), 16)
                if "addr" in args
                else min(set(range(2, 32)) - set(slots))
            )
            if slot in slots:
                return _error(f"PCI: slot {slot} function 0 not available, in use by {slots[slot]}")
        elif any(d.get("bus") == bus for d in self.devices.values()):
            return _error(f"Bus '{bus}' does not support hotplugging (port in use)")
        self.devices[dev_id] = {**args, "slot": slot}
        return {"return": {}}

    def _cmd_device_del(self, args: dict[str, Any]) -> dict[str, Any]:
        dev_id = args.get("id", "")
        if dev_id not in self.devices:
            return _error(f"Device '{dev_id}' not found", "DeviceNotFound")
        if self.ack_unplug:
            del self.devices[dev_id]
            self.events_sent.append(dev_id)
            self._pending_event = {
                "event": "DEVICE_DELETED",
                "data": {"device": dev_id, "path": f"/machine/peripheral/{dev_id}"},
                "timestamp": {"seconds": 1, "microseconds": 0},
            }
        return {"return": {}}

    def _cmd_getfd(self, args: dict[str, Any]) -> dict[str, Any]:
        self.fds.add(str(args.get("fdname")))
        return {"return": {}}

    def _cmd_closefd(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("fdname") not in self.fds:
            return _error(f"File descriptor named '{args.get('fdname')}' not found")
        self.fds.discard(str(args.get("fdname")))
        return {"return": {}}

    def _cmd_netdev_add(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("id") in self.netdevs:
            return _error(f"Duplicate ID '{args.get('id')}' for netdev")
        if "fd" in args:
            if {"ifname", "script", "downscript"} & set(args):
                return _error("ifname=, script=, downscript= are invalid with fd=")
            if args["fd"] not in self.fds:
                return _error(f"File descriptor named '{args['fd']}' has not been found")
            self.fds.discard(args["fd"])
        self.netdevs.add(str(args.get("id")))
        return {"return": {}}

    def _cmd_netdev_del(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("id") not in self.netdevs:
            return _error(f"Device '{args.get('id')}' not found", "DeviceNotFound")
        self.netdevs.discard(str(args.get("id")))
        return {"return": {}}

    def _cmd_set_link(self, args: dict[str, Any]) -> dict[str, Any]:
        name = args.get("name", "")
        if name not in self.devices and name not in self.netdevs:
            return _error(f"Device '{name}' not found", "DeviceNotFound")
        self.links[name] = bool(args.get("up"))
        return {"return": {}}

    def _cmd_query_pci(self, args: dict[str, Any]) -> dict[str, Any]:
        devices = [
            {"bus": 0, "slot": slot, "function": 0, "qdev_id": dev_id, "class_info": {}}
            for slot, dev_id in sorted(self._slots().items())
        ]
        return {"return": [{"bus": 0, "devices": devices}]}

    def _cmd_query_named_block_nodes(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"return": [{"node-name": n} for n in self.nodes]}

    def _cmd_qom_list(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "return": [{"name": "type", "type": "string"}]
            + [{"name": d, "type": f"child<{o.get('driver')}>"} for d, o in self.devices.items()]
        }

    def _cmd_query_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"return": {"status": "running", "running": True}}

    def _cmd_query_cpus_fast(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"return": [{"cpu-index": 0, "thread-id": os.getpid(), "qom-path": "/cpu0"}]}

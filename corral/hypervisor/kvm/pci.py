"""PCI placement of hot-plugged devices, and the argv edits that keep a runtime replayable.

Everything here is pure: it works on argv lists, option strings and ``query-pci`` results
handed in by :mod:`corral.hypervisor.kvm.hotplug`, so the rules are unit-tested without QEMU.

Placement (also in docs/hypervisors/kvm.md):

* **pc** (i440FX): every device sits on the root bus ``pci.0``. Slot 0 is the host bridge,
  slot 1 the PIIX3 (ISA, IDE, ACPI functions) and slot 2 is where QEMU puts a VGA card; those
  three are never handed out (Ganeti reserves the same three). A hot-added device goes to
  ``bus=pci.0,addr=<slot>`` with the lowest slot that is neither reserved, nor used according
  to QEMU (``query-pci``), nor recorded in the runtime.
* **q35**: devices on the root complex cannot be unplugged, so every disk and NIC sits behind
  its own ``pcie-root-port``. The command line pre-creates :data:`SPARE_PORTS` empty ports
  (ids ``hotplug0``...); a hot-added device takes the first free port (``bus=<port>``), and a
  removed device's port becomes free again. The free list is kept in the runtime.

Replay: the runtime's argv is what a soft reboot or a migration destination runs. A hot-added
device's ``-blockdev``/``-netdev``/``-device`` arguments are appended with their explicit
placement; a removed device's arguments are deleted. On pc, deleting a device would let QEMU
place the devices after it one slot lower on the next start (a migration destination must have
the *same* layout), so every remaining device with an id gets its current slot pinned
(``addr=``) when the runtime is rewritten (:func:`pin_slots`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from corral.common.errors import ErrorKind, HypervisorError

if TYPE_CHECKING:
    from corral.hypervisor.kvm.monitor import PciDevice

#: The root bus of the pc machine.
PC_BUS = "pci.0"
#: pc slots never handed out: host bridge, PIIX3, VGA.
PC_RESERVED_SLOTS = frozenset({0, 1, 2})
#: The last slot of a PCI bus.
PC_LAST_SLOT = 31
#: Empty pcie-root-ports created on q35 for hot-added devices (ids ``hotplug<N>``).
SPARE_PORTS = 8
SPARE_PORT_PREFIX = "hotplug"
#: The first chassis number of the spare ports (device ports count from 1 upwards).
SPARE_CHASSIS_BASE = 200

#: Argv options whose value is a QEMU option string this module edits.
_OBJECT_OPTIONS = ("-device", "-blockdev", "-netdev")

#: blockdev-add is strictly typed: these keys take JSON booleans ("on"/"off" on the argv).
BLOCKDEV_BOOL_KEYS = frozenset(
    {"read-only", "auto-read-only", "force-share", "cache.direct", "cache.no-flush"}
)
#: netdev_add keys taking booleans.
NETDEV_BOOL_KEYS = frozenset({"vhost", "vhostforce", "ipv4", "ipv6", "restrict"})
_TRUE = ("on", "yes", "true")
_FALSE = ("off", "no", "false")


def spare_port_ids(count: int = SPARE_PORTS) -> list[str]:
    """The ids of the spare q35 ports."""
    return [f"{SPARE_PORT_PREFIX}{i}" for i in range(count)]


def spare_port_args(count: int = SPARE_PORTS) -> list[str]:
    """The ``-device pcie-root-port`` arguments of the spare q35 ports."""
    argv: list[str] = []
    for i, port in enumerate(spare_port_ids(count)):
        argv += ["-device", f"pcie-root-port,id={port},chassis={SPARE_CHASSIS_BASE + i}"]
    return argv


# --- QEMU option strings -----------------------------------------------------------------------


def split_options(text: str) -> list[str]:
    """Split ``a=1,b=x,,y`` into ``["a=1", "b=x,y"]`` (a doubled comma is a literal comma)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1 : i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def parse_options(text: str) -> tuple[str | None, dict[str, str]]:
    """``virtio-blk-pci,id=d,drive=n`` -> ``("virtio-blk-pci", {"id": "d", "drive": "n"})``.

    The leading element without ``=`` (the device driver, the netdev type) is returned first
    (None when there is none, as for ``-blockdev``).

    Raises:
        ValueError: an element other than the first has no ``=``.
    """
    head: str | None = None
    opts: dict[str, str] = {}
    for n, part in enumerate(split_options(text)):
        key, sep, value = part.partition("=")
        if not sep:
            if n == 0:
                head = part
                continue
            raise ValueError(f"option {part!r} in {text!r} has no value")
        opts[key] = value
    return head, opts


def format_options(head: str | None, opts: Mapping[str, str]) -> str:
    """The inverse of :func:`parse_options` (commas in values doubled)."""
    parts = [head] if head is not None else []
    parts += [f"{k}={str(v).replace(',', ',,')}" for k, v in opts.items()]
    return ",".join(parts)


def _typed(key: str, value: str, bool_keys: frozenset[str]) -> object:
    if key in bool_keys:
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    return value


def blockdev_qmp(text: str) -> dict[str, object]:
    """The ``blockdev-add`` arguments of a ``-blockdev`` option string.

    Dotted keys nest (``cache.direct=on`` -> ``{"cache": {"direct": True}}``) and the keys
    of :data:`BLOCKDEV_BOOL_KEYS` become booleans: QMP, unlike the command line, is typed.

    Raises:
        ValueError: the string is not ``key=value,...``.
    """
    head, opts = parse_options(text)
    if head is not None:
        raise ValueError(f"-blockdev {text!r}: every element must be key=value")
    out: dict[str, object] = {}
    for key, value in opts.items():
        typed = _typed(key, value, BLOCKDEV_BOOL_KEYS)
        *path, last = key.split(".")
        node = out
        for part in path:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"-blockdev {text!r}: {key!r} conflicts with {part!r}")
            node = child
        node[last] = typed
    return out


def device_qmp(text: str) -> dict[str, object]:
    """The ``device_add`` arguments of a ``-device`` option string.

    ``device_add`` parses property values like the command line does, so they stay strings.

    Raises:
        ValueError: no driver, or an element without a value.
    """
    head, opts = parse_options(text)
    if not head:
        raise ValueError(f"-device {text!r} names no driver")
    return {"driver": head, **opts}


def netdev_qmp(text: str) -> dict[str, object]:
    """The ``netdev_add`` arguments of a ``-netdev`` option string.

    Raises:
        ValueError: no backend type, or an element without a value.
    """
    head, opts = parse_options(text)
    if not head:
        raise ValueError(f"-netdev {text!r} names no backend type")
    out: dict[str, object] = {"type": head}
    out.update({k: _typed(k, v, NETDEV_BOOL_KEYS) for k, v in opts.items()})
    return out


def option_id(option: str, text: str) -> str:
    """The identifier of an object option: ``id=`` (device, netdev) or ``node-name=``."""
    try:
        _, opts = parse_options(text)
    except ValueError:
        return ""
    return opts.get("node-name" if option == "-blockdev" else "id", "")


# --- argv ------------------------------------------------------------------------------------


def _objects(argv: Sequence[str]) -> Iterable[tuple[int, str, str]]:
    """(index of the option, option, value) of every -device/-blockdev/-netdev."""
    i = 0
    while i < len(argv) - 1:
        if argv[i] in _OBJECT_OPTIONS:
            yield i, argv[i], argv[i + 1]
            i += 2
        else:
            i += 1


def device_text(argv: Sequence[str], device_id: str) -> str | None:
    """The ``-device`` option string of the device with this id, or None."""
    for _, option, value in _objects(argv):
        if option == "-device" and option_id(option, value) == device_id:
            return value
    return None


def root_ports(argv: Sequence[str]) -> list[str]:
    """Ids of every pcie-root-port on the command line, in order."""
    out = []
    for _, option, value in _objects(argv):
        if option == "-device":
            try:
                head, opts = parse_options(value)
            except ValueError:
                continue
            if head == "pcie-root-port" and opts.get("id"):
                out.append(opts["id"])
    return out


def buses_in_use(argv: Sequence[str]) -> set[str]:
    """Every ``bus=`` named by a ``-device``."""
    used = set()
    for _, option, value in _objects(argv):
        if option == "-device":
            try:
                _, opts = parse_options(value)
            except ValueError:
                continue
            if opts.get("bus"):
                used.add(opts["bus"])
    return used


def free_root_ports(argv: Sequence[str]) -> list[str]:
    """The pcie-root-ports no device sits behind (spare ports and freed device ports)."""
    used = buses_in_use(argv)
    return [p for p in root_ports(argv) if p not in used]


def remove_objects(
    argv: Sequence[str],
    *,
    device_ids: Iterable[str] = (),
    node_names: Iterable[str] = (),
    netdev_ids: Iterable[str] = (),
) -> list[str]:
    """``argv`` without the ``-device``/``-blockdev``/``-netdev`` of the given ids."""
    drop = {
        "-device": set(device_ids),
        "-blockdev": set(node_names),
        "-netdev": set(netdev_ids),
    }
    skip = {i for i, option, value in _objects(argv) if option_id(option, value) in drop[option]}
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i in skip or (i - 1) in skip:
            continue
        out.append(arg)
    return out


def pin_slots(argv: Sequence[str], slots: Mapping[str, int]) -> list[str]:
    """``argv`` with ``addr=<slot>`` added to the ``-device`` of each id in ``slots``.

    Devices that already have a ``bus=`` or ``addr=`` are left alone (see the module
    docstring: a replayed argv must keep the layout).
    """
    out = list(argv)
    for i, option, value in _objects(argv):
        if option != "-device":
            continue
        try:
            head, opts = parse_options(value)
        except ValueError:
            continue
        dev_id = opts.get("id", "")
        if dev_id in slots and "bus" not in opts and "addr" not in opts:
            opts["addr"] = hex(slots[dev_id])
            out[i + 1] = format_options(head, opts)
    return out


# --- pc slots ----------------------------------------------------------------------------------


def bus0_slots(devices: Iterable[PciDevice]) -> dict[int, str]:
    """Slot -> device id (``""`` for built-in devices) of every device on the root bus."""
    slots: dict[int, str] = {}
    for dev in devices:
        if dev.bus == 0:
            slots.setdefault(dev.slot, dev.qdev_id)
    return slots


def choose_pc_slot(used: Iterable[int], *, reserved: Iterable[int] = PC_RESERVED_SLOTS) -> int:
    """The lowest slot of ``pci.0`` that is neither used nor reserved.

    Raises:
        HypervisorError: kind NO_RESOURCES when all 32 slots are taken.
    """
    taken = set(used) | set(reserved)
    for slot in range(PC_LAST_SLOT + 1):
        if slot not in taken:
            return slot
    raise HypervisorError(
        "no free PCI slot left on pci.0 (32 slots, 3 reserved); remove a device first",
        kind=ErrorKind.NO_RESOURCES,
    )

"""Parsing of ``instance modify --disk``/``--net`` values (Ganeti's syntax), pure.

Accepted forms (as ``gnt-instance modify``)::

    --disk add:size=1G[,mode=rw,name=data,format=qcow2]   add a disk at the end
    --disk 2:add,size=1G                                  add a disk as disk 2
    --disk 1:remove      --disk data:remove               remove disk 1 / the disk named data
    --disk remove                                         remove the last disk
    --disk 1:modify,mode=ro      --disk 1:mode=ro         change disk 1
    --net add[:link=br0,mode=bridged,mac=auto,ip=...]     add a NIC at the end
    --net 0:modify,link=br1      --net 0:link=br1         change NIC 0
    --net 1:remove       --net remove

The result is the opcode's ``[action, identifier, params]`` list (identifier ``-1`` = last).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.cli.parsing import UsageError, parse_kv, parse_size

_ACTIONS = ("add", "remove", "modify")
_DISK_KEYS = {"size", "mode", "name", "format"}
_NIC_KEYS = {"mac", "ip", "mode", "link", "name", "network", "vlan"}


def _identifier(text: str) -> int | str:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def parse_device_mods(specs: Sequence[str], kind: str) -> list[list[Any]]:
    """``--disk``/``--net`` values as the opcode's ``[action, identifier, params]`` list.

    Args:
        specs: the option values, in order.
        kind: ``disk`` or ``nic`` (messages name ``--disk``/``--net``).

    Raises:
        UsageError: bad syntax, several actions in one value, unknown parameters, a missing
            or bad size, parameters given to ``remove``.
    """
    option = "--disk" if kind == "disk" else "--net"
    allowed = _DISK_KEYS if kind == "disk" else _NIC_KEYS
    mods: list[list[Any]] = []
    for spec in specs:
        head, sep, rest = spec.partition(":")
        head = head.strip()
        if not head:
            raise UsageError(f"{option} {spec!r}: expected add, remove, N:action or NAME:action")
        params = parse_kv(rest, f"{option} {head}") if sep else {}
        flags = [a for a in _ACTIONS if params.get(a) is True]
        for action in flags:
            del params[action]
        ident: int | str
        if head in ("add", "remove"):
            if flags:
                raise UsageError(f"{option} {spec!r}: {head} cannot be combined with {flags[0]}")
            action, ident = head, -1
        else:
            if len(flags) > 1:
                raise UsageError(f"{option} {spec!r}: only one of add, remove, modify may be given")
            action, ident = (flags[0] if flags else "modify"), _identifier(head)
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise UsageError(
                f"{option} {spec!r}: unknown parameter(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(allowed))})"
            )
        if action == "remove" and params:
            raise UsageError(f"{option} {spec!r}: remove takes no parameters")
        if action == "modify" and not params:
            raise UsageError(f"{option} {spec!r}: nothing to change (e.g. {head}:link=br1)")
        if kind == "disk" and action == "add":
            if params.get("size") in (None, True, False):
                raise UsageError(f"{option} {spec!r}: a new disk needs size=SIZE (e.g. 1G)")
            params["size"] = parse_size(str(params["size"]), f"{option} size")
        out = {k: (v if v is None else str(v)) if k != "size" else v for k, v in params.items()}
        mods.append([action, ident, out])
    return mods

"""Parsing of Ganeti-style option values: ``key=val,...`` lists, disk and NIC specs, sizes.

All functions are pure and raise :class:`UsageError` with a message that names the option
and the field and says what is expected; the CLI prints it on stderr and exits with 1 before
anything is submitted.

Syntax (as ``gnt-instance``):

* ``-B memory=256M,vcpus=1``: ``key=value`` pairs separated by commas; ``no_key`` means
  ``key=False`` and ``-key`` means "reset to default" (kept as ``None``);
* ``-H kvm:kernel_path=/x,serial_console=true`` or ``-H kernel_path=/x``: an optional
  hypervisor name and a ``key=value`` list;
* ``--disk 0:size=1G,mode=rw,name=data,format=qcow2``: index, colon, options;
* ``--net 0:mac=auto,link=br0,mode=bridged,ip=192.0.2.10``;
* sizes: ``512M``, ``1G``, ``1.5g``, ``2T``. The ``corral`` command refuses a bare number
  (``size=100`` is too easily meant as GiB); the ``gnt-*`` commands read it as MiB, like
  Ganeti (see :data:`BARE_SIZES_ARE_MIB`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any

from corral.objects.units import parse_size_mib


class UsageError(Exception):
    """Bad command-line input (exit code 1, message on stderr)."""


#: Whether a size without a unit is accepted as MiB: False for ``corral``, True while a
#: ``gnt-*`` command runs (Ganeti's syntax; set by ``cli/gnt.py``).
BARE_SIZES_ARE_MIB: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "BARE_SIZES_ARE_MIB", default=False
)


def parse_size(value: str, what: str) -> int:
    """A size in MiB from ``512M``/``1G`` (a bare number only under ``gnt-*``).

    Raises:
        UsageError: naming ``what`` when the value is not a size or lacks its unit.
    """
    try:
        return parse_size_mib(value.strip(), require_unit=not BARE_SIZES_ARE_MIB.get())
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def parse_kv(text: str, option: str) -> dict[str, Any]:
    """Parse ``key=value,key2=value2`` (``no_key`` -> False, ``-key`` -> None).

    Raises:
        UsageError: an empty key, a key without ``=`` that is not a ``no_``/``-`` form, or a
            key given twice.
    """
    out: dict[str, Any] = {}
    if not text.strip():
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise UsageError(f"{option}: empty element in {text!r} (expected key=value,...)")
        if "=" in item:
            key, value = item.split("=", 1)
            key = key.strip()
            parsed: Any = value
        elif item.startswith("no_"):
            key, parsed = item[3:], False
        elif item.startswith("-"):
            key, parsed = item[1:], None
        else:
            key, parsed = item, True
        if not key:
            raise UsageError(f"{option}: missing parameter name in {item!r} (expected key=value)")
        if key in out:
            raise UsageError(f"{option}: parameter {key!r} given twice")
        out[key] = parsed
    return out


def parse_hv_option(text: str, option: str = "-H") -> tuple[str | None, dict[str, Any]]:
    """Parse ``hv:key=val,...`` or ``key=val,...`` or just ``hv``.

    Returns:
        The hypervisor name (None if not given) and the parameters.
    """
    head, sep, rest = text.partition(":")
    if sep and "=" not in head and "," not in head:
        hv = head.strip()
        if not hv:
            raise UsageError(f"{option}: missing hypervisor name before ':' in {text!r}")
        return hv, parse_kv(rest, f"{option} {hv}")
    if "=" not in text and "," not in text and text.strip():
        return text.strip(), {}
    return None, parse_kv(text, option)


def _indexed(text: str, option: str) -> tuple[int, dict[str, Any]]:
    head, sep, rest = text.partition(":")
    if not sep:
        raise UsageError(f"{option}: expected N:key=value,... (e.g. 0:size=1G), got {text!r}")
    try:
        index = int(head)
    except ValueError:
        raise UsageError(f"{option}: index {head!r} is not a number (expected N:...)") from None
    if index < 0:
        raise UsageError(f"{option}: index must not be negative, got {index}")
    return index, parse_kv(rest, f"{option} {index}")


_DISK_KEYS = {"size", "mode", "name", "format"}
_NIC_KEYS = {"mac", "ip", "mode", "link", "name", "network", "vlan"}


def parse_disks(specs: Sequence[str], *, single_size: str | None = None) -> list[dict[str, Any]]:
    """Disk dicts (RAPI form: ``size`` in MiB, ``mode``, ``name``, ``format``) in index order.

    Args:
        specs: ``--disk`` values.
        single_size: ``-s SIZE`` (one disk of that size), exclusive with ``specs``.

    Raises:
        UsageError: bad syntax, unknown keys, a missing or bad size, duplicate or missing
            indices, or both forms given.
    """
    if single_size is not None:
        if specs:
            raise UsageError("-s/--os-size and --disk cannot be used together")
        return [{"size": parse_size(single_size, "-s")}]
    disks: dict[int, dict[str, Any]] = {}
    for spec in specs:
        index, params = _indexed(spec, "--disk")
        if index in disks:
            raise UsageError(f"--disk {index}: disk index given twice")
        unknown = sorted(set(params) - _DISK_KEYS)
        if unknown:
            raise UsageError(
                f"--disk {index}: unknown parameter(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(_DISK_KEYS))})"
            )
        if "size" not in params:
            raise UsageError(f"--disk {index}: missing size (e.g. {index}:size=1G)")
        disk: dict[str, Any] = {"size": parse_size(str(params["size"]), f"--disk {index} size")}
        mode = params.get("mode")
        if mode is not None:
            if mode not in ("rw", "ro"):
                raise UsageError(f"--disk {index} mode: expected rw or ro, got {mode!r}")
            disk["mode"] = mode
        for key in ("name", "format"):
            if params.get(key) is not None:
                disk[key] = str(params[key])
        disks[index] = disk
    return [disks[i] for i in _dense(disks, "--disk")]


def parse_nics(specs: Sequence[str]) -> list[dict[str, Any]]:
    """NIC dicts (RAPI form) in index order.

    Raises:
        UsageError: bad syntax, unknown keys, duplicate or missing indices.
    """
    nics: dict[int, dict[str, Any]] = {}
    for spec in specs:
        index, params = _indexed(spec, "--net") if ":" in spec else (int_or(spec), {})
        if index in nics:
            raise UsageError(f"--net {index}: NIC index given twice")
        unknown = sorted(set(params) - _NIC_KEYS)
        if unknown:
            raise UsageError(
                f"--net {index}: unknown parameter(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(_NIC_KEYS))})"
            )
        nic = {k: str(v) for k, v in params.items() if v is not None and v is not True}
        if nic.get("mac") == "generate":
            nic["mac"] = "auto"
        nics[index] = nic
    return [nics[i] for i in _dense(nics, "--net")]


def int_or(text: str) -> int:
    """An index given alone (``--net 0``).

    Raises:
        UsageError: when it is not a number.
    """
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--net: expected N:key=value,... or N, got {text!r}") from None


def _dense(items: dict[int, Any], option: str) -> list[int]:
    order = sorted(items)
    if order != list(range(len(order))):
        missing = sorted(set(range(max(order) + 1)) - set(order)) if order else []
        raise UsageError(f"{option}: indices must start at 0 without gaps; missing {missing}")
    return order


def parse_beparams(values: Sequence[str], option: str = "-B") -> dict[str, Any]:
    """Merge one or more ``-B`` values; memory-like keys keep their unit for the master.

    Raises:
        UsageError: bad syntax or a memory value that is not a size.
    """
    out: dict[str, Any] = {}
    for value in values:
        for key, raw in parse_kv(value, option).items():
            if key in out:
                raise UsageError(f"{option}: parameter {key!r} given twice")
            if key in ("memory", "maxmem", "minmem") and isinstance(raw, str):
                out[key] = parse_size(raw, f"{option} {key}")
            else:
                out[key] = raw
        # NOTE: the master checks names and types (ParamError naming the key).
    return out


def parse_hvparams(values: Sequence[str], option: str = "-H") -> tuple[str | None, dict[str, Any]]:
    """Merge ``-H`` values; at most one hypervisor name.

    Raises:
        UsageError: two different hypervisor names or a key given twice.
    """
    hv: str | None = None
    params: dict[str, Any] = {}
    for value in values:
        name, part = parse_hv_option(value, option)
        if name is not None:
            if hv is not None and hv != name:
                raise UsageError(f"{option}: two hypervisors given ({hv} and {name})")
            hv = name
        for key, raw in part.items():
            if key in params:
                raise UsageError(f"{option}: parameter {key!r} given twice")
            params[key] = raw
    return hv, params


def parse_node(value: str | None) -> tuple[str | None, str | None]:
    """``-n pnode[:snode]``."""
    if not value:
        return None, None
    pnode, _sep, snode = value.partition(":")
    if not pnode:
        raise UsageError(f"-n: expected NODE or PNODE:SNODE, got {value!r}")
    return pnode, snode or None


def parse_fields(value: str | None, default: Sequence[str]) -> list[str]:
    """``-o name,status`` or ``-o +extra`` (added to the default list)."""
    if not value:
        return list(default)
    if value.startswith("+"):
        return [*default, *[f for f in value[1:].split(",") if f]]
    fields = [f.strip() for f in value.split(",") if f.strip()]
    if not fields:
        raise UsageError("-o: no field names given")
    return fields


def build_create_request(
    *,
    name: str,
    disk_template: str,
    disks: Sequence[str],
    single_size: str | None,
    nets: Sequence[str],
    no_nics: bool,
    os_type: str | None,
    beparams: Sequence[str],
    hvparams: Sequence[str],
    osparams: Sequence[str],
    node: str | None,
    no_start: bool,
    no_install: bool,
    tags: Sequence[str] = (),
    file_storage_dir: str | None = None,
) -> dict[str, Any]:
    """The RAPI v1 create body for ``instance add`` options.

    Raises:
        UsageError: any option value that cannot be parsed (nothing is submitted).
    """
    if not disk_template:
        raise UsageError("-t/--disk-template is required (e.g. -t file)")
    if no_nics and nets:
        raise UsageError("--no-nics and --net cannot be used together")
    disk_list = [] if disk_template == "diskless" else parse_disks(disks, single_size=single_size)
    if disk_template != "diskless" and not disk_list:
        raise UsageError("at least one disk is needed: --disk 0:size=SIZE (or -s SIZE)")
    if not os_type and not no_install:
        raise UsageError("-o/--os-type is required unless --no-install is given (see os list)")
    hv, hv_params = parse_hvparams(hvparams)
    pnode, snode = parse_node(node)
    body: dict[str, Any] = {
        "mode": "create",
        "name": name,
        "disk_template": disk_template,
        "disks": disk_list,
        "nics": [] if no_nics else (parse_nics(nets) if nets else [{}]),
        "beparams": parse_beparams(beparams),
        "hvparams": hv_params,
        "start": not no_start and not no_install,
        "no_install": no_install,
    }
    if os_type:
        body["os"] = os_type
    if hv:
        body["hypervisor"] = hv
    osp: dict[str, Any] = {}
    for value in osparams:
        osp.update(parse_kv(value, "-O"))
    if osp:
        body["osparams"] = osp
    if pnode:
        body["pnode"] = pnode
    if snode:
        body["snode"] = snode
    if tags:
        body["tags"] = list(tags)
    if file_storage_dir:
        body["file_storage_dir"] = file_storage_dir
    return body

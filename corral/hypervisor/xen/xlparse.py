"""Parsers for the output of Xen's ``xl`` toolstack (pure: text in, typed records out).

Formats, as printed by ``xl`` 4.17 (real captures in ``tests/data/xen/``):

* ``xl list [-v]``: a header line, then ``Name ID Mem VCPUs State Time(s)`` per domain;
  ``-v`` adds UUID, reason code and security label columns (ignored here). The header mixes
  spaces and tabs. Mem is MiB, State six flag letters ``rbpscd`` or ``-``.
* ``xl info``: ``key<spaces>: value`` lines; ``xl info -n`` adds topology tables whose rows
  have no such separator and are skipped.
* ``xl list -l``: a JSON list of ``{"domid", "config": {"c_info", "b_info", "disks", "nics",
  ...}}``; Domain-0's entry has only a few keys.
* ``xl vcpu-list``: ``Name ID VCPU CPU State Time(s) Affinity (Hard / Soft)``; CPU is ``-``
  for an offline vCPU and affinities read like ``all / all`` or ``1 / all``.
* errors on stderr: ``<name> is an invalid domain identifier (rc=-6)`` for an unknown
  domain, and libxl's ``libxl: error: <file>:<line>:<function>: <message>`` lines.

Every parser raises :class:`HypervisorError` of kind FAULT naming the offending line or key
when the text is not what ``xl`` prints: a driver must not guess at a domain's state.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import HvNodeInfo, InstanceState

#: Name and id of the control domain.
DOM0_NAME = "Domain-0"
DOM0_ID = 0

_STATE = re.compile(r"[rbpscd-]{6}")
_VCPU_STATE = re.compile(r"[rbp-]{3}")
#: ``key : value`` of ``xl info`` (whitespace before the colon; topology rows have none).
_INFO_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s+:(.*)$")
#: ``libxl: error: libxl_domain.c:81:libxl__domain_rename: Domain 4:<message>``
_LIBXL_ERROR = re.compile(r"^(?:libxl|xc|xl): error: (?:[\w.-]+:\d+:\w+: )?(?:Domain \d+:)?(.*)$")
#: libxl error lines that only report the consequence of an earlier, more useful one.
_CONSEQUENCES = (
    "cannot make domain",
    "unable to destroy guest",
    "destruction of domain failed",
    "non-existant domain",
    "non-existent domain",
    "domain creation failed",
)
_NOISE = ("parsing config from", "xc: info:", "xc: progress:", "waiting for ")


def _fault(message: str, **fields: Any) -> HypervisorError:
    return HypervisorError(message, kind=ErrorKind.FAULT, **fields)


# --- xl list ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class XlDomain:
    """One line of ``xl list``.

    Attributes:
        name: the domain's name.
        domid: its numeric id (0 is Domain-0).
        memory: MiB currently assigned.
        vcpus: online vCPUs.
        flags: the six state letters (``r``unning, ``b``locked, ``p``aused, ``s``hutdown,
            ``c``rashed, ``d``ying) or ``-``.
        cpu_time: seconds of CPU used.
    """

    name: str
    domid: int
    memory: int
    vcpus: int
    flags: str
    cpu_time: float

    @property
    def state(self) -> InstanceState:
        """The Corral state of the flags (see :func:`xen_state`)."""
        return xen_state(self.flags)


def _is_list_header(fields: Sequence[str]) -> bool:
    return bool(fields) and fields[0] == "Name" and "ID" in fields


def parse_list(text: str, *, include_dom0: bool = False) -> list[XlDomain]:
    """Parse ``xl list`` (or ``xl list -v``) output.

    Args:
        text: the command's standard output.
        include_dom0: keep Domain-0 (id 0); it is left out by default, like Ganeti does.

    Returns:
        The domains in the order ``xl`` printed them.

    Raises:
        HypervisorError: (FAULT) a line is not ``name id mem vcpus state time [...]``; the
            message quotes it.
    """
    domains = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or _is_list_header(fields):
            continue
        if len(fields) < 6:
            raise _fault(f"cannot parse xl list line {line!r}: too few fields", line=line)
        name, domid, mem, vcpus, flags, cpu_time = fields[:6]
        try:
            dom = XlDomain(name, int(domid), int(mem), int(vcpus), flags, float(cpu_time))
        except ValueError as exc:
            raise _fault(f"cannot parse xl list line {line!r}: {exc}", line=line) from exc
        if not _STATE.fullmatch(flags):
            raise _fault(f"cannot parse xl list line {line!r}: bad state {flags!r}", line=line)
        if dom.domid == DOM0_ID and not include_dom0:
            continue
        domains.append(dom)
    return domains


def xen_state(flags: str) -> InstanceState:
    """Map ``xl list`` state letters to a Corral :class:`InstanceState` (Ganeti's rules).

    * ``c`` (crashed) -> CRASHED. ``xl`` prints ``c`` only together with ``s`` (a crash is
      a shutdown with reason "crash"), so it is checked first to stay distinct.
    * ``s`` (shut down, kept because ``on_poweroff = "preserve"``) -> SHUTDOWN, whatever
      the other letters say (``--ps--`` after a poweroff, ``---s-d`` while being destroyed).
    * anything else -> RUNNING: running or blocked (``rb----`` was seen too), dying (still
      holds resources), ``------`` (runnable, waiting for a CPU), and paused: the ``p``
      letter is ignored, because Xen reports it for domains merely paused for scheduling
      or by races in its status reporting. Whether an instance was paused on purpose is
      the driver's business, not this function's.

    Raises:
        HypervisorError: (FAULT) ``flags`` is not six letters of ``rbpscd-``.
    """
    if not _STATE.fullmatch(flags):
        raise _fault(f"unknown Xen domain state {flags!r}", flags=flags)
    if "c" in flags:
        return InstanceState.CRASHED
    if "s" in flags:
        return InstanceState.SHUTDOWN
    return InstanceState.RUNNING


# --- xl info ------------------------------------------------------------------------------------


def parse_info(text: str) -> dict[str, str]:
    """Parse ``xl info`` (or ``xl info -n``) into ``{key: value}`` (values stripped).

    Rows of the ``-n`` topology tables are skipped. A key printed twice keeps its first value.

    Raises:
        HypervisorError: (FAULT) no ``key : value`` line at all.
    """
    info: dict[str, str] = {}
    for line in text.splitlines():
        match = _INFO_LINE.match(line)
        if match:
            info.setdefault(match.group(1), match.group(2).strip())
    if not info:
        raise _fault("xl info printed no 'key : value' line", output=text[-2000:])
    return info


def _int_key(info: Mapping[str, str], key: str) -> int:
    if key not in info:
        raise _fault(f"xl info has no {key!r}", key=key)
    try:
        return int(info[key])
    except ValueError as exc:
        raise _fault(f"xl info {key!r} is not a number: {info[key]!r}", key=key) from exc


def node_info(info: Mapping[str, str], domains: Sequence[XlDomain], hypervisor: str) -> HvNodeInfo:
    """Node facts from ``xl info`` merged with the domain list (Ganeti's ``_GetNodeInfo``).

    Memory figures are MiB: ``memory_total``/``memory_free`` are Xen's ``total_memory`` and
    ``free_memory``; ``memory_hv`` is what the guests (every domain but Domain-0) hold;
    ``details`` has ``memory_dom0`` and ``cpu_dom0`` (Domain-0's Mem and VCPUs, when it is in
    ``domains``) and ``memory_xen`` (what neither the guests, Domain-0 nor the free pool
    account for: Xen itself). CPUs: ``cpu_total`` = ``nr_cpus``, ``cpu_nodes`` =
    ``nr_nodes``, ``cpu_sockets`` = ``nr_cpus / (cores_per_socket * threads_per_core)``.
    ``hv_version`` is ``<xen_major>.<xen_minor><xen_extra>``, e.g. ``4.17.5``.

    Args:
        info: :func:`parse_info` of ``xl info``.
        domains: :func:`parse_list` of ``xl list`` with Domain-0 included.
        hypervisor: the driver name to report (``xen-pvm`` or ``xen-hvm``).

    Raises:
        HypervisorError: (FAULT) a needed key is missing or not a number; the key is named.
    """
    total = _int_key(info, "total_memory")
    free = _int_key(info, "free_memory")
    nr_cpus = _int_key(info, "nr_cpus")
    nr_nodes = _int_key(info, "nr_nodes")
    per_socket = _int_key(info, "cores_per_socket") * _int_key(info, "threads_per_core")
    for key in ("xen_major", "xen_minor"):
        _int_key(info, key)
    version = f"{info['xen_major']}.{info['xen_minor']}{info.get('xen_extra', '')}"
    guests = sum(d.memory for d in domains if d.domid != DOM0_ID)
    details: dict[str, Any] = {}
    dom0 = next((d for d in domains if d.domid == DOM0_ID), None)
    if dom0 is not None:
        details["memory_dom0"] = dom0.memory
        details["cpu_dom0"] = dom0.vcpus
        details["memory_xen"] = max(0, total - free - guests - dom0.memory)
    return HvNodeInfo(
        hypervisor=hypervisor,
        memory_total=total,
        memory_free=free,
        memory_hv=guests,
        cpu_total=nr_cpus,
        cpu_nodes=max(1, nr_nodes),
        cpu_sockets=max(1, nr_cpus // per_socket) if per_socket > 0 else 1,
        hv_version=version,
        details=details,
    )


# --- xl list -l ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class XlDomainConfig:
    """The configuration ``xl list -l`` reports for one domain (libxl's JSON, in part).

    Keys missing from the JSON (Domain-0 has almost none) give ``None``, ``""`` or ``[]``.

    Attributes:
        name: ``c_info.name``.
        domid: the domain id (the top-level ``domid``).
        type: ``c_info.type``: ``pv``, ``pvh`` or ``hvm``.
        max_memkb: ``b_info.max_memkb`` (KiB; maxmem).
        target_memkb: ``b_info.target_memkb`` (KiB; memory, the balloon target at start).
        max_vcpus: ``b_info.max_vcpus``.
        kernel: ``b_info.kernel``.
        cmdline: ``b_info.cmdline``.
        ramdisk: ``b_info.ramdisk``.
        disks: ``disks`` as libxl prints them (``pdev_path``, ``vdev``, ``format``, ...).
        nics: ``nics`` (``devid``, ``mac``, ``bridge``, ``nictype``, ...).
        uuid: ``c_info.uuid``.
        sched_weight: ``b_info.sched_params.weight``.
        sched_cap: ``b_info.sched_params.cap``.
    """

    name: str
    domid: int
    type: str
    max_memkb: int | None = None
    target_memkb: int | None = None
    max_vcpus: int | None = None
    kernel: str = ""
    cmdline: str = ""
    ramdisk: str = ""
    disks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    nics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    uuid: str = ""
    sched_weight: int | None = None
    sched_cap: int | None = None


def _dict_at(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _fault(f"xl list -l: {where}.{key} is not an object")
    return value


def _opt_int(data: Mapping[str, Any], key: str, where: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fault(f"xl list -l: {where}.{key} is not a number: {value!r}", key=key)
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    return value if isinstance(value, str) else str(value)


def _dict_list(data: Mapping[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _fault(f"xl list -l: {where}.{key} is not a list of objects", key=key)
    return [dict(v) for v in value]


def _domain_config(entry: Any, index: int) -> XlDomainConfig:
    where = f"entry {index}"
    if not isinstance(entry, dict):
        raise _fault(f"xl list -l: {where} is not an object")
    domid = _opt_int(entry, "domid", where)
    config = _dict_at(entry, "config", where)
    c_info = _dict_at(config, "c_info", where + ".config")
    b_info = _dict_at(config, "b_info", where + ".config")
    sched = _dict_at(b_info, "sched_params", where + ".config.b_info")
    name = c_info.get("name")
    if domid is None or not isinstance(name, str) or not name:
        raise _fault(f"xl list -l: {where} has no domid or no name", key="domid/name")
    return XlDomainConfig(
        name=name,
        domid=domid,
        type=_opt_str(c_info, "type"),
        max_memkb=_opt_int(b_info, "max_memkb", where),
        target_memkb=_opt_int(b_info, "target_memkb", where),
        max_vcpus=_opt_int(b_info, "max_vcpus", where),
        kernel=_opt_str(b_info, "kernel"),
        cmdline=_opt_str(b_info, "cmdline"),
        ramdisk=_opt_str(b_info, "ramdisk"),
        disks=_dict_list(config, "disks", where),
        nics=_dict_list(config, "nics", where),
        uuid=_opt_str(c_info, "uuid"),
        sched_weight=_opt_int(sched, "weight", where),
        sched_cap=_opt_int(sched, "cap", where),
    )


def parse_list_long(text: str) -> list[XlDomainConfig]:
    """Parse the JSON of ``xl list -l [name]``.

    Raises:
        HypervisorError: (FAULT) the text is not JSON (e.g. the old SXP format), not a list,
            or an entry lacks its domid or name, or has a value of the wrong type.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _fault(f"xl list -l did not print JSON: {exc}", output=text[:500]) from exc
    if not isinstance(data, list):
        raise _fault("xl list -l did not print a JSON list")
    return [_domain_config(entry, i) for i, entry in enumerate(data)]


# --- xl vcpu-list -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class XlVcpu:
    """One line of ``xl vcpu-list``.

    Attributes:
        name: the domain's name.
        domid: its id.
        vcpu: the vCPU number.
        cpu: the physical CPU it runs on, ``None`` when it is offline.
        state: three letters (``r``unning, ``b``locked, ``p``aused/offline) or ``-``.
        time: seconds of CPU used.
        hard: the hard affinity as ``xl`` prints it (``all``, ``1``, ``0-1,3``).
        soft: the soft affinity (``""`` when not printed).
    """

    name: str
    domid: int
    vcpu: int
    cpu: int | None
    state: str
    time: float
    hard: str
    soft: str


def parse_vcpu_list(text: str) -> list[XlVcpu]:
    """Parse ``xl vcpu-list [domain...]`` output.

    Raises:
        HypervisorError: (FAULT) a line is not ``name id vcpu cpu state time affinity``;
            the message quotes it.
    """
    vcpus = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or _is_list_header(fields):
            continue
        if len(fields) < 7:
            raise _fault(f"cannot parse xl vcpu-list line {line!r}: too few fields", line=line)
        name, domid, vcpu, cpu, state, cpu_time = fields[:6]
        hard, _, soft = " ".join(fields[6:]).partition(" / ")
        try:
            entry = XlVcpu(
                name=name,
                domid=int(domid),
                vcpu=int(vcpu),
                cpu=None if cpu == "-" else int(cpu),
                state=state,
                time=float(cpu_time),
                hard=hard.strip(),
                soft=soft.strip(),
            )
        except ValueError as exc:
            raise _fault(f"cannot parse xl vcpu-list line {line!r}: {exc}", line=line) from exc
        if not _VCPU_STATE.fullmatch(state):
            raise _fault(f"cannot parse xl vcpu-list line {line!r}: bad state", line=line)
        vcpus.append(entry)
    return vcpus


# --- errors -------------------------------------------------------------------------------------


def error_kind(stderr: str) -> ErrorKind:
    """Classify a failed ``xl`` command by its message.

    ``<name> is an invalid domain identifier`` (an unknown domain: list, shutdown, destroy,
    mem-set, ...) is NOT_FOUND; ``Domain with name "<name>" already exists`` (create or
    restore while the name is taken, also shortly after a shutdown) is EXISTS; anything else
    is ENVIRONMENT.
    """
    if "is an invalid domain identifier" in stderr:
        return ErrorKind.NOT_FOUND
    if "already exists" in stderr:
        return ErrorKind.EXISTS
    return ErrorKind.ENVIRONMENT


def error_message(output: str) -> str:
    """The most useful line of a failed ``xl`` command's output, for job messages.

    libxl prints a cascade of ``libxl: error:`` lines whose first is usually the cause and
    the rest its consequences ("cannot make domain", "Unable to destroy guest"). The first
    error line that is not a known consequence is returned without libxl's source-location
    prefix, e.g. ``Domain with name "pv1" already exists.``; failing that the first error
    line, then the last line that is not progress noise; ``""`` for empty output.
    """
    errors: list[str] = []
    others: list[str] = []
    for raw in output.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _LIBXL_ERROR.match(line)
        if match:
            errors.append(match.group(1).strip() or line)
        elif not line.lower().startswith(_NOISE):
            others.append(line)
    for message in errors:
        if not message.lower().startswith(_CONSEQUENCES):
            return message
    if errors:
        return errors[0]
    return others[-1] if others else ""

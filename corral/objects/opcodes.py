"""Opcodes: the operations a job is made of (Ganeti's ``opcodes``).

An opcode is pure data: what to do and with which arguments, validated for *shape* here
(types, required fields); the master's operation classes (``master/ops/``) do the semantic
checks. Opcodes are stored in jobs and travel as dicts with Ganeti's ``OP_ID`` key, so
``/2/jobs/<id>`` shows them the way Ganeti clients expect.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.common.errors import ParamError

_REGISTRY: dict[str, type[OpCode]] = {}


class OpCode(BaseModel):
    """Base of all opcodes."""

    model_config = ConfigDict(extra="forbid")

    OP_ID: ClassVar[str]
    #: Field naming the object the summary shows, e.g. ``INSTANCE_CREATE(vm1)``.
    SUMMARY_FIELD: ClassVar[str | None] = None

    dry_run: bool = False
    debug_level: int = 0
    priority: int = 0
    reason: list[list[Any]] = Field(default_factory=list)
    comment: str | None = None
    depends: list[Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register every concrete opcode (one that sets ``OP_ID``) under its OP_ID.

        Raises:
            ValueError: two opcode classes claim the same OP_ID.
        """
        super().__init_subclass__(**kwargs)
        op_id = cls.__dict__.get("OP_ID")
        if op_id is None:
            return
        if op_id in _REGISTRY and _REGISTRY[op_id] is not cls:
            raise ValueError(f"two opcodes named {op_id}")
        _REGISTRY[op_id] = cls

    def summary(self) -> str:
        """Ganeti-style summary, ``INSTANCE_STARTUP(vm1)``."""
        name = self.OP_ID.removeprefix("OP_")
        if self.SUMMARY_FIELD:
            return f"{name}({getattr(self, self.SUMMARY_FIELD)})"
        return name

    def to_dict(self) -> dict[str, Any]:
        """The stored/wire form, with ``OP_ID``."""
        data = self.model_dump(mode="json")
        data["OP_ID"] = self.OP_ID
        return data


class DiskArg(BaseModel):
    """One disk of a new instance (``--disk N:size=1G,mode=rw,name=...,format=qcow2``)."""

    model_config = ConfigDict(extra="forbid")

    size: int  # MiB
    mode: Literal["rw", "ro"] = "rw"
    name: str = ""
    format: str | None = None


class NicArg(BaseModel):
    """One NIC of a new instance (``--net N:mac=...,ip=...,mode=...,link=...``)."""

    model_config = ConfigDict(extra="forbid")

    mac: str = "auto"
    ip: str | None = None
    mode: str | None = None
    link: str | None = None
    name: str = ""
    network: str | None = None
    vlan: str | None = None


class OpTestDelay(OpCode):
    """Sleep on the master (and optionally on nodes): the no-op job for tests and benchmarks."""

    OP_ID = "OP_TEST_DELAY"
    duration: float = 0.0
    on_master: bool = True
    on_nodes: list[str] = Field(default_factory=list)
    repeat: int = 0


class OpOsDiagnose(OpCode):
    """List the OS definitions available on the nodes."""

    OP_ID = "OP_OS_DIAGNOSE"
    output_fields: list[str] = Field(default_factory=lambda: ["name", "valid", "variants"])
    names: list[str] = Field(default_factory=list)


class OpInstanceCreate(OpCode):
    """Create an instance: allocate disks, install the OS, optionally start it."""

    OP_ID = "OP_INSTANCE_CREATE"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    mode: Literal["create", "import"] = "create"
    os_type: str | None = None
    disk_template: str
    disks: list[DiskArg] = Field(default_factory=list)
    nics: list[NicArg] = Field(default_factory=list)
    hypervisor: str | None = None
    hvparams: dict[str, Any] = Field(default_factory=dict)
    beparams: dict[str, Any] = Field(default_factory=dict)
    osparams: dict[str, Any] = Field(default_factory=dict)
    pnode: str | None = None
    snode: str | None = None
    iallocator: str | None = None
    start: bool = True
    no_install: bool = False
    ip_check: bool = False
    name_check: bool = False
    wait_for_sync: bool = True
    file_storage_dir: str | None = None
    file_driver: str | None = None
    tags: list[str] = Field(default_factory=list)


class OpInstanceRemove(OpCode):
    """Stop an instance, remove its disks and forget it."""

    OP_ID = "OP_INSTANCE_REMOVE"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    shutdown_timeout: float = 120.0
    ignore_failures: bool = False


class OpInstanceStartup(OpCode):
    """Start an instance (and remember it should run, unless ``no_remember``)."""

    OP_ID = "OP_INSTANCE_STARTUP"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    force: bool = False
    no_remember: bool = False
    startup_paused: bool = False
    hvparams: dict[str, Any] = Field(default_factory=dict)
    beparams: dict[str, Any] = Field(default_factory=dict)


class OpInstanceShutdown(OpCode):
    """Stop an instance (and remember it should be down, unless ``no_remember``)."""

    OP_ID = "OP_INSTANCE_SHUTDOWN"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    timeout: float = 120.0
    no_remember: bool = False
    force: bool = False
    #: Who wants it down (Ganeti): ``user`` when the guest powered itself off and the
    #: master's watcher records it (the instance then shows ``USER_down``).
    admin_state_source: Literal["admin", "user"] = "admin"


class OpInstanceReboot(OpCode):
    """Reboot an instance: soft, hard or full."""

    OP_ID = "OP_INSTANCE_REBOOT"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    reboot_type: Literal["soft", "hard", "full"] = "hard"
    shutdown_timeout: float = 120.0
    ignore_secondaries: bool = False


class OpInstancePause(OpCode):
    """Corral extension: stop a running instance's vCPUs (it keeps its memory)."""

    OP_ID = "OP_INSTANCE_PAUSE"
    SUMMARY_FIELD = "instance_name"
    instance_name: str


class OpInstanceResume(OpCode):
    """Corral extension: let a paused instance run again."""

    OP_ID = "OP_INSTANCE_RESUME"
    SUMMARY_FIELD = "instance_name"
    instance_name: str


class OpInstanceSuspend(OpCode):
    """Corral extension: save a running instance to disk on its node and stop it."""

    OP_ID = "OP_INSTANCE_SUSPEND"
    SUMMARY_FIELD = "instance_name"
    instance_name: str


class OpInstanceUnsuspend(OpCode):
    """Corral extension: start a suspended instance again from its saved state."""

    OP_ID = "OP_INSTANCE_UNSUSPEND"
    SUMMARY_FIELD = "instance_name"
    instance_name: str


class OpInstanceSetParams(OpCode):
    """Change an instance's parameters; ``runtime_mem`` balloons a running guest."""

    OP_ID = "OP_INSTANCE_SET_PARAMS"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    hvparams: dict[str, Any] = Field(default_factory=dict)
    beparams: dict[str, Any] = Field(default_factory=dict)
    osparams: dict[str, Any] = Field(default_factory=dict)
    runtime_mem: int | None = None
    os_name: str | None = None
    force: bool = False
    #: Ganeti's ``[[action, index_or_name_or_uuid, params], ...]`` (or the legacy
    #: ``[[action_or_index, params], ...]``); actions add, remove, modify
    #: (master/ops/instance_devices.py).
    disks: list[list[Any]] = Field(default_factory=list)
    nics: list[list[Any]] = Field(default_factory=list)
    #: True: hotplug or fail; False: never (changes apply at the next start); None (default):
    #: hotplug when the instance runs and its hypervisor can, else at the next start.
    hotplug: bool | None = None
    #: Ganeti's --hotplug-if-possible: same as ``hotplug`` None.
    hotplug_if_possible: bool = False


class OpInstanceGrowDisk(OpCode):
    """Grow one disk of an instance."""

    OP_ID = "OP_INSTANCE_GROW_DISK"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    disk: int
    amount: int  # MiB
    absolute: bool = False
    wait_for_sync: bool = True


class OpInstanceRename(OpCode):
    """Rename an instance (its disks and the OS's idea of its name follow)."""

    OP_ID = "OP_INSTANCE_RENAME"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    new_name: str
    ip_check: bool = False
    name_check: bool = False


class OpInstanceReinstall(OpCode):
    """Run the OS installation again on a stopped instance."""

    OP_ID = "OP_INSTANCE_REINSTALL"
    SUMMARY_FIELD = "instance_name"
    instance_name: str
    os_type: str | None = None
    osparams: dict[str, Any] = Field(default_factory=dict)
    force_variant: bool = False


class OpInstanceConsole(OpCode):
    """Return how to connect to an instance's console."""

    OP_ID = "OP_INSTANCE_CONSOLE"
    SUMMARY_FIELD = "instance_name"
    instance_name: str


class OpInstanceQueryData(OpCode):
    """Detailed instance information, including live state unless ``static``."""

    OP_ID = "OP_INSTANCE_QUERY_DATA"
    instances: list[str] = Field(default_factory=list)
    static: bool = False
    use_locking: bool = False


class OpTagsSet(OpCode):
    """Add tags to an object (``kind``: cluster, node, instance)."""

    OP_ID = "OP_TAGS_SET"
    SUMMARY_FIELD = "name"
    kind: Literal["cluster", "node", "instance"]
    name: str | None = None
    tags: list[str]


class OpTagsDel(OpCode):
    """Remove tags from an object."""

    OP_ID = "OP_TAGS_DEL"
    SUMMARY_FIELD = "name"
    kind: Literal["cluster", "node", "instance"]
    name: str | None = None
    tags: list[str]


#: Every opcode by its OP_ID (filled by :meth:`OpCode.__init_subclass__`; the opcode modules
#: of other areas are imported at the end of this module so that they register too).
OPCODES: dict[str, type[OpCode]] = _REGISTRY


def opcode_from_dict(data: dict[str, Any]) -> OpCode:
    """Build an opcode from its dict form (with ``OP_ID``).

    Raises:
        ParamError: unknown OP_ID, unknown fields or wrong types; each problem names its field.
    """
    data = dict(data)
    op_id = data.pop("OP_ID", None)
    cls = OPCODES.get(str(op_id))
    if cls is None:
        raise ParamError({"OP_ID": f"unknown opcode {op_id!r}"}, context="opcode")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ParamError(validation_problems(exc), context=op_id) from exc


def validation_problems(exc: ValidationError) -> dict[str, str]:
    """Turn a pydantic error into {field path: reason}."""
    problems: dict[str, str] = {}
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        problems[loc] = msg
    return problems


# NOTE: imported last (they subclass OpCode) so that their opcodes are in OPCODES.
from corral.objects import (  # noqa: E402, F401
    opcodes_cluster,
    opcodes_mobility,
    opcodes_node,
)

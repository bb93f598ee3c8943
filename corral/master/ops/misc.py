"""Small operations: test delay (the no-op job), OS diagnose, tags."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from typing import Any

from corral.common.errors import CorralError, ErrorKind, OpError, ParamError
from corral.master.locking import CLUSTER_LOCK, LockMode, instance_lock, node_lock
from corral.master.ops.base import Operation, register
from corral.master.rpcrunner import call_many
from corral.objects.opcodes import OpOsDiagnose, OpTagsDel, OpTagsSet, OpTestDelay
from corral.rpc.calls import OS_DIAGNOSE, Empty, OsDiagnoseResponse, OsInfo

#: Seconds between cancellation checks while a test delay sleeps.
DELAY_SLICE = 0.1

TAG_RE = re.compile(r"^[\w.+*/:@-]+$")
MAX_TAG_LEN = 128
MAX_TAGS_PER_OBJECT = 4096


@register
class DebugDelay(Operation[OpTestDelay]):
    """Sleep on the master; a cancellation point every 0.1 s. The no-op job of benchmarks."""

    OPCODE = OpTestDelay
    INTERRUPTIBLE = True
    IDEMPOTENT = True

    def check_arguments(self) -> None:
        """Non-negative duration and repeat count."""
        if self.op.duration < 0:
            raise ParamError({"duration": f"must not be negative, got {self.op.duration}"})
        if self.op.repeat < 0:
            raise ParamError({"repeat": f"must not be negative, got {self.op.repeat}"})

    def declare_locks(self) -> dict[str, LockMode]:
        """No locks: it touches nothing."""
        return {}

    async def execute(self) -> Any:
        """Sleep ``duration`` seconds (``repeat`` times, at least once).

        Raises:
            JobCanceled: the job was canceled while sleeping.
        """
        if self.op.on_nodes:
            self.feedback(
                "delays on nodes are not supported by this master; sleeping on the master only"
            )
        if not self.op.on_master:
            return None
        rounds = max(1, self.op.repeat)
        for i in range(rounds):
            if rounds > 1:
                self.feedback(f"test delay iteration {i + 1}/{rounds}")
            await self._sleep(self.op.duration)
        return None

    async def _sleep(self, duration: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        while True:
            self.ctx.check_cancel()
            left = end - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, DELAY_SLICE))


def merge_os_lists(per_node: Mapping[str, list[OsInfo]]) -> list[OsInfo]:
    """Merge the OS lists of several nodes the way Ganeti shows them.

    An OS is valid only if it is valid on every node; variants, parameters and API
    versions are those common to all nodes that have it; the first error text is kept.
    """
    names: dict[str, list[OsInfo]] = {}
    for oses in per_node.values():
        for info in oses:
            names.setdefault(info.name, []).append(info)
    merged = []
    node_count = len(per_node)
    for name in sorted(names):
        infos = names[name]
        first = infos[0]
        valid = len(infos) == node_count and all(i.valid for i in infos)
        error = next((i.error for i in infos if i.error), "")
        if len(infos) < node_count and not error:
            error = f"missing on {node_count - len(infos)} node(s)"
        merged.append(
            OsInfo(
                name=name,
                path=first.path,
                valid=valid,
                error=error,
                api_versions=_common(i.api_versions for i in infos),
                variants=_common(i.variants for i in infos),
                parameters=_common(i.parameters for i in infos),
                builtin=all(i.builtin for i in infos),
            )
        )
    return merged


def _common(lists: Iterable[list[Any]]) -> list[Any]:
    it = iter(lists)
    first = list(next(it, []))
    rest = [list(x) for x in it]
    return [x for x in first if all(x in other for other in rest)]


async def diagnose_oses(op: Operation[Any]) -> tuple[list[OsInfo], dict[str, list[OsInfo]]]:
    """Ask every online node for its OS definitions; unreachable nodes are skipped."""
    nodes = [n for n in op.ctx.config.nodes() if not n.offline]
    answers = await call_many(op.ctx.runner, nodes, OS_DIAGNOSE, Empty())
    per_node: dict[str, list[OsInfo]] = {}
    for name, answer in answers.items():
        if isinstance(answer, CorralError):
            op.ctx.log.warning("OS diagnose on node %s failed: %s", name, answer)
            continue
        assert isinstance(answer, OsDiagnoseResponse)
        per_node[name] = answer.oses
    return merge_os_lists(per_node), per_node


_OS_FIELDS = (
    "name",
    "valid",
    "variants",
    "parameters",
    "api_versions",
    "path",
    "hidden",
    "blacklisted",
    "os_hvp",
    "osparams",
    "node_status",
    "error",
    "builtin",
)


@register
class OsDiagnose(Operation[OpOsDiagnose]):
    """The OS definitions on the nodes, one row of ``output_fields`` per OS."""

    OPCODE = OpOsDiagnose
    IDEMPOTENT = True

    def check_arguments(self) -> None:
        """Known output fields."""
        unknown = [f for f in self.op.output_fields if f not in _OS_FIELDS]
        if unknown:
            raise ParamError(
                {
                    f"output_fields.{f}": f"unknown field (known: {', '.join(_OS_FIELDS)})"
                    for f in unknown
                }
            )

    async def execute(self) -> Any:
        """Collect and merge."""
        merged, per_node = await diagnose_oses(self)
        rows = []
        for info in merged:
            if self.op.names and info.name not in self.op.names:
                continue
            status = {
                node: [
                    [i.path, i.valid, i.error, i.variants, i.parameters, i.api_versions]
                    for i in oses
                    if i.name == info.name
                ]
                for node, oses in per_node.items()
            }
            values = {
                "name": info.name,
                "valid": info.valid,
                "variants": info.variants,
                "parameters": [list(p) for p in info.parameters],
                "api_versions": info.api_versions,
                "path": info.path,
                "hidden": False,
                "blacklisted": False,
                "os_hvp": {},
                "osparams": {},
                "node_status": status,
                "error": info.error,
                "builtin": info.builtin,
            }
            rows.append([values[f] for f in self.op.output_fields])
        return rows


def check_tags(tags: list[str]) -> None:
    """Tag syntax (Ganeti's rules: 1-128 characters of letters, digits and ``.+*/:@-_``).

    Raises:
        ParamError: naming each bad tag.
    """
    problems = {}
    for idx, tag in enumerate(tags):
        if not tag or len(tag) > MAX_TAG_LEN:
            problems[f"tags.{idx}"] = f"tag must be 1 to {MAX_TAG_LEN} characters long"
        elif not TAG_RE.match(tag):
            problems[f"tags.{idx}"] = f"tag {tag!r} contains invalid characters"
    if not tags:
        problems["tags"] = "no tags given"
    if problems:
        raise ParamError(problems, context="tags")


class _TagsOperation(Operation[Any]):
    """Common parts of tags set/delete."""

    def check_arguments(self) -> None:
        """Tag syntax; a name for node and instance tags."""
        check_tags(self.op.tags)
        if self.op.kind != "cluster" and not self.op.name:
            raise ParamError({"name": f"the {self.op.kind} whose tags to change is required"})

    def declare_locks(self) -> dict[str, LockMode]:
        """The object's lock, exclusive."""
        if self.op.kind == "cluster":
            return {CLUSTER_LOCK: LockMode.EXCLUSIVE}
        lock = (
            instance_lock(self.op.name) if self.op.kind == "instance" else node_lock(self.op.name)
        )
        return {CLUSTER_LOCK: LockMode.SHARED, lock: LockMode.EXCLUSIVE}

    def current_tags(self) -> list[str]:
        """The object's tags (NOT_FOUND if it does not exist)."""
        cfg = self.ctx.config
        if self.op.kind == "cluster":
            return list(cfg.cluster().tags)
        if self.op.kind == "instance":
            return list(cfg.instance(self.op.name).tags)
        return list(cfg.node(self.op.name).tags)

    def store_tags(self, new: list[str]) -> None:
        """Write the object's new tag list (revision-checked)."""
        cfg = self.ctx.config

        def change(obj: Any) -> None:
            obj.tags = self.update(list(obj.tags))

        if self.op.kind == "cluster":
            cfg.modify_cluster(change)
        elif self.op.kind == "instance":
            cfg.modify_instance(self.op.name, change)
        else:
            cfg.modify_node(self.op.name, change)

    def update(self, tags: list[str]) -> list[str]:
        """The new tag list from the current one."""
        raise NotImplementedError

    async def execute(self) -> Any:
        """Apply the change."""
        self.store_tags(self.current_tags())
        return None


@register
class TagsSet(_TagsOperation):
    """Add tags to the cluster, a node or an instance."""

    OPCODE = OpTagsSet

    async def check_prereq(self) -> None:
        """The object exists and will not exceed the tag limit."""
        current = self.current_tags()
        if len(set(current) | set(self.op.tags)) > MAX_TAGS_PER_OBJECT:
            raise OpError(
                f"too many tags (at most {MAX_TAGS_PER_OBJECT})", kind=ErrorKind.NO_RESOURCES
            )

    def update(self, tags: list[str]) -> list[str]:
        """Current tags plus the new ones (no duplicates)."""
        return list(dict.fromkeys([*tags, *self.op.tags]))


@register
class TagsDel(_TagsOperation):
    """Remove tags from the cluster, a node or an instance."""

    OPCODE = OpTagsDel

    async def check_prereq(self) -> None:
        """Every tag to remove is present (NOT_FOUND naming the missing ones)."""
        missing = [t for t in self.op.tags if t not in self.current_tags()]
        if missing:
            raise OpError(
                f"tag(s) not found: {', '.join(missing)}", kind=ErrorKind.NOT_FOUND, tags=missing
            )

    def update(self, tags: list[str]) -> list[str]:
        """Current tags minus the given ones."""
        return [t for t in tags if t not in self.op.tags]

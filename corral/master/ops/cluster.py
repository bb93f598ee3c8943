"""Operations: cluster verify and the watcher's pause (issue 4).

``OP_CLUSTER_VERIFY`` (``corral cluster verify``, ``gnt-cluster verify``) checks the whole
cluster the way Ganeti's ``LUClusterVerify*`` do, read-only:

1. the configuration alone (:func:`~corral.master.ops.verify_checks.check_config`);
2. every online node, asked *in parallel* (one round of calls, all nodes at once):
   ``version``, ``file_checksums`` (the cluster files of its role), ``hv_verify``,
   ``all_instances_info``, ``volume_list`` (vm_capable nodes) and, for the N+1 check,
   ``node_info``. Offline nodes are skipped (and named); an unreachable node is one ENODERPC
   error and nothing else is concluded about it or its instances;
3. the comparisons (``verify_checks``): versions, file checksums, hypervisor problems,
   instances running where the config says and nowhere else, orphan instances, orphan volumes
   and missing disks, N+1 memory for instances that can fail over.

Each phase writes Ganeti's progress lines (``* Verifying ...``) and its findings
(``  - ERROR: node node2: ...``) into the job log; the result is
``{"ok": bool, "findings": [...]}``. Verify holds the cluster, every node and every instance
lock *shared*, like Ganeti: it waits for operations that change them (a migration half done
would look like an instance on two nodes) and runs alongside other readers.

``OP_CLUSTER_SET_WATCHER_PAUSE`` and ``OP_CLUSTER_WATCHER_INFO`` write and read the watcher's
pause in the store (see ``master/watcher.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, TypeVar

import corral
from corral.common.errors import CorralError, ParamError
from corral.master.locking import CLUSTER_LOCK, LockMode, instance_lock, node_lock
from corral.master.ops.base import Operation, register
from corral.master.ops.verify_checks import (
    CODES,
    Findings,
    candidate_role,
    check_config,
    check_files,
    check_hypervisors,
    check_instances,
    check_n_plus_one,
    check_version,
    check_volumes,
    summary,
)
from corral.master.rpcrunner import call_each
from corral.master.watcher import set_pause, watcher_info
from corral.objects.node import Node
from corral.objects.opcodes_cluster import (
    OpClusterSetWatcherPause,
    OpClusterVerify,
    OpClusterWatcherInfo,
)
from corral.objects.params.fill import filled_beparams
from corral.rpc.calls import (
    ALL_INSTANCES_INFO,
    HV_VERIFY,
    NODE_INFO,
    VERSION,
    AllInstancesInfoResponse,
    Empty,
    HvVerifyRequest,
    HvVerifyResponse,
    InstanceListRequest,
    Msg,
    NodeInfoRequest,
    NodeInfoResponse,
    VersionResponse,
)
from corral.rpc.calls_cluster import (
    FILE_CHECKSUMS,
    VOLUME_LIST,
    FileChecksumsRequest,
    FileChecksumsResponse,
    VolumeListRequest,
    VolumeListResponse,
)

Resp = TypeVar("Resp", bound=Msg)

#: Checks ``skip_checks`` may name (Ganeti's).
SKIPPABLE = frozenset({"nplusone_mem"})
#: Store prefix of node groups (when the cluster has any).
GROUPS_PREFIX = "/corral/groups/"
#: Seconds a node has to answer the first (version) call before it counts as unreachable.
REACH_TIMEOUT = 10.0


def group_names(config: Any) -> set[str] | None:
    """Names of the node groups in the store; None when the store holds no group at all."""
    names: set[str] = set()
    for kv in config.store.range(GROUPS_PREFIX):
        name = kv.key[len(GROUPS_PREFIX) :]
        try:
            value = json.loads(kv.value)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            name = value["name"]
        names.add(name)
    return names or None


@register
class ClusterVerify(Operation[OpClusterVerify]):
    """Verify the cluster; see the module docstring."""

    OPCODE = OpClusterVerify
    IDEMPOTENT = True

    def check_arguments(self) -> None:
        """Known error codes and skippable checks only.

        Raises:
            ParamError: naming the unknown codes or checks.
        """
        problems = {}
        unknown = sorted(set(self.op.ignore_errors) - set(CODES))
        if unknown:
            problems["ignore_errors"] = (
                f"unknown error code(s) {', '.join(unknown)} (known: {', '.join(sorted(CODES))})"
            )
        bad = sorted(set(self.op.skip_checks) - SKIPPABLE)
        if bad:
            problems["skip_checks"] = (
                f"unknown check(s) {', '.join(bad)} (known: {', '.join(sorted(SKIPPABLE))})"
            )
        if problems:
            raise ParamError(problems, context="OP_CLUSTER_VERIFY")

    def declare_locks(self) -> dict[str, LockMode]:
        """Everything shared: the cluster, every node, every instance."""
        config = self.ctx.config
        locks = {CLUSTER_LOCK: LockMode.SHARED}
        locks.update({node_lock(n.name): LockMode.SHARED for n in config.nodes()})
        locks.update({instance_lock(i.name): LockMode.SHARED for i in config.instances()})
        return locks

    def _report(self, out: Findings, start: int) -> int:
        for finding in out.items[start:]:
            self.feedback(f"  - {finding.format(error_codes=self.op.error_codes)}")
        return len(out.items)

    async def execute(self) -> Any:
        """Gather the facts from every online node and check them.

        Returns:
            ``{"ok": bool, "findings": [{"severity", "code", "item_type", "item",
            "message"}]}``.

        Raises:
            StoreError: the store cannot be read (node failures are findings, not errors).
        """
        config, runner = self.ctx.config, self.ctx.runner
        cluster = self.cluster
        nodes = config.nodes()
        instances = config.instances()
        out = Findings(self.op.ignore_errors)
        shown = 0

        self.feedback("* Verifying cluster config")
        check_config(cluster, nodes, instances, group_names(config), out)
        shown = self._report(out, shown)

        online = [n for n in nodes if not n.offline]
        offline = sorted(n.name for n in nodes if n.offline)
        if offline:
            self.feedback(f"* Skipping {len(offline)} offline node(s): {', '.join(offline)}")
        vm_nodes = [n for n in online if n.vm_capable]
        shared_dir = cluster.shared_file_storage_dir
        shared_lister = self._shared_lister(vm_nodes) if shared_dir else None
        want_n1 = "nplusone_mem" not in self.op.skip_checks and any(
            d.dev_type == "sharedfile" for i in instances for d in i.disks
        )
        hvs = list(cluster.enabled_hypervisors)
        master = cluster.master_node

        self.feedback(f"* Gathering data ({len(online)} nodes)")
        started = time.monotonic()
        # NOTE: a short version call first: a node that does not answer it (down, or cut off
        # with a pooled connection that would otherwise wait for each call's full timeout) is
        # reported once and left out of the other calls.
        versions = await call_each(
            runner, online, VERSION, lambda n: Empty(), timeout=REACH_TIMEOUT
        )
        reachable = [n for n in online if not isinstance(versions[n.name], CorralError)]
        vm_reachable = [n for n in reachable if n.vm_capable]
        files, hv, live, volumes, infos = await asyncio.gather(
            call_each(
                runner,
                reachable,
                FILE_CHECKSUMS,
                lambda n: FileChecksumsRequest(role=candidate_role(n, master)),
            ),
            call_each(runner, reachable, HV_VERIFY, lambda n: HvVerifyRequest(hypervisors=hvs)),
            call_each(
                runner,
                reachable,
                ALL_INSTANCES_INFO,
                lambda n: InstanceListRequest(hypervisors=hvs),
            ),
            call_each(
                runner,
                vm_reachable,
                VOLUME_LIST,
                lambda n: VolumeListRequest(
                    dirs=[cluster.file_storage_dir],
                    shared_dirs=[shared_dir] if n.name == shared_lister else [],
                ),
            ),
            call_each(
                runner,
                reachable if want_n1 else [],
                NODE_INFO,
                lambda n: NodeInfoRequest(hypervisors=hvs),
            ),
        )
        self.ctx.log.debug("verify: gathered data in %.3fs", time.monotonic() - started)

        self.feedback("* Verifying node status")
        healthy: set[str] = set()
        for node in online:
            answer = versions[node.name]
            if isinstance(answer, CorralError):
                out.add("ENODERPC", node.name, f"cannot reach the node daemon: {answer}")
                continue
            assert isinstance(answer, VersionResponse)
            if check_version(
                node.name,
                answer,
                software_version=corral.__version__,
                protocol_version=corral.PROTOCOL_VERSION,
                out=out,
            ):
                healthy.add(node.name)

        def answers(results: dict[str, Any], call: str, typ: type[Resp]) -> dict[str, Resp]:
            good: dict[str, Resp] = {}
            for name, answer in sorted(results.items()):
                if name not in healthy:
                    continue
                if isinstance(answer, CorralError):
                    out.add("ENODERPC", name, f"call {call} failed: {answer}")
                elif isinstance(answer, typ):
                    good[name] = answer
            return good

        file_answers = answers(files, FILE_CHECKSUMS.name, FileChecksumsResponse)
        hv_answers = answers(hv, HV_VERIFY.name, HvVerifyResponse)
        live_answers = answers(live, ALL_INSTANCES_INFO.name, AllInstancesInfoResponse)
        volume_answers = answers(volumes, VOLUME_LIST.name, VolumeListResponse)
        info_answers = answers(infos, NODE_INFO.name, NodeInfoResponse)
        check_files(master, file_answers, out)
        for name, hv_answer in hv_answers.items():
            check_hypervisors(name, hv_answer.problems, out)
        shown = self._report(out, shown)

        self.feedback("* Verifying instance status")
        live_by_node = {
            name: {i.name: i for i in answer.instances} for name, answer in live_answers.items()
        }
        check_instances(nodes, instances, live_by_node, out)
        shown = self._report(out, shown)

        self.feedback("* Verifying orphan volumes")
        check_volumes(
            instances,
            cluster.file_storage_dir,
            volume_answers,
            shared_dir,
            shared_lister if shared_lister in volume_answers else None,
            out,
        )
        shown = self._report(out, shown)

        if want_n1:
            self.feedback("* Verifying N+1 memory redundancy")
            free = {}
            for name, info in info_answers.items():
                hv_free = [h.memory_free for h in info.hypervisors.values()]
                free[name] = min(hv_free) if hv_free else info.memory_free
            maxmem = {i.name: int(filled_beparams(cluster, i)["maxmem"]) for i in instances}
            check_n_plus_one(nodes, instances, free, maxmem, out)
            shown = self._report(out, shown)

        errors = sum(1 for f in out.items if f.severity == "ERROR")
        warnings = len(out.items) - errors
        self.feedback(
            f"* Verify {'passed' if out.ok else 'failed'}: {errors} error(s), "
            f"{warnings} warning(s), {len(online)} node(s) asked"
        )
        return summary(out.items)

    def _shared_lister(self, vm_nodes: list[Node]) -> str | None:
        """The node that lists the shared storage dir: the master if it can, else the first."""
        names = sorted(n.name for n in vm_nodes)
        if self.cluster.master_node in names:
            return self.cluster.master_node
        return names[0] if names else None


@register
class ClusterSetWatcherPause(Operation[OpClusterSetWatcherPause]):
    """Pause the watcher until now + duration, or resume it; the pause lives in the store."""

    OPCODE = OpClusterSetWatcherPause
    IDEMPOTENT = True

    def check_arguments(self) -> None:
        """A duration, if given, is positive and below ten years.

        Raises:
            ParamError: naming ``duration``.
        """
        d = self.op.duration
        if d is not None and not 0 < d <= 10 * 365 * 86400:
            raise ParamError({"duration": f"must be between 0 and ten years, got {d}"})

    def declare_locks(self) -> dict[str, LockMode]:
        """No locks: the pause is one store key of its own."""
        return {}

    async def execute(self) -> Any:
        """Write (or delete) the pause; the watcher state afterwards (see watcher info).

        Raises:
            StoreError: the store cannot be written.
        """
        now = time.time()
        pause = set_pause(self.ctx.config, self.op.duration, now)
        if pause is None:
            self.feedback("watcher resumed")
        else:
            self.feedback(f"watcher paused until {time.ctime(pause.until)}")
        return watcher_info(self.ctx.config, now)


@register
class ClusterWatcherInfo(Operation[OpClusterWatcherInfo]):
    """The watcher's pause and restart records (read-only)."""

    OPCODE = OpClusterWatcherInfo
    IDEMPOTENT = True

    def declare_locks(self) -> dict[str, LockMode]:
        """No locks: one store read."""
        return {}

    async def execute(self) -> Any:
        """See :class:`OpClusterWatcherInfo`.

        Raises:
            StoreError: the store cannot be read.
        """
        return watcher_info(self.ctx.config, time.time())

"""The master's watcher: reconciles what runs with what the store says should run.

Each round (:meth:`Watcher.run_once`) asks every online node once for its instances
(``all_instances_info``, in parallel) and does two things, as Ganeti's ``ganeti-watcher``:

* **User down.** An instance marked up whose guest powered itself off is reported by its
  primary node in state SHUTDOWN (the KVM driver learns it from QEMU's own ``SHUTDOWN``
  event); the API shows it ``USER_down``. The watcher submits
  ``OP_INSTANCE_SHUTDOWN(timeout=0, admin_state_source="user")``: the store records it down
  *by its user* and the node cleans up what the guest left. It is never restarted.
* **Restart after a crash.** An instance marked up (``admin_state`` up, source admin) that is
  not running on its primary node — QEMU was killed or died (``ERROR_down``), or the guest
  crashed (state CRASHED) — is started again there by a job with ``OP_INSTANCE_STARTUP``
  (``no_remember``: the admin state stays what the administrator set). At most
  :data:`MAX_RESTART_ATTEMPTS` attempts per instance; after that the watcher gives up, logs it
  once and leaves the instance alone until it is seen running again or the administrator
  changes its state. Instances that are ``USER_down`` or ``ADMIN_down`` are never touched.
  Instances whose primary node is offline or does not answer are skipped: the watcher never
  starts an instance anywhere but on its primary node, and never while it runs on another
  node (half of a migration, or a wrong start that ``cluster verify`` reports).

One job per instance is in flight at a time. The operations re-check the live state under the
instance's lock, so an instance started again (or shut down) between the watcher's look and
its job is left as it is; the remaining window — an administrator's shutdown that lands
between the watcher's look and its restart job — leaves the instance running while marked
down (``ERROR_up``, reported by ``cluster verify``), never the admin state overwritten.

**Pause.** ``corral cluster watcher pause DURATION`` (``gnt-cluster watcher pause``) submits
``OP_CLUSTER_SET_WATCHER_PAUSE``: the operation writes ``/corral/watcher/pause`` (the expiry
time) in the store, so the pause holds whichever master leads, and expires by itself. A paused
watcher does nothing at all. ``continue`` deletes the key; ``info`` reads it.

**Restart bookkeeping** (attempts per instance) is kept in the store as well
(``/corral/watcher/restarts``), so a new leader does not start counting from zero.

The master daemon runs :meth:`Watcher.run` every ``CORRAL_WATCHER_INTERVAL`` seconds (default
:data:`DEFAULT_INTERVAL`; 0 disables it) on the leader only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from corral.common.errors import CorralError, RevisionConflict
from corral.hypervisor.base import InstanceInfo, InstanceState
from corral.master.config import ClusterConfig, DeleteKey, PutObject
from corral.master.rpcrunner import call_many
from corral.objects.instance import AdminState, AdminStateSource, Instance
from corral.objects.opcodes import OpInstanceShutdown, OpInstanceStartup
from corral.rpc.calls import ALL_INSTANCES_INFO, AllInstancesInfoResponse, InstanceListRequest

if TYPE_CHECKING:
    from corral.master.service import MasterService

log = logging.getLogger(__name__)

#: Seconds between two watcher rounds.
DEFAULT_INTERVAL = 30.0
ENV_INTERVAL = "CORRAL_WATCHER_INTERVAL"
#: Restart attempts per crashed instance before the watcher gives up (Ganeti's MAXTRIES).
MAX_RESTART_ATTEMPTS = 5

#: Store key of the pause (a :class:`WatcherPause`).
PAUSE_KEY = "/corral/watcher/pause"
#: Store key of the restart bookkeeping (a :class:`RestartBook`).
RESTARTS_KEY = "/corral/watcher/restarts"

_RUNNING = (InstanceState.RUNNING, InstanceState.PAUSED)


def interval_from_env(default: float = DEFAULT_INTERVAL) -> float:
    """The watcher interval from ``CORRAL_WATCHER_INTERVAL`` (bad values: the default)."""
    raw = os.environ.get(ENV_INTERVAL, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        log.warning("ignoring %s=%r: not a number", ENV_INTERVAL, raw)
        return default
    return max(0.0, value)


# --- state in the store ----------------------------------------------------------------------


class WatcherPause(BaseModel):
    """The watcher is paused until ``until`` (epoch seconds)."""

    model_config = ConfigDict(extra="forbid")

    until: float
    set_at: float


class RestartRecord(BaseModel):
    """Restart attempts of one instance since it was last seen running."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = 0
    last: float = 0.0
    gave_up: bool = False


class RestartBook(BaseModel):
    """Restart records by instance name."""

    model_config = ConfigDict(extra="forbid")

    instances: dict[str, RestartRecord] = Field(default_factory=dict)


def read_pause(config: ClusterConfig, now: float) -> WatcherPause | None:
    """The pause in force at ``now`` (an expired pause is None).

    Raises:
        StoreError: the store cannot be read.
    """
    current = config.read(PAUSE_KEY, WatcherPause)
    if current is None or current.value.until <= now:
        return None
    return current.value


def set_pause(config: ClusterConfig, duration: float | None, now: float) -> WatcherPause | None:
    """Pause the watcher for ``duration`` seconds from ``now``; None or <= 0 resumes it.

    Returns:
        The pause now in force (None: not paused).

    Raises:
        StoreError: the store cannot be written.
    """
    if duration is None or duration <= 0:
        config.commit([DeleteKey(PAUSE_KEY, None)])
        return None
    pause = WatcherPause(until=now + duration, set_at=now)
    config.commit([PutObject(PAUSE_KEY, pause, None)])
    return pause


def read_restarts(config: ClusterConfig) -> tuple[RestartBook, int]:
    """The restart bookkeeping and its revision (0: none stored yet).

    Raises:
        StoreError: the store cannot be read.
    """
    current = config.read(RESTARTS_KEY, RestartBook)
    if current is None:
        return RestartBook(), 0
    return current.value, current.revision


def watcher_info(config: ClusterConfig, now: float) -> dict[str, Any]:
    """What ``watcher info`` shows: the pause and the restart records.

    Raises:
        StoreError: the store cannot be read.
    """
    pause = read_pause(config, now)
    book, _ = read_restarts(config)
    return {
        "paused": pause is not None,
        "paused_until": pause.until if pause else None,
        "restarts": {name: rec.model_dump() for name, rec in sorted(book.instances.items())},
    }


# --- the watcher -----------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Snapshot:
    """One round's view: live instances of each node that answered."""

    by_node: dict[str, dict[str, InstanceInfo]]
    unreachable: set[str]
    #: Instances with a job in flight when the nodes were asked (a watcher job, or any job
    #: holding or waiting for the instance's lock): their live state may predate that job's
    #: end, so no decision is made on them this round.
    busy: set[str] = dataclasses.field(default_factory=set)
    #: Instances meant to run (admin state up) before the nodes were asked. One set up by a
    #: job that ran meanwhile (``instance add`` marks it up, then starts it) is judged next
    #: round, not against a live state older than its start.
    up_before: set[str] = dataclasses.field(default_factory=set)

    def running_on(self, name: str) -> list[str]:
        return sorted(
            node
            for node, infos in self.by_node.items()
            if name in infos and infos[name].state in _RUNNING
        )


class Watcher:
    """Periodic reconciliation; see the module docstring.

    Args:
        service: the master service (store, runner, job submission).
        interval: seconds between rounds in :meth:`run` (0: :meth:`run` returns at once).
        max_restarts: restart attempts per instance before giving up.
        clock: epoch seconds (tests inject one).
    """

    def __init__(
        self,
        service: MasterService,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_restarts: int = MAX_RESTART_ATTEMPTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.interval = interval
        self.max_restarts = max_restarts
        self.clock = clock
        self._pending: dict[str, int] = {}  # instance name -> job id in flight
        self._paused_logged = False

    def _in_flight(self, name: str) -> bool:
        job_id = self._pending.get(name)
        if job_id is None:
            return False
        try:
            if not self.service.get_job(job_id).status.finalized:
                return True
        except CorralError:
            pass
        del self._pending[name]
        return False

    async def _snapshot(self) -> _Snapshot:
        # NOTE: taken before the nodes are asked. A job that ends while they answer would
        # otherwise look finished next to a live state from before it ran (a restart done
        # twice, the second a no-op at best).
        busy = {name for name in list(self._pending) if self._in_flight(name)}
        busy |= self._locked_instances()
        config = self.service.config
        up_before = {i.name for i in config.instances() if i.admin_state is AdminState.UP}
        cluster = config.cluster()
        nodes = [n for n in config.nodes() if not n.offline]
        answers = await call_many(
            self.service.runner,
            nodes,
            ALL_INSTANCES_INFO,
            InstanceListRequest(hypervisors=list(cluster.enabled_hypervisors)),
        )
        by_node: dict[str, dict[str, InstanceInfo]] = {}
        unreachable: set[str] = set()
        for node_name, answer in answers.items():
            if isinstance(answer, CorralError):
                log.debug("watcher: node %s unavailable: %s", node_name, answer)
                unreachable.add(node_name)
                continue
            assert isinstance(answer, AllInstancesInfoResponse)
            by_node[node_name] = {i.name: i for i in answer.instances}
        return _Snapshot(by_node, unreachable, busy, up_before)

    def _locked_instances(self) -> set[str]:
        """Instances whose lock a job holds or waits for (on this master's executor)."""
        return {
            entry["name"].split("/", 1)[1]
            for entry in self.service.lock_status()
            if entry["name"].startswith("instance/") and (entry["owners"] or entry["pending"])
        }

    def _undecidable(self, name: str, snap: _Snapshot) -> bool:
        """True when this round must leave ``name`` alone (see :class:`_Snapshot`)."""
        return (
            name in snap.busy
            or name not in snap.up_before
            or self._in_flight(name)
            or name in self._locked_instances()
        )

    # --- user down ------------------------------------------------------------------------

    async def user_down(self, snapshot: _Snapshot | None = None) -> dict[str, int]:
        """Submit the cleanup of every instance marked up whose guest powered itself off.

        Only what the instance's primary node reports counts. Unreachable nodes are skipped.

        Returns:
            The jobs submitted, by instance name.

        Raises:
            StoreError: the store cannot be read.
        """
        wanted = [i for i in self.service.config.instances() if i.admin_state is AdminState.UP]
        if not wanted:
            return {}
        snap = snapshot or await self._snapshot()
        submitted: dict[str, int] = {}
        for inst in wanted:
            if self._undecidable(inst.name, snap):
                continue
            info = snap.by_node.get(inst.primary_node, {}).get(inst.name)
            if info is None or info.state is not InstanceState.SHUTDOWN:
                continue
            op = OpInstanceShutdown(
                instance_name=inst.name,
                timeout=0,
                admin_state_source="user",
                reason=[["corral:watcher", "the guest powered itself off", time.time_ns()]],
            )
            job_id = await self.service.submit_job([op])
            self._pending[inst.name] = job_id
            submitted[inst.name] = job_id
            log.info(
                "instance %s powered itself off on %s: recording it user-down (job %d)",
                inst.name,
                inst.primary_node,
                job_id,
            )
        return submitted

    # --- restart after a crash ------------------------------------------------------------

    async def restart_crashed(self, snapshot: _Snapshot | None = None) -> dict[str, int]:
        """Submit a restart of every instance that should run but crashed (see module doc).

        Returns:
            The jobs submitted, by instance name.

        Raises:
            StoreError: the store cannot be read.
        """
        config = self.service.config
        instances = config.instances()
        nodes = {n.name: n for n in config.nodes()}
        book, revision = read_restarts(config)
        before = book.model_copy(deep=True)
        wanted = {
            i.name: i
            for i in instances
            if i.admin_state is AdminState.UP
            and i.admin_state_source is AdminStateSource.ADMIN
            and not i.suspended
        }
        # forget instances that are gone or no longer meant to run (admin decided)
        for name in list(book.instances):
            if name not in wanted:
                del book.instances[name]
        snap = snapshot or await self._snapshot()
        submitted: dict[str, int] = {}
        now = self.clock()
        for inst in wanted.values():
            node = nodes.get(inst.primary_node)
            if node is None or node.offline or inst.primary_node not in snap.by_node:
                continue  # offline or unreachable: nothing known, nothing done
            info = snap.by_node[inst.primary_node].get(inst.name)
            if info is not None and info.state in _RUNNING:
                if book.instances.pop(inst.name, None) is not None:
                    log.info("instance %s runs again on %s", inst.name, inst.primary_node)
                continue
            if info is not None and info.state is InstanceState.SHUTDOWN:
                continue  # powered off by its user: user_down's business
            elsewhere = [n for n in snap.running_on(inst.name) if n != inst.primary_node]
            if elsewhere or self._undecidable(inst.name, snap):
                continue
            attempt = self._book_attempt(inst, book, now)
            if attempt is not None:
                submitted[inst.name] = await self._submit_restart(inst, attempt)
        if book != before:
            self._save(config, book, revision)
        return submitted

    def _book_attempt(self, inst: Instance, book: RestartBook, now: float) -> int | None:
        """Count one restart attempt; its number, or None when the watcher gives up."""
        rec = book.instances.setdefault(inst.name, RestartRecord())
        if rec.attempts >= self.max_restarts:
            if not rec.gave_up:
                rec.gave_up = True
                log.error(
                    "instance %s is down on %s after %d restart attempts: giving up "
                    "(it is retried once it was seen running or its admin state changes)",
                    inst.name,
                    inst.primary_node,
                    rec.attempts,
                )
            return None
        rec.attempts += 1
        rec.last = now
        return rec.attempts

    async def _submit_restart(self, inst: Instance, attempt: int) -> int:
        op = OpInstanceStartup(
            instance_name=inst.name,
            no_remember=True,
            reason=[
                [
                    "corral:watcher",
                    f"restart after a crash (attempt {attempt}/{self.max_restarts})",
                    time.time_ns(),
                ]
            ],
        )
        job_id = await self.service.submit_job([op])
        self._pending[inst.name] = job_id
        log.warning(
            "instance %s should run but is down on %s: restarting it (attempt %d/%d, job %d)",
            inst.name,
            inst.primary_node,
            attempt,
            self.max_restarts,
            job_id,
        )
        return job_id

    @staticmethod
    def _save(config: ClusterConfig, book: RestartBook, revision: int) -> None:
        change: PutObject | DeleteKey
        if book.instances:
            change = PutObject(RESTARTS_KEY, book, revision)
        else:
            change = DeleteKey(RESTARTS_KEY, revision if revision else None)
        try:
            config.commit([change])
        except RevisionConflict:
            log.warning("watcher: restart records changed meanwhile; not saved this round")

    # --- rounds ---------------------------------------------------------------------------

    def paused(self) -> WatcherPause | None:
        """The pause in force now, if any.

        Raises:
            StoreError: the store cannot be read.
        """
        return read_pause(self.service.config, self.clock())

    async def run_once(self) -> dict[str, int]:
        """One watcher round; failures are logged, never raised.

        Returns:
            The jobs submitted (user-down records and restarts), by instance name.
        """
        try:
            pause = self.paused()
            if pause is not None:
                if not self._paused_logged:
                    log.info("watcher paused until %s", time.ctime(pause.until))
                    self._paused_logged = True
                return {}
            self._paused_logged = False
            snap = await self._snapshot()
            submitted = await self.user_down(snap)
            submitted.update(await self.restart_crashed(snap))
            return submitted
        except CorralError as exc:
            log.warning("watcher round failed: %s", exc)
            return {}

    async def run(self, stop: asyncio.Event) -> None:
        """Run rounds every ``interval`` seconds until ``stop`` is set (0: never)."""
        if self.interval <= 0:
            return
        while not stop.is_set():
            await self.run_once()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                continue

"""The master's watcher: reconciles what runs with what the store says should run.

For now it does one thing, Ganeti's "user down" cleanup (Ganeti's ``ganeti-watcher`` does the
same with ``OpInstanceShutdown(admin_state_source=user)``): an instance marked up whose guest
powered itself off is reported by its primary node in state SHUTDOWN (the KVM driver learns it
from QEMU's own ``SHUTDOWN`` event, see ``hypervisor/kvm/events.py``). Until the watcher acts,
the API shows it ``USER_down``. The watcher then submits a job with
``OP_INSTANCE_SHUTDOWN(timeout=0, admin_state_source="user")``: the store records the instance
down *by its user* (status ``USER_down``, ``admin_state_source`` ``user``) and the node cleans
up what the guest left (run files, taps). A crashed or killed guest is not reported as
SHUTDOWN, stays marked up and shows ``ERROR_down``.

The shutdown operation re-checks the live state under the instance's lock, so an instance
started again between the watcher's look and the job is left alone. One job per instance is
in flight at a time.

The master daemon runs :meth:`Watcher.run` every ``CORRAL_WATCHER_INTERVAL`` seconds (default
:data:`DEFAULT_INTERVAL`; 0 disables it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from corral.common.errors import CorralError
from corral.hypervisor.base import InstanceState
from corral.master.rpcrunner import call_many
from corral.master.service import MasterService
from corral.objects.instance import AdminState
from corral.objects.opcodes import OpInstanceShutdown
from corral.rpc.calls import ALL_INSTANCES_INFO, AllInstancesInfoResponse, InstanceListRequest

log = logging.getLogger(__name__)

#: Seconds between two watcher rounds.
DEFAULT_INTERVAL = 30.0
ENV_INTERVAL = "CORRAL_WATCHER_INTERVAL"


def interval_from_env(default: float = DEFAULT_INTERVAL) -> float:
    """The watcher interval from ``CORRAL_WATCHER_INTERVAL`` (bad values: the default)."""
    raw = os.environ.get(ENV_INTERVAL, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        log.warning("ignoring %s=%r: not a number", ENV_INTERVAL, raw)
        return default
    return max(0.0, value)


class Watcher:
    """Periodic reconciliation; see the module docstring."""

    def __init__(self, service: MasterService, *, interval: float = DEFAULT_INTERVAL) -> None:
        self.service = service
        self.interval = interval
        self._pending: dict[str, int] = {}  # instance name -> job id of its cleanup

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

    async def user_down(self) -> dict[str, int]:
        """Submit the cleanup of every instance marked up whose guest powered itself off.

        Only what the instance's primary node reports counts. Unreachable nodes are skipped.

        Returns:
            The jobs submitted, by instance name.

        Raises:
            StoreError: the store cannot be read.
        """
        config = self.service.config
        cluster = config.cluster()
        wanted = {
            i.name: i
            for i in config.instances()
            if i.admin_state is AdminState.UP and not self._in_flight(i.name)
        }
        if not wanted:
            return {}
        nodes = [n for n in config.nodes() if not n.offline]
        answers = await call_many(
            self.service.runner,
            nodes,
            ALL_INSTANCES_INFO,
            InstanceListRequest(hypervisors=list(cluster.enabled_hypervisors)),
        )
        submitted: dict[str, int] = {}
        for node_name, answer in answers.items():
            if isinstance(answer, CorralError):
                log.debug("watcher: node %s unavailable: %s", node_name, answer)
                continue
            assert isinstance(answer, AllInstancesInfoResponse)
            for info in answer.instances:
                inst = wanted.get(info.name)
                if inst is None or inst.primary_node != node_name:
                    continue
                if info.state is not InstanceState.SHUTDOWN:
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
                    node_name,
                    job_id,
                )
        return submitted

    async def run_once(self) -> dict[str, int]:
        """One watcher round; failures are logged, never raised."""
        try:
            return await self.user_down()
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

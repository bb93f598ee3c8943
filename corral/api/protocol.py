"""What the API layer needs from the master: the :class:`MasterServiceApi` protocol.

The real implementation is ``corral.master.service.MasterService`` (TEAM-BRIEF contract). The
API codes against this structural protocol instead of importing the class, so that the API
and its tests do not depend on the master's internals and a test double (an in-memory fake
in ``tests/unit/api``) can stand in for it. Every method listed here is part of the contract;
their failure behaviour is the master's:

* lookups of a single object (``job``, ``node``, ``instance``) raise a ``CorralError`` with
  kind ``NOT_FOUND``;
* ``submit_job`` raises ``ParamError``/``OpError`` for ops the master refuses at once;
* ``live_*`` calls never raise for unreachable nodes: those are skipped (instances) or
  reported as ``None`` (nodes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from corral.hypervisor.base import InstanceInfo
from corral.objects.cluster import Cluster
from corral.objects.instance import Instance
from corral.objects.job import Job
from corral.objects.node import Node
from corral.objects.opcodes import OpCode
from corral.rpc.calls import NodeInfoResponse, OsInfo


class MasterServiceApi(Protocol):
    """The subset of ``MasterService`` used by ``corral.api``."""

    # --- jobs ------------------------------------------------------------------------------
    async def submit_job(self, ops: Sequence[OpCode]) -> int:
        """Queue a job made of ``ops`` and return its id."""
        ...

    def get_job(self, job_id: int) -> Job:
        """Return one job (NOT_FOUND if unknown)."""
        ...

    def list_jobs(self) -> list[Job]:
        """Return every job in the queue."""
        ...

    async def cancel_job(self, job_id: int) -> tuple[bool, str]:
        """Cancel a job that has not started; ``(success, message)``."""
        ...

    async def wait_for_job_change(
        self,
        job_id: int,
        fields: list[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
        timeout: float,
    ) -> dict[str, Any] | None:
        """Long-poll a job: ``None`` on timeout, else ``{"job_info", "log_entries"}``."""
        ...

    def job_fields(self, job: Job, fields: list[str]) -> list[Any]:
        """Values of Ganeti job fields (id, status, ops, opresult, ...) for ``job``."""
        ...

    # --- state reads -----------------------------------------------------------------------
    def cluster(self) -> Cluster:
        """The cluster object."""
        ...

    def nodes(self) -> list[Node]:
        """Every node."""
        ...

    def node(self, name: str) -> Node:
        """One node (NOT_FOUND if unknown)."""
        ...

    def instances(self) -> list[Instance]:
        """Every instance."""
        ...

    def instance(self, name: str) -> Instance:
        """One instance (NOT_FOUND if unknown)."""
        ...

    async def live_instances(self) -> dict[str, InstanceInfo]:
        """Running instances by name, from every reachable node."""
        ...

    async def live_nodes(self) -> dict[str, NodeInfoResponse | None]:
        """Live facts per node; ``None`` for a node that did not answer."""
        ...

    async def os_diagnose(self) -> list[OsInfo]:
        """Every OS definition found, merged over the nodes."""
        ...

    def is_leader(self) -> bool:
        """Whether this master is the leader (runs the jobs)."""
        ...

    def leader(self) -> str | None:
        """The leader master's node name (None while nobody leads)."""
        ...

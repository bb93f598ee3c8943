"""The base of every operation (Ganeti's LogicalUnit) and the OP_ID -> class registry.

An operation runs one opcode in phases, driven by the job executor::

    check_arguments()   pure checks of the opcode alone (also run at submission)
    declare_locks()     lock name -> shared/exclusive; the executor takes them all
    check_prereq()      checks against the state (store reads, read-only RPCs); no side effects
    pre hooks           COMPAT.md §5; a failing pre hook aborts (HookError)
    execute()           the work: node RPCs, then the store change in one transaction
    post hooks          failures only logged

``HPATH`` (hooks path, e.g. ``instance-start``) and ``HTYPE`` (``INSTANCE``, ``NODE``,
``CLUSTER``) enable hooks; :meth:`Operation.hooks_env` and :meth:`Operation.hooks_nodes` say
what the scripts get and where they run (see ``ops/hooks.py``).

Errors: checks raise :class:`~corral.common.errors.ParamError` or
:class:`~corral.common.errors.OpError` with the right :class:`ErrorKind` and a message naming
the field or object; node failures propagate as the node's own error. Operations do not log
their failure: the executor does, once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Literal, TypeVar

from corral.common.errors import CorralError, ErrorKind
from corral.common.paths import Paths
from corral.master.config import ClusterConfig
from corral.master.locking import CLUSTER_LOCK, LockMode
from corral.master.rpcrunner import NodeRunner
from corral.objects.cluster import Cluster
from corral.objects.opcodes import OpCode

OpT = TypeVar("OpT", bound=OpCode)
HookType = Literal["INSTANCE", "NODE", "CLUSTER"]


@dataclasses.dataclass(slots=True)
class OpContext:
    """What an operation may use while it runs.

    Attributes:
        config: the cluster state.
        runner: node RPCs.
        paths: this master's file layout (``DATA_DIR`` for hooks).
        job_id: the job being run (0 outside the executor).
        log: a logger carrying the job and opcode.
        feedback: add a line to the job's log (and the daemon log).
        check_cancel: raise :class:`JobCanceled` if the job was asked to stop; long
            operations call it at safe points (cancellation points).
    """

    config: ClusterConfig
    runner: NodeRunner
    paths: Paths
    job_id: int = 0
    log: logging.LoggerAdapter[logging.Logger] | logging.Logger = dataclasses.field(
        default_factory=lambda: logging.getLogger("corral.master.ops")
    )
    feedback: Callable[[str], None] = lambda _msg: None
    check_cancel: Callable[[], None] = lambda: None


class Operation(Generic[OpT]):
    """Base class of operations; see the module docstring for the phases."""

    #: Whether ``execute`` checks for cancellation while it runs (most operations change
    #: a node in steps that must not be cut short, so they cannot be interrupted).
    INTERRUPTIBLE: ClassVar[bool] = False
    #: Whether running ``execute`` again after a partial run is safe and gives the same end
    #: state (a start of a started instance, a query). When the leader master is lost while
    #: such an opcode runs, the new leader re-runs it; other opcodes fail instead (see
    #: ``jobs/executor.py``).
    IDEMPOTENT: ClassVar[bool] = False

    OPCODE: ClassVar[type[OpCode]]
    HPATH: ClassVar[str | None] = None
    HTYPE: ClassVar[HookType | None] = None

    def __init__(self, op: OpT, ctx: OpContext | None = None) -> None:
        self.op = op
        self._ctx = ctx
        #: What a ``dry_run`` opcode returns after its checks.
        self.dry_run_result: Any = None
        self._cluster: Cluster | None = None

    @property
    def ctx(self) -> OpContext:
        """The run context.

        Raises:
            CorralError: (FAULT) the operation was built without one (submission-time check).
        """
        if self._ctx is None:
            raise CorralError("operation has no run context", kind=ErrorKind.FAULT)
        return self._ctx

    @property
    def cluster(self) -> Cluster:
        """The cluster object, read once per operation."""
        if self._cluster is None:
            self._cluster = self.ctx.config.cluster()
        return self._cluster

    # --- phases ---------------------------------------------------------------------------

    def check_arguments(self) -> None:
        """Check the opcode alone (no store, no RPC). Runs at submission and before locking.

        Raises:
            ParamError: a bad argument, naming it.
            OpError: inconsistent arguments.
        """

    def declare_locks(self) -> dict[str, LockMode]:
        """The locks to hold from ``check_prereq`` to the end (default: cluster, shared).

        May read the store (e.g. to find an instance's primary node); the state is re-checked
        under the locks in ``check_prereq``.
        """
        return {CLUSTER_LOCK: LockMode.SHARED}

    async def check_prereq(self) -> None:
        """Check the operation can run against the current state, under the locks.

        Must not change anything (store or node); read-only RPCs are fine.

        Raises:
            OpError / ParamError: with the kind and the field or object at fault.
        """

    async def execute(self) -> Any:
        """Do the work and return a JSON-able result.

        Raises:
            CorralError: the step that failed; work already done is rolled back where the
                operation says so.
        """
        raise NotImplementedError

    # --- hooks ----------------------------------------------------------------------------

    def hooks_env(self) -> dict[str, str]:
        """Operation-specific hook variables, without the ``GANETI_`` prefix.

        Called before the pre hooks and again after ``execute`` for the ``GANETI_POST_*``
        copy (so it should describe the current state of the operation's object).
        """
        return {}

    def hooks_nodes(self) -> tuple[list[str], list[str]]:
        """Node names where the pre and the post hooks run (default: the master)."""
        master = [self.cluster.master_node]
        return master, master

    def hooks_target(self) -> str:
        """The ``OP_TARGET`` of the hooks (the object's name)."""
        return self.cluster.name

    # --- helpers --------------------------------------------------------------------------

    def feedback(self, message: str) -> None:
        """Add a line to the job log."""
        self.ctx.feedback(message)


#: Every operation class by the OP_ID of the opcode it runs.
OPERATIONS: dict[str, type[Operation[Any]]] = {}

OpClassT = TypeVar("OpClassT", bound=type[Operation[Any]])


def register(cls: OpClassT) -> OpClassT:
    """Class decorator adding an operation to :data:`OPERATIONS` under its opcode's OP_ID.

    Raises:
        ValueError: another operation already runs that opcode.
    """
    op_id = cls.OPCODE.OP_ID
    if op_id in OPERATIONS and OPERATIONS[op_id] is not cls:
        raise ValueError(f"two operations for {op_id}")
    OPERATIONS[op_id] = cls
    return cls


def operation_class(op_id: str) -> type[Operation[Any]]:
    """The operation running ``op_id`` (loading the operation modules on first use).

    Raises:
        OpError: no operation implements this opcode (kind INVALID).
    """
    load_operations()
    try:
        return OPERATIONS[op_id]
    except KeyError:
        from corral.common.errors import OpError

        raise OpError(
            f"opcode {op_id} is not supported by this master", kind=ErrorKind.INVALID
        ) from None


def load_operations() -> None:
    """Import every operation module so they register themselves."""
    from corral.master.ops import (  # noqa: F401
        cluster,
        groups,
        instance,
        instance_modify,
        instance_power,
        instance_query,
        misc,
        mobility,
        nodes,
    )

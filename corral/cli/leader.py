"""``corral cluster master-failover`` (``gnt-cluster master-failover``).

Run on the master candidate that is to become the master; it asks the current leader to step
down (it stops its job executor and turns the master IP down), makes the other candidates
defer, and returns once this node holds the leader lease (see
``docs/architecture/leadership.md``).
"""

from __future__ import annotations

from corral.cli.common import Cli
from corral.master.leader import master_failover


def cluster_master_failover(cli: Cli) -> None:
    """Make this node the master; print who it was before.

    Raises:
        CorralError: see :func:`corral.master.leader.master_failover` (not a candidate,
            already the master, no running corral-master here, no etcd store, timeout).
    """
    previous, leader = master_failover(cli.paths)
    was = f" (was {previous})" if previous else ""
    cli.print(f"Master failover done: {leader.node} is now the master{was}")

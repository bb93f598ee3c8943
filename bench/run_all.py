"""Run Corral's benchmarks: ``python -m bench.run_all [--quick] [--only NAME ...]``.

Each benchmark prints its table and writes ``bench/results/<name>.json``. The exit code is 0
when every selected benchmark ran, 1 when one failed (the others still run), 2 on bad usage.
Every daemon, guest and temporary root a benchmark creates is removed at its end, also on
failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from bench import (
    cluster_verify,
    hotplug,
    instance_migrate,
    instance_start,
    job_latency,
    leader_failover,
    list_scale,
    lxc,
    migration,
    xen,
)
from bench.harness import install_signal_handlers

BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {
    job_latency.NAME: job_latency.run,
    instance_start.NAME: instance_start.run,
    list_scale.NAME: list_scale.run,
    hotplug.NAME: hotplug.run,
    migration.NAME: migration.run,
    instance_migrate.NAME: instance_migrate.run,
    lxc.NAME: lxc.run,
    cluster_verify.NAME: cluster_verify.run,
    leader_failover.NAME: leader_failover.run,
    xen.NAME: xen.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced sizes for a smoke check (100 jobs, 2 KVM rounds, 1,000 instances)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    install_signal_handlers()
    selected = args.only or list(BENCHMARKS)
    outcome: dict[str, str] = {}
    for name in selected:
        print(f"\n=== {name}{' (quick)' if args.quick else ''} ===", flush=True)
        t0 = time.monotonic()
        try:
            BENCHMARKS[name](args.quick)
        except Exception:
            traceback.print_exc()
            outcome[name] = f"FAILED after {time.monotonic() - t0:.0f} s"
        else:
            outcome[name] = f"ok in {time.monotonic() - t0:.0f} s"
        sys.stdout.flush()
    print("\n=== summary ===")
    for name, text in outcome.items():
        print(f"{name}: {text}")
    return 1 if any(t.startswith("FAILED") for t in outcome.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

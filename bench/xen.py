"""Xen PV: instance start/stop through Corral's node RPCs against raw ``xl`` in the appliance.

Runs in the Xen test appliance (``make xen-appliance``; a real Xen 4.17 + dom0 under QEMU
TCG, see ``tests/integration/xen_appliance.py``), so absolute times are those of nested
emulation; the ratios are what matter.

* **setup** (not timed): a 64 MiB file disk created with the ``blockdev_create`` RPC, the
  built-in ``busybox`` OS installed on it by its ``create`` script in dom0 (kernel from the
  image's cache), instance ``bx1``: xen-pvm, 128 MiB, 1 vCPU, root /dev/xvda, console hvc0.
* **Corral**: the ``instance_start`` RPC (mutual TLS through the forwarded port to dom0's
  corral-noded, the xen-pvm driver: config file + ``xl create``), then a dom0-side wait until
  the guest console shows ``CORRAL-GUEST-UP``; the ``instance_shutdown`` RPC (``xl shutdown``,
  wait until the domain is gone).
* **raw xl**: the **same xl config** the driver wrote (copied from the driver's run
  directory; only ``on_poweroff`` changed from "preserve" to "destroy", else ``xl shutdown
  -w`` never returns), ``xl create`` through the appliance's test channel and the same
  dom0-side wait; ``xl shutdown -w`` and a poll until ``xl domid`` fails (the name is free).

Both halves go through one host->dom0 hop per command (RPC or test channel), so the ratio is
the driver's own overhead. Rounds alternate; reported are medians and Corral/raw ratios.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ms, print_table, summary, write_results
from corral.hypervisor.base import InstanceSpec
from corral.objects.params.hv import HV_SCHEMAS
from corral.rpc import calls
from corral.storage.base import VolumeSpec

NAME = "xen"
INSTANCE = "bx1"
UP = f"CORRAL-GUEST-UP {INSTANCE}"
SRC = "/run/corral-config/src/corral"
KERNELS = "/var/lib/corral/kernels"
DISK = f"/srv/corral/disks/{INSTANCE}/disk0"
RAW_CFG = "/tmp/bench-xen/raw.cfg"
CONSOLE = f"/var/log/xen/console/guest-{INSTANCE}.log"
#: dom0-side wait for the guest's ready line (polls every 50 ms, gives up after 300 s).
WAIT_UP = (
    f"i=0; until grep -q '{UP}' {CONSOLE} 2>/dev/null; do "
    f"i=$((i+1)); [ $i -lt 6000 ] || exit 1; sleep 0.05; done"
)
WAIT_GONE = (
    f"i=0; while xl domid {INSTANCE} >/dev/null 2>&1; do "
    f"i=$((i+1)); [ $i -lt 2400 ] || exit 1; sleep 0.05; done"
)


def _spec() -> InstanceSpec:
    hv = HV_SCHEMAS["xen-pvm"].defaults()
    hv.update(
        kernel_path=f"{KERNELS}/vmlinuz-kvmU",
        initrd_path=f"{KERNELS}/initrd-kvmU",
        root_path="/dev/xvda",
        kernel_args="console=hvc0",
    )
    return InstanceSpec(
        name=INSTANCE,
        uuid="b0e1c2d3-0000-4000-8000-00000000b001",
        hypervisor="xen-pvm",
        hvparams=hv,
        memory=128,
        min_memory=128,
        vcpus=1,
    )


def run_bench(rounds: int) -> dict[str, Any]:
    """Boot the appliance, set up ``bx1``, then ``rounds`` x (Corral, raw) start/stop."""
    from tests.integration.xen_appliance import XenAppliance  # the appliance lives with tests

    work = tempfile.mkdtemp(prefix="crlxen", dir="/tmp")
    app = XenAppliance(Path(work))
    c_start: list[float] = []
    c_stop: list[float] = []
    r_start: list[float] = []
    r_stop: list[float] = []
    try:
        app.start()
        boot = app.boot_seconds or 0.0
        volume = VolumeSpec(dev_type="file", logical_id=DISK, size=64, uuid="bx1-disk0")
        app.call(calls.BLOCKDEV_CREATE, calls.BlockdevRequest(volume=volume))
        app.sh("mkdir", "-p", "/tmp/bench-xen", check=True)
        app.sh(
            "env", f"INSTANCE_NAME={INSTANCE}", "DISK_COUNT=1", f"DISK_0_PATH={DISK}",
            f"CORRAL_KERNELS_DIR={KERNELS}", "CORRAL_CACHE_DIR=/var/cache/corral",
            f"{SRC}/osdefs/busybox/create", timeout=600, check=True,
        )  # fmt: skip
        start_req = calls.InstanceStartRequest(
            instance=_spec(), disks=[calls.DiskRef(index=0, volume=volume)]
        )
        stop_req = calls.InstanceShutdownRequest(name=INSTANCE, hypervisor="xen-pvm", timeout=120)

        def corral_round() -> None:
            app.sh("rm", "-f", CONSOLE, check=True)
            t0 = time.perf_counter()
            app.call(calls.INSTANCE_START, start_req)
            app.sh("sh", "-c", WAIT_UP, timeout=330, check=True)
            c_start.append(time.perf_counter() - t0)
            if not app.sh("test", "-f", RAW_CFG).ok:  # the driver's config, for the raw half
                found = app.sh("find", "/run/corral", "-name", f"{INSTANCE}.cfg", check=True)
                cfg = found.stdout.split()[0]
                app.sh("cp", cfg, RAW_CFG, check=True)
                # the driver uses on_poweroff = "preserve" (Ganeti: a guest's own poweroff is
                # seen as "shutdown") and destroys the stopped domain itself; raw `xl
                # shutdown -w` waits for the domain's death, so the raw copy destroys at once
                app.sh(
                    "sed", "-i", 's/^on_poweroff *=.*/on_poweroff = "destroy"/', RAW_CFG,
                    check=True,
                )  # fmt: skip
            t0 = time.perf_counter()
            app.call(calls.INSTANCE_SHUTDOWN, stop_req)
            c_stop.append(time.perf_counter() - t0)

        def raw_round() -> None:
            app.sh("rm", "-f", CONSOLE, check=True)
            t0 = time.perf_counter()
            app.sh("xl", "create", RAW_CFG, timeout=300, check=True)
            app.sh("sh", "-c", WAIT_UP, timeout=330, check=True)
            r_start.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            app.sh("xl", "shutdown", "-w", INSTANCE, timeout=300, check=True)
            app.sh("sh", "-c", WAIT_GONE, timeout=150, check=True)
            r_stop.append(time.perf_counter() - t0)

        corral_round()  # warm-up (page cache, first qdisk/loop setup); captures the config
        c_start.clear()
        c_stop.clear()
        for i in range(rounds):
            for half in (corral_round, raw_round) if i % 2 == 0 else (raw_round, corral_round):
                half()
    finally:
        if app.proc is not None and app.proc.poll() is None:
            app.sh("xl", "destroy", INSTANCE, timeout=60)
        app.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    return {
        "rounds": rounds,
        "appliance_boot_s": boot,
        "corral_start_s": summary(c_start),
        "corral_stop_s": summary(c_stop),
        "raw_xl_start_s": summary(r_start),
        "raw_xl_stop_s": summary(r_stop),
        "start_ratio": med(c_start) / med(r_start),
        "stop_ratio": med(c_stop) / med(r_stop),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print its table, write bench/results/xen.json."""
    rounds = 1 if quick else 3
    data = run_bench(rounds)
    print_table(
        f"Xen PV busybox guest in the appliance (TCG), {rounds} rounds, medians",
        ["what", "Corral", "raw xl", "ratio"],
        [
            ["start until CORRAL-GUEST-UP", ms(data["corral_start_s"]["p50"]),
             ms(data["raw_xl_start_s"]["p50"]), f"{data['start_ratio']:.2f}"],
            ["stop until the domain is gone", ms(data["corral_stop_s"]["p50"]),
             ms(data["raw_xl_stop_s"]["p50"]), f"{data['stop_ratio']:.2f}"],
        ],
    )  # fmt: skip
    write_results(NAME, data)
    return data

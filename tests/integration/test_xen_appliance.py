"""Smoke tests of the Xen test appliance (real Xen 4.17 + dom0 under QEMU TCG).

They check what every Xen integration test relies on: dom0's corral-noded answers over
mutual TLS through the forwarded port, the toolstack runs, and a PV guest of Corral's busybox
OS (its kernel from the image's cache, installed by the OS's own ``create`` script in dom0)
boots from its disk as /dev/xvda with console hvc0 and powers off cleanly on ``xl shutdown``.
The raw ``xl`` calls go through the appliance's TEST-ONLY command channel.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import corral
from corral.common.errors import CorralError
from corral.common.paths import Paths
from corral.rpc import tls
from corral.rpc.calls import VERSION, Empty
from corral.rpc.client import RpcClient
from tests.integration.xen_appliance import XenAppliance

pytestmark = [pytest.mark.xen, pytest.mark.slow, pytest.mark.timeout(1200)]

SRC = "/run/corral-config/src/corral"
WORK = "/tmp/xen-smoke"


def test_noded_answers_over_mutual_tls(xen_appliance: XenAppliance, tmp_path: Path) -> None:
    resp = xen_appliance.call(VERSION, Empty())
    assert resp.node_name == "xen1"
    assert resp.software_version == corral.__version__
    assert resp.protocol_version == corral.PROTOCOL_VERSION

    # a client whose certificate comes from another CA is refused by dom0's daemon
    other = Paths(str(tmp_path / "other"))
    tls.create_ca(other, "intruders")
    tls.issue_node_cert(other, "master", ["127.0.0.1"])

    async def intrude() -> None:
        client = RpcClient.from_paths(other)
        try:
            await client.call(xen_appliance.node, VERSION, Empty(), timeout=20)
        finally:
            await client.aclose()

    with pytest.raises(CorralError):
        asyncio.run(intrude())


def test_toolstack_runs(xen_appliance: XenAppliance) -> None:
    info = xen_appliance.sh("xl", "info", check=True).stdout
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in info.splitlines())
    )
    assert fields["xen_version"].startswith("4.17"), fields.get("xen_version")
    assert int(fields["nr_cpus"]) == 2
    listing = xen_appliance.sh("xl", "list", check=True).stdout
    assert "Domain-0" in listing
    assert xen_appliance.sh("ip", "link", "show", "xenbr0", check=True).ok


def test_raw_pv_busybox_guest_boots_and_shuts_down(xen_appliance: XenAppliance) -> None:
    app = xen_appliance
    name = "pvsmoke"
    sh = app.sh
    sh("rm", "-rf", WORK, check=True)
    sh("mkdir", "-p", f"{WORK}/kernels", check=True)
    try:
        # the busybox OS installs itself on a file disk in dom0, offline (cached kernel .deb)
        sh("truncate", "-s", "64M", f"{WORK}/disk0.img", check=True)
        env = [
            "env",
            f"INSTANCE_NAME={name}",
            "DISK_COUNT=1",
            f"DISK_0_PATH={WORK}/disk0.img",
            f"CORRAL_KERNELS_DIR={WORK}/kernels",
            "CORRAL_CACHE_DIR=/var/cache/corral",
        ]
        sh(*env, f"{SRC}/osdefs/busybox/create", timeout=300, check=True)
        cfg = "\n".join(
            [
                f'name = "{name}"',
                'type = "pv"',
                f'kernel = "{WORK}/kernels/vmlinuz-kvmU"',
                f'ramdisk = "{WORK}/kernels/initrd-kvmU"',
                'extra = "root=/dev/xvda console=hvc0"',
                "memory = 128",
                "vcpus = 1",
                'on_poweroff = "destroy"',
                'on_crash = "destroy"',
                f'disk = [ "format=raw,vdev=xvda,access=rw,target={WORK}/disk0.img" ]',
                'vif = [ "bridge=xenbr0" ]',
                "",
            ]
        )
        sh("tee", f"{WORK}/{name}.cfg", input=cfg, check=True)
        t0 = time.monotonic()
        sh("xl", "create", f"{WORK}/{name}.cfg", timeout=300, check=True)
        t_create = time.monotonic() - t0
        # the root file system is the disk (the hostname comes from its /etc/hostname)
        app.wait_guest_console(name, f"CORRAL-GUEST-UP {name}", timeout=300)
        t_up = time.monotonic() - t0
        # the device reporter (started right after the UP line): PV disk and NIC
        app.wait_guest_console(name, "CORRAL-DEV blk=[xvda] net=[eth0 lo]", timeout=60)
        t1 = time.monotonic()
        sh("xl", "shutdown", "-w", name, timeout=300, check=True)
        waited = app.wait_domain_gone(name, timeout=120)
        t_stop = time.monotonic() - t1
        assert "corral-guest: poweroff requested" in app.guest_console(name)
        print(
            f"\nraw PV busybox: xl create {t_create:.1f} s, guest up {t_up:.1f} s, "
            f"shutdown -w + gone {t_stop:.1f} s (gone {waited:.1f} s after -w returned)"
        )
    finally:
        sh("xl", "destroy", name, timeout=120)
        sh("rm", "-rf", WORK, timeout=60)

"""Live migration of a real QEMU guest between two real node daemons, through the node RPCs.

Two ``corral-noded`` processes run in two temporary roots on two loopback addresses, with
certificates from one cluster CA; the test talks to them with :class:`RpcClient` exactly as a
cluster migration will: ``migration_info`` on the source, ``accept_instance`` on the
destination, ``migrate_instance`` and ``migration_status`` on the source, then the finalize
steps. Both nodes reach the instance's disk through one shared directory (a ``sharedfile`` volume
whose ``storage_dir`` is that directory), as shared storage would provide.

Success: the guest keeps running on the destination (its console answers, its uptime goes
on, it never boots again) and nothing is left of it on the source. Failure: the destination
QEMU is SIGKILLed in the middle of a throttled migration; the source reports ``failed`` and,
once finalized, runs on. Abort: a migration cancelled half-way leaves the source running.

Two guests at most run at a time (source and destination). Every QEMU is registered with the
``guest_reaper`` watchdog and killed by pid in teardown; the daemons are stopped by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.hypervisor.base import InstanceSpec, InstanceState
from corral.hypervisor.kvm.process import pid_alive
from corral.rpc import calls
from corral.rpc.calls import DiskRef
from corral.rpc.client import RpcClient
from corral.storage.base import VolumeSpec
from tests.integration.kvm_guests import (
    UP,
    GuestRoot,
    NodeDaemon,
    free_port,
    guest_spec,
    loopback_pair,
)
from tests.unit.rpc.rpc_fakes import make_pki

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

DISK_MIB = 64


@dataclass
class Pair:
    """Two node daemons, their guests' views, the master's RPC client paths, a shared disk."""

    a: NodeDaemon
    b: NodeDaemon
    ga: GuestRoot
    gb: GuestRoot
    master: object  # Paths of the caller's certificate
    shared: str
    kernel: Path

    def client(self) -> RpcClient:
        return RpcClient.from_paths(self.master)  # type: ignore[arg-type]

    def spec(self, name: str, **kw: object) -> InstanceSpec:
        return guest_spec(self.kernel, name, **kw)

    def disks(self, name: str) -> list[DiskRef]:
        path = os.path.join(self.shared, name, "disk0")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            with open(path, "wb") as fh:
                fh.truncate(DISK_MIB * 1024 * 1024)
        volume = VolumeSpec(
            dev_type="sharedfile",
            logical_id=path,
            size=DISK_MIB,
            uuid=f"{name}-disk0",
            params={"storage_dir": self.shared},
        )
        return [DiskRef(index=0, volume=volume)]


@pytest.fixture
def pair(guest_kernel, guest_reaper, request) -> Iterator[Pair]:
    # short roots: QEMU's UNIX socket paths must stay under 108 bytes
    base = tempfile.mkdtemp(prefix="crlmg", dir="/tmp")
    host_a, host_b = loopback_pair()
    pa = make_pki(os.path.join(base, "a"), "node-a", [host_a])
    pb = make_pki(os.path.join(base, "b"), "node-b", [host_b], ca=pa)
    master = make_pki(os.path.join(base, "m"), "master", ["127.0.0.1"], ca=pa)
    shared = os.path.join(base, "shared")
    os.makedirs(shared)
    a = NodeDaemon(pa, "node-a", host_a, free_port(host_a))
    b = NodeDaemon(pb, "node-b", host_b, free_port(host_b))
    ga, gb = GuestRoot(pa.root, guest_reaper), GuestRoot(pb.root, guest_reaper)
    failed_before = request.session.testsfailed
    try:
        a.start()
        b.start()
        yield Pair(a, b, ga, gb, master, shared, guest_kernel)
    finally:
        ga.kill_all()
        gb.kill_all()
        a.stop()
        b.stop()
        if request.session.testsfailed > failed_before:
            for node in (a, b):
                print(f"--- {node.name} noded log (tail) ---\n{node.log()[-4000:]}")
            print(f"kept the roots of the failed test in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


async def _status_until_final(client: RpcClient, p: Pair, name: str) -> calls.MigrationStatus:
    deadline = time.monotonic() + 120
    while True:
        resp = await client.call(
            p.a.address,
            calls.MIGRATION_STATUS,
            calls.MigrationStatusRequest(name=name, hypervisor="kvm", wait=10),
        )
        if resp.status.status in ("completed", "failed", "cancelled"):
            return resp.status
        assert time.monotonic() < deadline, resp.status


async def _info(client: RpcClient, node: NodeDaemon, name: str) -> object:
    resp = await client.call(
        node.address, calls.INSTANCE_INFO, calls.InstanceInfoRequest(name=name, hypervisor="kvm")
    )
    return resp.info


async def _boot_on_a(client: RpcClient, p: Pair, spec: InstanceSpec) -> int:
    try:
        await client.call(
            p.a.address,
            calls.INSTANCE_START,
            calls.InstanceStartRequest(instance=spec, disks=p.disks(spec.name)),
        )
    finally:
        p.ga.register(spec.name)
    p.ga.wait_serial(spec.name, rf"{UP} {spec.name}")
    pid = p.ga.pid(spec.name)
    assert pid is not None
    return pid


async def _accept_on_b(client: RpcClient, p: Pair, spec: InstanceSpec, info: dict) -> int:
    port = free_port(p.b.host)
    try:
        await client.call(
            p.b.address,
            calls.ACCEPT_INSTANCE,
            calls.AcceptInstanceRequest(
                instance=spec,
                disks=p.disks(spec.name),
                info=info,
                listen_host=p.b.host,
                port=port,
            ),
        )
    finally:
        p.gb.register(spec.name)
    return port


async def test_live_migration_moves_a_running_guest(pair: Pair) -> None:
    p, name = pair, "mig1"
    spec = p.spec(name)
    async with p.client() as client:
        src_pid = await _boot_on_a(client, p, spec)
        p.ga.ask(name, "echo data > /tmp/kept", r"\n/ # ")
        before = p.ga.uptime(name)

        info = (
            await client.call(
                p.a.address,
                calls.MIGRATION_INFO,
                calls.MigrationInfoRequest(name=name, hypervisor="kvm"),
            )
        ).info
        port = await _accept_on_b(client, p, spec, info)
        dst_pid = p.gb.pid(name)
        assert dst_pid is not None and dst_pid != src_pid
        incoming = await _info(client, p.b, name)
        assert incoming.state is InstanceState.PAUSED
        assert incoming.details["status"] == "inmigrate"
        assert incoming.details["migration"] == "target"

        started = time.monotonic()
        await client.call(
            p.a.address,
            calls.MIGRATE_INSTANCE,
            calls.MigrateInstanceRequest(
                name=name, hypervisor="kvm", target_host=p.b.host, port=port, live=True
            ),
        )
        final = await _status_until_final(client, p, name)
        assert final.status == "completed", final
        assert final.transferred > 0
        await client.call(
            p.b.address,
            calls.FINALIZE_MIGRATION_DST,
            calls.FinalizeMigrationDstRequest(instance=spec, success=True),
        )
        # the source waits in postmigrate until finalized; QEMU's figures are known by now
        done = (
            await client.call(
                p.a.address,
                calls.MIGRATION_STATUS,
                calls.MigrationStatusRequest(name=name, hypervisor="kvm"),
            )
        ).status
        assert done.status == "completed" and done.remaining == 0
        assert done.downtime_ms is not None and done.total_time_ms
        source = await _info(client, p.a, name)
        assert source.details["status"] == "postmigrate"
        await client.call(
            p.a.address,
            calls.FINALIZE_MIGRATION_SRC,
            calls.FinalizeMigrationSrcRequest(name=name, hypervisor="kvm", success=True),
        )
        elapsed = time.monotonic() - started

        # the source is gone, without a trace in its run directory
        assert not pid_alive(src_pid)
        assert await _info(client, p.a, name) is None
        assert not os.path.exists(p.ga.kvm._layout(name).dir)
        # the destination runs the same guest: it answers, its uptime went on, no boot
        moved = await _info(client, p.b, name)
        assert moved.state is InstanceState.RUNNING and moved.pid == dst_pid
        assert "migration" not in moved.details
        out = p.gb.ask(name, "cat /tmp/kept; echo ANSWER-$((6*7))", r"ANSWER-42")
        assert out is not None and "data" in p.gb.serial(name)
        after = p.gb.uptime(name)
        assert before < after < before + elapsed + 60
        assert p.ga.serial(name).count(UP) == 1  # booted once, on the source
        assert UP not in p.gb.serial(name)  # never booted on the destination

        await client.call(
            p.b.address,
            calls.INSTANCE_SHUTDOWN,
            calls.InstanceShutdownRequest(name=name, hypervisor="kvm", timeout=0, force=True),
        )
        assert not pid_alive(dst_pid)


async def test_failed_and_aborted_migrations_leave_the_source_running(pair: Pair) -> None:
    p, name = pair, "mig2"
    spec = p.spec(name, memory=256)
    async with p.client() as client:
        src_pid = await _boot_on_a(client, p, spec)
        info = (
            await client.call(
                p.a.address,
                calls.MIGRATION_INFO,
                calls.MigrationInfoRequest(name=name, hypervisor="kvm"),
            )
        ).info

        # 1. the destination dies in the middle of a throttled migration
        port = await _accept_on_b(client, p, spec, info)
        dst_pid = p.gb.pid(name)
        await client.call(
            p.a.address,
            calls.MIGRATE_INSTANCE,
            calls.MigrateInstanceRequest(
                name=name, hypervisor="kvm", target_host=p.b.host, port=port, live=True,
                bandwidth_mib=4,
            ),
        )  # fmt: skip
        time.sleep(1.5)
        status = await client.call(
            p.a.address,
            calls.MIGRATION_STATUS,
            calls.MigrationStatusRequest(name=name, hypervisor="kvm"),
        )
        assert status.status.status == "active" and status.status.transferred > 0
        assert status.status.remaining > 0
        os.kill(dst_pid, signal.SIGKILL)
        final = await _status_until_final(client, p, name)
        assert final.status == "failed", final
        await client.call(
            p.b.address,
            calls.FINALIZE_MIGRATION_DST,
            calls.FinalizeMigrationDstRequest(instance=spec, success=False),
        )
        assert await _info(client, p.b, name) is None
        assert not os.path.exists(p.gb.kvm._layout(name).dir)
        await client.call(
            p.a.address,
            calls.FINALIZE_MIGRATION_SRC,
            calls.FinalizeMigrationSrcRequest(name=name, hypervisor="kvm", success=False),
        )
        src = await _info(client, p.a, name)
        assert src.state is InstanceState.RUNNING and src.details["status"] == "running"
        assert src.pid == src_pid and "migration" not in src.details
        p.ga.ask(name, "echo STILL-$((40+2))", r"STILL-42")

        # 2. a migration aborted half-way: the source runs on, the destination is removed
        port = await _accept_on_b(client, p, spec, info)
        await client.call(
            p.a.address,
            calls.MIGRATE_INSTANCE,
            calls.MigrateInstanceRequest(
                name=name, hypervisor="kvm", target_host=p.b.host, port=port, live=False,
                bandwidth_mib=4,
            ),
        )  # fmt: skip
        time.sleep(1)
        paused = await _info(client, p.a, name)
        assert paused.details["status"] in ("paused", "finish-migrate")  # non-live: stopped
        await client.call(
            p.a.address,
            calls.ABORT_MIGRATION,
            calls.AbortMigrationRequest(name=name, hypervisor="kvm"),
        )
        final = (
            await client.call(
                p.a.address,
                calls.MIGRATION_STATUS,
                calls.MigrationStatusRequest(name=name, hypervisor="kvm"),
            )
        ).status
        assert final.status == "cancelled"
        assert (await _info(client, p.a, name)).details["status"] == "running"
        await client.call(
            p.b.address,
            calls.FINALIZE_MIGRATION_DST,
            calls.FinalizeMigrationDstRequest(instance=spec, success=False),
        )
        assert await _info(client, p.b, name) is None
        p.ga.ask(name, "echo AGAIN-$((40+2))", r"AGAIN-42")
        assert p.ga.serial(name).count(UP) == 1  # never rebooted

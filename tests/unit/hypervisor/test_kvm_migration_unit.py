"""KVM migration, pause and suspend logic without QEMU.

The state machines of ``finalize_migration_source``/``_target``, ``abort_migration``,
``migrate`` and pause/resume run against FakeQmpServer, a FAKE QEMU monitor on a real UNIX
socket (tests/unit/hypervisor/fake_qmp.py), whose answers follow a small state dict. The
"QEMU process" is a FAKE too: a sleeping Python process whose command line names the instance
(``-name``/``-uuid``), so the driver's liveness checks see a live guest; its ``quit`` handler
kills it. A shell script that records its argv and fails stands in for QEMU where the
destination's command line is checked. Real QEMU runs in tests/integration/
test_kvm_migration.py and test_kvm_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.common.errors import ErrorKind, HypervisorError, LaunchError
from corral.hypervisor.base import AttachedDisk, InstanceSpec
from corral.hypervisor.kvm import events
from corral.hypervisor.kvm.cmdline import HostFacts, build_plan, qemu_escape
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.migration import (
    MIGRATION_INFO_VERSION,
    parse_query_migrate,
    rebase_runtime,
    tcp_uri,
)
from corral.hypervisor.kvm.runtime import InstanceLayout, KvmRuntime, save_runtime
from corral.objects.params.hv import KVM_HVPARAMS
from tests.unit.hypervisor.fake_qmp import FakeQmpServer
from tests.unit.hypervisor.hv_fakes import DATA, RecordingRunner

# --- pure helpers ------------------------------------------------------------------------------


def test_parse_query_migrate_states():
    assert parse_query_migrate({}).status == "none"
    active = parse_query_migrate(
        {
            "status": "active",
            "expected-downtime": 42,
            "total-time": 900,
            "ram": {"transferred": 10, "remaining": 20, "total": 30},
        }
    )
    assert (active.status, active.transferred, active.remaining, active.total) == (
        "active",
        10,
        20,
        30,
    )
    assert active.downtime_ms == 42 and active.total_time_ms == 900
    done = parse_query_migrate(
        {"status": "completed", "downtime": 25, "expected-downtime": 99, "total-time": 610}
    )
    assert done.downtime_ms == 25 and done.total_time_ms == 610 and done.remaining == 0
    # QEMU 7.2, right after completing: the figures are not computed yet (not zero)
    early = parse_query_migrate({"status": "completed", "downtime": 0, "total-time": 0})
    assert early.downtime_ms is None and early.total_time_ms is None
    failed = parse_query_migrate({"status": "failed", "error-desc": "Connection refused"})
    assert failed.status == "failed" and failed.error == "Connection refused"
    assert failed.downtime_ms is None


def test_tcp_uri():
    assert tcp_uri("127.0.0.2", 8102) == "tcp:127.0.0.2:8102"
    assert tcp_uri("::1", 8102) == "tcp:[::1]:8102"
    with pytest.raises(HypervisorError) as err:
        tcp_uri("127.0.0.2", 0)
    assert err.value.kind is ErrorKind.INVALID


def _runtime(layout: InstanceLayout, disk_path: str) -> KvmRuntime:
    hv = KVM_HVPARAMS.fill({"kernel_path": "/k", "initrd_path": "", "root_path": ""})
    spec = InstanceSpec(
        name=layout.name,
        uuid=f"uuid-{layout.name}",
        hypervisor="kvm",
        hvparams=hv,
        memory=128,
        min_memory=64,
        vcpus=1,
    )
    disks = [AttachedDisk(index=0, uuid="d0", path=disk_path)]
    plan = build_plan(
        spec, disks, hv, HostFacts(qemu_binary="/q", qemu_version="7.2.22", accel="tcg"), layout
    )
    return KvmRuntime(
        name=spec.name,
        uuid=spec.uuid,
        argv=plan.argv,
        accel="tcg",
        qemu_version="7.2.22",
        machine=plan.machine,
        spec=spec,
        disks=plan.disks,
        nics=plan.nics,
        hvparams=hv,
    )


def test_rebase_runtime_moves_paths_and_keeps_devices():
    src = InstanceLayout(run_dir="/a,x/run", log_dir="/a,x/log", name="vm1")
    dst = InstanceLayout(run_dir="/b/run", log_dir="/b/log", name="vm1")
    runtime = _runtime(src, "/shared/vm1,disk0")
    moved = rebase_runtime(
        runtime, src, dst, [AttachedDisk(index=0, uuid="d0", path="/other/vm1,disk0")]
    )
    text = "\n".join(moved.argv)
    assert "/a,x" not in text and qemu_escape("/a,x") not in text
    assert f"path={dst.qmp_socket}" in text and f"logfile={dst.serial_log}" in text
    assert "-pidfile\n/b/run/vm1/qemu.pid" in text
    assert "filename=/other/vm1,,disk0" in text and "/shared" not in text
    assert moved.disks[0].path == "/other/vm1,disk0" and moved.pid is None
    # the device set is untouched: same options, in the same order
    assert len(moved.argv) == len(runtime.argv)
    assert [a for a in moved.argv if a.startswith("-")] == [
        a for a in runtime.argv if a.startswith("-")
    ]
    same = [AttachedDisk(index=0, uuid="d0", path="/shared/vm1,disk0")]
    assert rebase_runtime(runtime, src, src, same).argv == runtime.argv


def test_rebase_runtime_refuses_other_disks():
    src = InstanceLayout(run_dir="/a", log_dir="/a/log", name="vm1")
    runtime = _runtime(src, "/d0")
    with pytest.raises(HypervisorError) as err:
        rebase_runtime(runtime, src, src, [])
    assert err.value.kind is ErrorKind.INVALID
    with pytest.raises(HypervisorError) as err:
        rebase_runtime(
            runtime, src, src, [AttachedDisk(index=0, uuid="d0", path="/d0", format="qcow2")]
        )
    assert "qcow2" in str(err.value)


# --- event log -----------------------------------------------------------------------------------

GREETING = '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}}}\n{"return": {}}\n'


def _event(name: str, **data: Any) -> str:
    return json.dumps(
        {"timestamp": {"seconds": 100, "microseconds": 5}, "event": name, "data": data}
    )


def test_last_shutdown_reasons():
    assert events.last_shutdown(GREETING) is None
    log = GREETING + _event("STOP") + "\n" + _event("SHUTDOWN", guest=True, reason="guest-shutdown")
    event = events.last_shutdown(log + "\n{broken")
    assert event is not None and event.guest_poweroff and event.timestamp == 100.000005
    quit_ = events.last_shutdown(GREETING + _event("SHUTDOWN", guest=False, reason="host-qmp-quit"))
    assert quit_ is not None and not quit_.guest_poweroff
    reset = events.last_shutdown(GREETING + _event("SHUTDOWN", guest=True, reason="guest-reset"))
    assert reset is not None and not reset.guest_poweroff
    assert events.event_times(log, "STOP") == [100.000005]


def test_powered_off_needs_the_guest_event_and_no_stop_marker(tmp_path):
    layout = InstanceLayout(run_dir=str(tmp_path), log_dir=str(tmp_path / "log"), name="vm1")
    assert events.powered_off(layout) is None  # no run dir at all
    os.makedirs(layout.dir)
    events.prepare(layout)
    assert stat_is_fifo(layout.events_pipe + ".in")
    assert events.powered_off(layout) is None  # QEMU wrote nothing (killed, crashed)
    with open(layout.events_log, "w") as fh:
        fh.write(GREETING + _event("SHUTDOWN", guest=True, reason="guest-shutdown") + "\n")
    assert events.powered_off(layout) is not None
    events.mark_stopping(layout)  # Corral's own ACPI stop looks the same to QEMU
    assert events.powered_off(layout) is None
    events.clear_stopping(layout)
    assert events.powered_off(layout) is not None
    assert events.enable(layout) is False  # no QEMU reads the FIFO


def stat_is_fifo(path: str) -> bool:
    import stat

    return stat.S_ISFIFO(os.stat(path).st_mode)


# --- a fake guest: a live process named like the instance, a fake monitor ---------------------


class FakeGuest:
    """A FAKE QEMU: a sleeping process + FakeQmpServer answering from ``state``."""

    def __init__(self, kvm: Kvm, name: str = "vm1", **state: Any) -> None:
        self.kvm = kvm
        self.layout = kvm._layout(name)
        self.state: dict[str, Any] = {"status": "running", "migrate": {}, **state}
        os.makedirs(self.layout.dir)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time; time.sleep(120)",
                "-name",
                name,
                "-uuid",
                f"uuid-{name}",
            ]
        )
        with open(self.layout.pidfile, "w") as fh:
            fh.write(f"{self.proc.pid}\n")
        save_runtime(self.layout, _runtime(self.layout, "/d0"))
        self.server = FakeQmpServer(self.layout.qmp_socket, replies=self._replies())

    def _replies(self) -> dict[str, Any]:
        s = self.state

        def status(_msg: dict[str, Any]) -> dict[str, Any]:
            current = s["status"]
            if isinstance(current, list):  # a sequence of answers, the last one repeats
                current = current.pop(0) if len(current) > 1 else current[0]
            return {"return": {"status": current, "running": current == "running"}}

        def run_state(value: str) -> Any:
            # QEMU: cont/stop while "inmigrate" only arm/disarm the start after the load
            def reply(_msg: dict[str, Any]) -> dict[str, Any]:
                current = s["status"]
                if current == "inmigrate" or (
                    isinstance(current, list) and current[0] == "inmigrate"
                ):
                    s["autostart"] = value == "running"
                else:
                    s["status"] = value
                return {"return": {}}

            return reply

        def setter(key: str, value: Any) -> Any:
            def reply(_msg: dict[str, Any]) -> dict[str, Any]:
                s[key] = value
                return {"return": {}}

            return reply

        def cancel(_msg: dict[str, Any]) -> dict[str, Any]:
            if s["migrate"].get("status") in ("active", "setup"):
                s["migrate"] = {"status": "cancelled"}
            return {"return": {}}

        def quit_(_msg: dict[str, Any]) -> dict[str, Any]:
            self.proc.kill()
            self.proc.wait()
            return {"return": {}}

        return {
            "query-status": status,
            "query-migrate": lambda _m: {"return": dict(s["migrate"])},
            "stop": run_state("paused"),
            "cont": run_state("running"),
            "migrate_cancel": cancel,
            "migrate-set-parameters": {"return": {}},
            "migrate-set-capabilities": {"return": {}},
            "migrate": setter("migrate", {"status": "active"}),
            "migrate-incoming": {"return": {}},
            "quit": quit_,
        }

    @property
    def commands(self) -> list[str]:
        return self.server.commands

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    root = tempfile.mkdtemp(prefix="crlm", dir="/tmp")  # short: UNIX socket paths
    yield Kvm(
        os.path.join(root, "run"),
        log_dir=os.path.join(root, "log"),
        runner=RecordingRunner(),
        kvm_device="/nonexistent/kvm",
        cpuinfo=str(DATA / "cpuinfo-nested-novmx.txt"),
        qmp_timeout=2,
        launch_timeout=10,
    )
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def guest(kvm: Kvm) -> Iterator[FakeGuest]:
    g = FakeGuest(kvm)
    with g.server:
        yield g
    g.close()


def test_migrate_sets_parameters_then_starts(guest, kvm):
    kvm.migrate("vm1", target_host="127.0.0.9", port=8102, live=True, downtime_ms=50)
    sent = guest.server.received
    assert [m["execute"] for m in sent] == [
        "query-status",
        "query-migrate",
        "migrate-set-capabilities",
        "migrate-set-parameters",
        "migrate",
    ]
    assert sent[2]["arguments"] == {"capabilities": [{"capability": "events", "state": True}]}
    # bandwidth from the migration_bandwidth hvparam the guest started with, in bytes/s
    bw = KVM_HVPARAMS.fill({})["migration_bandwidth"]
    assert sent[3]["arguments"] == {"max-bandwidth": bw * 1024 * 1024, "downtime-limit": 50}
    assert sent[4]["arguments"] == {"uri": "tcp:127.0.0.9:8102"}
    marker = json.loads(Path(guest.layout.migration_file).read_text())
    assert marker["role"] == "source" and marker["was_running"] is True
    assert kvm.instance_info("vm1").details["migration"] == "source"
    with pytest.raises(HypervisorError) as err:  # one at a time
        kvm.migrate("vm1", target_host="127.0.0.9", port=8102, live=True)
    assert err.value.kind is ErrorKind.WRONG_STATE
    guest.state["migrate"] = {"status": "active", "expected-downtime": 12, "ram": {"remaining": 5}}
    status = kvm.migration_status("vm1")
    assert status.status == "active" and status.remaining == 5 and status.downtime_ms == 12
    # waiting: polled until the migration is final or the wait is over
    before = len(guest.commands)
    started = time.monotonic()
    assert kvm.migration_status("vm1", wait=0.3).status == "active"
    assert 0.3 <= time.monotonic() - started < 2
    assert guest.commands[before:].count("query-migrate") > 5
    guest.state["migrate"] = {"status": "completed", "downtime": 20, "total-time": 700}
    assert kvm.migration_status("vm1", wait=5).downtime_ms == 20


def test_non_live_migration_stops_the_guest_first(guest, kvm):
    kvm.migrate("vm1", target_host="127.0.0.9", port=8102, live=False, bandwidth_mib=64)
    assert guest.commands[2:] == [
        "migrate-set-capabilities",
        "migrate-set-parameters",
        "stop",
        "migrate",
    ]
    assert guest.server.received[3]["arguments"]["max-bandwidth"] == 64 * 1024 * 1024


def test_migrating_a_migrated_source_is_refused(guest, kvm):
    guest.state["status"] = "postmigrate"
    with pytest.raises(HypervisorError) as err:
        kvm.migrate("vm1", target_host="127.0.0.9", port=8102, live=True)
    assert err.value.kind is ErrorKind.WRONG_STATE
    assert "migrate" not in guest.commands
    with pytest.raises(HypervisorError):
        kvm.migration_info("vm1")


def test_finalize_source_success_needs_a_completed_migration(guest, kvm):
    guest.state.update(status="postmigrate", migrate={"status": "active"})
    with pytest.raises(HypervisorError) as err:
        kvm.finalize_migration_source("vm1", success=True)
    assert err.value.kind is ErrorKind.WRONG_STATE
    assert "quit" not in guest.commands and guest.proc.poll() is None
    guest.state["migrate"] = {"status": "completed"}
    kvm.finalize_migration_source("vm1", success=True)
    assert "quit" in guest.commands
    assert guest.proc.poll() is not None
    assert not os.path.exists(guest.layout.dir)
    assert kvm.instance_info("vm1") is None  # quit by Corral: not a user shutdown


def test_finalize_source_failure_cancels_and_resumes(guest, kvm):
    kvm.migrate("vm1", target_host="127.0.0.9", port=8102, live=False)
    assert guest.state["status"] == "paused"
    kvm.finalize_migration_source("vm1", success=False)
    assert guest.commands[-5:] == [
        "query-migrate",
        "migrate_cancel",
        "query-migrate",
        "query-status",
        "cont",
    ]
    assert guest.state["status"] == "running"
    assert not os.path.exists(guest.layout.migration_file)
    assert guest.proc.poll() is None


def test_failed_migration_of_a_paused_guest_leaves_it_paused(guest, kvm):
    guest.state["status"] = "paused"
    kvm.migrate("vm1", target_host="127.0.0.9", port=8102, live=True)
    guest.state["migrate"] = {"status": "failed", "error-desc": "Connection reset by peer"}
    assert kvm.migration_status("vm1").error == "Connection reset by peer"
    kvm.finalize_migration_source("vm1", success=False)
    assert "cont" not in guest.commands and guest.state["status"] == "paused"


def test_abort_cancels_but_refuses_a_completed_migration(guest, kvm):
    kvm.migrate("vm1", target_host="127.0.0.9", port=8102, live=True)
    kvm.abort_migration("vm1")
    assert "migrate_cancel" in guest.commands
    assert guest.state["migrate"]["status"] == "cancelled"
    kvm.migrate("vm1", target_host="127.0.0.9", port=8102, live=True)
    guest.state.update(migrate={"status": "completed"}, status="postmigrate")
    with pytest.raises(HypervisorError) as err:
        kvm.abort_migration("vm1")
    assert err.value.kind is ErrorKind.WRONG_STATE
    assert guest.state["status"] == "postmigrate"  # not resumed


def _target_marker(guest: FakeGuest, source_running: bool) -> None:
    with open(guest.layout.migration_file, "w") as fh:
        json.dump({"role": "target", "source_running": source_running}, fh)


def _spec(name: str = "vm1") -> InstanceSpec:
    return InstanceSpec(
        name=name,
        uuid=f"uuid-{name}",
        hypervisor="kvm",
        hvparams={},
        memory=128,
        min_memory=64,
        vcpus=1,
    )


def test_finalize_target_waits_for_the_state_then_runs_the_guest(kvm):
    guest = FakeGuest(kvm, status=["inmigrate", "inmigrate", "paused"])
    with guest.server:
        _target_marker(guest, source_running=True)
        kvm.finalize_migration_target(_spec(), success=True)
        # no cont while inmigrate: QEMU would activate the images before the state is in
        assert guest.commands == ["query-status", "query-status", "query-status", "cont"]
        assert guest.state["status"] == "running"
        assert not os.path.exists(guest.layout.migration_file)
        assert json.loads(Path(guest.layout.runtime_file).read_text())["paused_at_start"] is False
    guest.close()


def test_finalize_target_keeps_a_paused_source_paused(kvm):
    guest = FakeGuest(kvm, status="paused")
    with guest.server:
        _target_marker(guest, source_running=False)
        kvm.finalize_migration_target(_spec(), success=True)
        assert "cont" not in guest.commands
    guest.close()


def test_finalize_target_refuses_while_the_state_has_not_arrived(kvm):
    guest = FakeGuest(kvm, status="inmigrate")
    with guest.server:
        _target_marker(guest, source_running=True)
        with pytest.raises(HypervisorError) as err:
            kvm.finalize_migration_target(_spec(), success=True)
        assert err.value.kind is ErrorKind.WRONG_STATE
        assert "cont" not in guest.commands
    guest.close()


def test_finalize_target_failure_kills_and_cleans(kvm):
    guest = FakeGuest(kvm, status="inmigrate")
    with guest.server:
        kvm.finalize_migration_target(_spec(), success=False)
        assert guest.proc.wait(timeout=5) == -signal.SIGKILL
        assert not os.path.exists(guest.layout.dir)
    guest.close()


def test_finalize_target_without_a_destination_fails(kvm):
    with pytest.raises(HypervisorError) as err:
        kvm.finalize_migration_target(_spec(), success=True)
    assert err.value.kind is ErrorKind.WRONG_STATE


def test_pause_and_resume_state_checks(guest, kvm):
    kvm.pause("vm1")
    assert guest.state["status"] == "paused"
    kvm.pause("vm1")  # already paused: nothing sent
    assert guest.commands.count("stop") == 1
    kvm.resume("vm1")
    assert guest.state["status"] == "running"
    kvm.resume("vm1")
    assert guest.commands.count("cont") == 1
    guest.state["status"] = "postmigrate"
    for action in (kvm.pause, kvm.resume):
        with pytest.raises(HypervisorError) as err:
            action("vm1")
        assert err.value.kind is ErrorKind.WRONG_STATE
    with pytest.raises(HypervisorError) as err:
        kvm.pause("nosuch")
    assert err.value.kind is ErrorKind.WRONG_STATE


# --- the destination's command line ------------------------------------------------------------

RECORDING_QEMU = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "QEMU emulator version 7.2.22"; exit 0; fi
printf '%s\\n' "$@" > "$(dirname "$0")/argv.txt"
echo "qemu: recorded" >&2
exit 1
"""


def test_destination_argv_is_the_source_argv_plus_incoming(kvm, tmp_path):
    qemu = tmp_path / "qemu"
    qemu.write_text(RECORDING_QEMU)
    qemu.chmod(0o755)
    src = InstanceLayout(run_dir="/srv/a/run", log_dir="/srv/a/log", name="vm1")
    runtime = _runtime(src, "/shared/vm1.disk0")
    runtime.argv[0] = str(qemu)
    info = {
        "version": MIGRATION_INFO_VERSION,
        "runtime": runtime.to_dict(),
        "run_dir": src.run_dir,
        "log_dir": src.log_dir,
        "running": True,
    }
    disks = [AttachedDisk(index=0, uuid="d0", path="/shared/vm1.disk0")]
    with pytest.raises(LaunchError):
        kvm.accept_migration(runtime.spec, disks, info, listen_host="127.0.0.9", port=8102)
    argv = (tmp_path / "argv.txt").read_text().splitlines()
    dst = kvm._layout("vm1")
    expected = rebase_runtime(runtime, src, dst, disks).argv
    assert argv[: len(expected) - 1] == expected[1:]  # $0 is not in "$@"
    tail = argv[len(expected) - 1 :]
    assert tail == ["-S", *events.event_monitor_argv(dst)[0:4], "-incoming", "defer"]
    assert not os.path.exists(dst.dir)  # nothing left behind


def test_accept_refuses_info_of_another_instance(kvm):
    src = InstanceLayout(run_dir="/srv/a/run", log_dir="/srv/a/log", name="other")
    runtime = _runtime(src, "/d0")
    info = {"version": MIGRATION_INFO_VERSION, "runtime": runtime.to_dict()}
    with pytest.raises(HypervisorError) as err:
        kvm.accept_migration(_spec("vm1"), [], info, listen_host="127.0.0.9", port=8102)
    assert err.value.kind is ErrorKind.INVALID
    with pytest.raises(HypervisorError) as err:
        kvm.accept_migration(_spec("vm1"), [], {"version": 99}, listen_host="h", port=1)
    assert err.value.kind is ErrorKind.INVALID

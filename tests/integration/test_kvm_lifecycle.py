"""KVM lifecycle details against real QEMU guests: pause/resume, suspend to disk and restore,
and telling a guest's own power-off apart from a crash and from a stop by Corral.

One guest runs at a time; every QEMU is registered with the ``guest_reaper`` watchdog and
killed by pid in teardown (tests/integration/kvm_guests.py). On failure the root (serial and
QEMU logs) is kept and its path printed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import InstanceState
from corral.hypervisor.kvm.lifecycle import saved_runtime_file
from corral.hypervisor.kvm.monitor import Monitor
from corral.hypervisor.kvm.process import pid_alive
from tests.integration.kvm_guests import UP, GuestRoot, guest_spec

pytestmark = pytest.mark.qemu


@pytest.fixture
def node(guest_kernel, guest_reaper, request) -> Iterator[tuple[GuestRoot, object]]:
    root = tempfile.mkdtemp(prefix="crll", dir="/tmp")  # short: UNIX socket paths
    failed_before = request.session.testsfailed
    g = GuestRoot(root, guest_reaper)
    try:
        yield g, guest_kernel
    finally:
        g.kill_all()
        if request.session.testsfailed > failed_before:
            print(f"\nkept the root of the failed test: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def _qmp_status(g: GuestRoot, name: str) -> str:
    mon = Monitor(g.kvm._layout(name).qmp_socket, timeout=5)
    return mon.call(lambda q: q.query_status()).status


def _boot(g: GuestRoot, kernel, name: str, **kw) -> int:
    spec = guest_spec(kernel, name, **kw)
    try:
        g.kvm.start(spec, [])
    finally:
        g.register(name)
    g.wait_serial(name, rf"{UP} {name}")
    pid = g.pid(name)
    assert pid is not None
    return pid


def test_pause_stops_the_guest_and_resume_lets_it_answer(node):
    g, kernel = node
    pid = _boot(g, kernel, "pz1")
    g.kvm.pause("pz1")
    assert _qmp_status(g, "pz1") == "paused"
    assert g.kvm.instance_info("pz1").state is InstanceState.PAUSED
    g.kvm.pause("pz1")  # pausing a paused guest is fine
    start = len(g.serial("pz1"))
    with g.connect_console("pz1") as console:
        console.sendall(b"\recho PAUSE-$((6*7))\r")
        time.sleep(1.5)
        assert "PAUSE-42" not in g.serial("pz1")[start:]  # no vCPU runs: nobody answers
        g.kvm.resume("pz1")
        g.wait_serial("pz1", r"PAUSE-42", start=start, timeout=20)  # the guest got the line
    assert g.kvm.instance_info("pz1").state is InstanceState.RUNNING
    assert g.pid("pz1") == pid and g.serial("pz1").count(UP) == 1
    g.kvm.stop("pz1", timeout=0)
    with pytest.raises(HypervisorError) as err:
        g.kvm.pause("pz1")
    assert err.value.kind is ErrorKind.WRONG_STATE


def test_suspend_and_restore_continue_the_guest(node):
    g, kernel = node
    spec = guest_spec(kernel, "sp1")
    pid = _boot(g, kernel, "sp1")
    before = g.uptime("sp1")
    state = os.path.join(g.paths.data_dir, "suspend", "kvm", "sp1.state")
    g.kvm.suspend("sp1", state)
    assert not pid_alive(pid)
    assert os.path.getsize(state) > 1024 * 1024 and os.path.isfile(saved_runtime_file(state))
    assert oct(os.stat(state).st_mode & 0o777) == "0o600"
    assert g.kvm.list_instances() == [] and g.kvm.instance_info("sp1") is None
    assert not os.path.exists(g.kvm._layout("sp1").dir)
    with pytest.raises(HypervisorError) as err:  # never overwrite a saved state
        g.kvm.start(spec, [], paused=True)
        g.register("sp1")
        g.kvm.suspend("sp1", state)
    assert err.value.kind is ErrorKind.EXISTS
    g.kvm.stop("sp1", timeout=0)

    time.sleep(2)  # wall time passes while it is saved; the guest's uptime must not jump
    g.kvm.resume_suspended(spec, [], state)
    g.register("sp1")
    assert g.kvm.instance_info("sp1").state is InstanceState.RUNNING
    after = g.uptime("sp1")
    assert before < after < before + 30
    assert UP not in g.serial("sp1")  # no boot: the new log only has what came after restore
    assert not os.path.exists(state) and not os.path.exists(saved_runtime_file(state))
    g.kvm.stop("sp1", timeout=0)


def test_a_paused_guest_comes_back_paused_and_a_broken_state_file_is_kept(node):
    g, kernel = node
    spec = guest_spec(kernel, "sp2")
    _boot(g, kernel, "sp2")
    g.kvm.pause("sp2")
    state = os.path.join(g.paths.data_dir, "suspend", "kvm", "sp2.state")
    g.kvm.suspend("sp2", state)
    size = os.path.getsize(state)

    # a truncated state file: QEMU refuses it, nothing keeps running, the file stays
    good = state + ".good"
    shutil.copy(state, good)
    with open(state, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(HypervisorError):
        g.kvm.resume_suspended(spec, [], state)
    assert g.kvm.list_instances() == []
    assert os.path.exists(state) and os.path.exists(saved_runtime_file(state))

    os.replace(good, state)
    g.kvm.resume_suspended(spec, [], state)
    g.register("sp2")
    assert _qmp_status(g, "sp2") == "paused"
    g.kvm.resume("sp2")
    assert g.uptime("sp2") > 0
    g.kvm.stop("sp2", timeout=0)


def test_guest_poweroff_is_shutdown_until_cleaned_but_a_crash_is_not(node):
    g, kernel = node
    pid = _boot(g, kernel, "po1")
    g.type("po1", "poweroff -f")
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid)
    # QEMU exited on its own after the guest's power-off: reported until cleaned
    assert g.kvm.list_instances() == ["po1"]
    info = g.kvm.instance_info("po1")
    assert info.state is InstanceState.SHUTDOWN and info.pid is None
    assert info.details["shutdown_reason"] == "guest-shutdown"
    assert [i.name for i in g.kvm.all_instances_info()] == ["po1"]
    g.kvm.stop("po1", timeout=5)  # the cleanup an operation does
    assert g.kvm.list_instances() == [] and not os.path.exists(g.kvm._layout("po1").dir)

    # a crash (SIGKILL) is no user shutdown: not listed, cleaned on the way
    pid = _boot(g, kernel, "po1")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert g.kvm.instance_info("po1") is None and g.kvm.list_instances() == []
    assert not os.path.exists(g.kvm._layout("po1").dir)

    # Corral's own stop through ACPI is no user shutdown either
    _boot(g, kernel, "po1")
    g.kvm.stop("po1", timeout=30)
    assert "power button pressed" in g.serial("po1")
    assert g.kvm.instance_info("po1") is None and g.kvm.list_instances() == []

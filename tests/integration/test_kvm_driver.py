"""The KVM driver against real QEMU guests (TCG here; KVM where usable).

The guest is Corral's busybox OS kernel + initrd (corral/osdefs/busybox/prepare-kernel),
booted straight from RAM (no root device): it prints ``CORRAL-GUEST-UP <hostname>`` on its
serial console, powers off on the ACPI power button and runs a shell on the console.

Safety: every QEMU started here is killed by pid in teardown, even when the test fails, and a
watchdog process kills them too if pytest itself dies (TESTING.md: crashed scripts left guests
running for minutes). On failure the test's root directory (serial and QEMU logs) is kept and
its path printed. Only one guest runs at a time.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, HypervisorError, LaunchError
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceSpec, InstanceState, NicSpec
from corral.hypervisor.kvm.accel import probe_kvm
from corral.hypervisor.kvm.cmdline import argv_names_instance
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.monitor import Monitor
from corral.hypervisor.kvm.process import pid_alive, pid_cmdline, read_pidfile
from tests.conftest import require_root, require_tool

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 60.0
MIB = 1024 * 1024


# --- fixtures (guest_kernel and guest_reaper live in conftest.py) ----------------------------


class Env:
    """One test's node root, driver and guest bookkeeping."""

    def __init__(self, root: str, kernel: Path, reaper: Path) -> None:
        self.root = root
        self.paths = Paths(root)
        self.kernel = kernel
        self.reaper = reaper
        self.kvm = Kvm.from_paths(self.paths)

    def spec(self, name: str = "vm1", **hv_overrides: object) -> InstanceSpec:
        hv = {
            "kernel_path": str(self.kernel / "vmlinuz"),
            "initrd_path": str(self.kernel / "initrd.img"),
            "root_path": "",
            "kernel_args": f"corral.hostname={name} panic=-1",
            "shutdown_timeout": 30,
        }
        hv.update(hv_overrides)
        return InstanceSpec(
            name=name,
            uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.corral.test")),
            hypervisor="kvm",
            hvparams=hv,
            memory=128,
            min_memory=64,
            vcpus=1,
        )

    def register(self, name: str) -> int:
        pid = read_pidfile(self.kvm._layout(name).pidfile)
        assert pid is not None
        with open(self.reaper, "a") as fh:
            fh.write(f"{pid}\n")
        return pid

    def start(self, spec: InstanceSpec, **kw: object) -> int:
        try:
            self.kvm.start(spec, [], **kw)
        finally:
            if os.path.exists(self.kvm._layout(spec.name).pidfile):
                self.register(spec.name)
        return read_pidfile(self.kvm._layout(spec.name).pidfile) or 0

    def serial(self, name: str) -> str:
        try:
            return Path(self.kvm._layout(name).serial_log).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(
        self, name: str, pattern: str, *, count: int = 1, timeout: float = BOOT_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.serial(name))) >= count:
                return
            time.sleep(0.1)
        raise AssertionError(
            f"{pattern!r} x{count} not on the console of {name} in {timeout}s; "
            f"tail:\n{self.serial(name)[-1500:]}"
        )

    def kill_all(self) -> None:
        """Kill every QEMU of this root by pid (used in teardown, even after failures)."""
        run_dir = self.kvm.run_dir
        for name in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
            pid = read_pidfile(os.path.join(run_dir, name, "qemu.pid"))
            if pid and pid_alive(pid) and argv_names_instance(pid_cmdline(pid) or [], name):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def env(guest_kernel, guest_reaper, request) -> Iterator[Env]:
    # A short root: UNIX socket paths must stay under 108 bytes.
    root = tempfile.mkdtemp(prefix="crlk", dir="/tmp")
    failed_before = request.session.testsfailed
    e = Env(root, guest_kernel, guest_reaper)
    try:
        yield e
    finally:
        e.kill_all()
        if request.session.testsfailed > failed_before:
            print(f"\nkept logs of failed test in {root}/var/log/corral/kvm", file=sys.stderr)
            shutil.rmtree(os.path.join(root, "run"), ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


def qemu_processes_named(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            cmd = pid_cmdline(int(entry)) or []
            if cmd and "qemu" in cmd[0] and argv_names_instance(cmd, name):
                pids.append(int(entry))
    return pids


def run_dir_is_empty(kvm: Kvm) -> bool:
    return not os.path.isdir(kvm.run_dir) or os.listdir(kvm.run_dir) == []


# --- tests ------------------------------------------------------------------------------------


def test_lifecycle_boot_info_balloon_hard_reboot_soft_stop(env):
    spec = env.spec("lc1")
    pid = env.start(spec)
    env.wait_serial("lc1", r"CORRAL-GUEST-UP lc1")

    assert env.kvm.list_instances() == ["lc1"]
    info = env.kvm.instance_info("lc1")
    assert info.state is InstanceState.RUNNING
    assert info.pid == pid and info.vcpus == 1 and info.memory == 128
    expected_accel = "kvm" if probe_kvm().usable else "tcg"
    assert info.details["accel"] == expected_accel
    assert info.details["qemu_version"]
    with open(env.kvm._layout("lc1").runtime_file) as fh:
        runtime = json.load(fh)
    assert runtime["accel"] == expected_accel and runtime["pid"] == pid
    assert oct(os.stat(env.kvm._layout("lc1").runtime_file).st_mode & 0o777) == "0o600"

    # balloon 128 -> 96 MiB, confirmed by QEMU's own query-balloon
    assert env.kvm.balloon("lc1", 96) == 96
    mon = Monitor(env.kvm._layout("lc1").qmp_socket, timeout=5)
    assert mon.call(lambda q: q.query_balloon()) == 96 * MIB
    assert env.kvm.instance_info("lc1").memory == 96
    with pytest.raises(HypervisorError) as err:
        env.kvm.balloon("lc1", 32)  # below min_memory
    assert err.value.kind is ErrorKind.INVALID

    # hard reboot: same process, the guest boots again
    env.kvm.reboot("lc1", hard=True)
    env.wait_serial("lc1", r"CORRAL-GUEST-UP lc1", count=2)
    assert env.kvm.instance_info("lc1").pid == pid

    # soft stop: the guest handles the ACPI power button, well within the timeout
    started = time.monotonic()
    env.kvm.stop("lc1", timeout=30)
    assert time.monotonic() - started < 30
    assert "power button pressed" in env.serial("lc1")
    assert not pid_alive(pid)
    assert env.kvm.list_instances() == []
    assert run_dir_is_empty(env.kvm)
    assert os.path.exists(env.kvm._layout("lc1").serial_log)  # logs are kept


def test_start_paused_then_resume(env):
    spec = env.spec("p1", vnc_bind_address="127.0.0.1")
    env.start(spec, paused=True)
    info = env.kvm.instance_info("p1")
    assert info.state is InstanceState.PAUSED
    assert info.details["status"] == "prelaunch"
    time.sleep(0.5)
    assert "Linux version" not in env.serial("p1")  # no vCPU ran

    # VNC on the bound address, port found through QMP (no network_port allocated)
    console = env.kvm.console(spec, node_host="127.0.0.1")
    assert console.kind == "ssh" and "VNC: 127.0.0.1:59" in console.message
    port = int(console.message.rsplit(":", 1)[1].rstrip("."))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(12).startswith(b"RFB ")

    Monitor(env.kvm._layout("p1").qmp_socket, timeout=5).call(lambda q: q.cont())
    assert env.kvm.instance_info("p1").state is InstanceState.RUNNING
    env.kvm.stop("p1", timeout=0)
    assert run_dir_is_empty(env.kvm)


def test_guest_ignoring_acpi_is_still_stopped_within_the_timeout(env):
    # A paused guest cannot react to the power button: it ignores ACPI completely.
    pid = env.start(env.spec("ig1"), paused=True)
    started = time.monotonic()
    env.kvm.stop("ig1", timeout=2)
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 2 + 5, elapsed  # soft phase, then quit right away
    assert not pid_alive(pid)
    assert run_dir_is_empty(env.kvm)


def test_bad_command_line_gives_qemu_message_and_leaves_nothing(env):
    spec = env.spec("bad1", kvm_extra="-no-such-option")
    with pytest.raises(LaunchError) as err:
        env.start(spec)
    assert "QEMU refused to start bad1" in str(err.value)
    assert "-no-such-option: invalid option" in str(err.value)
    assert err.value.fields["exitcode"] == 1
    assert qemu_processes_named("bad1") == []
    assert run_dir_is_empty(env.kvm)
    assert env.kvm.list_instances() == []


def test_start_twice_is_refused(env):
    spec = env.spec("tw1")
    env.start(spec, paused=True)
    with pytest.raises(HypervisorError) as err:
        env.kvm.start(spec, [])
    assert err.value.kind is ErrorKind.WRONG_STATE
    assert len(qemu_processes_named("tw1")) == 1
    env.kvm.stop("tw1", timeout=0)


STARTER = r"""
import json, sys, time
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceSpec
from corral.hypervisor.kvm.driver import Kvm
kvm = Kvm.from_paths(Paths(sys.argv[1]))
kvm.start(InstanceSpec.model_validate_json(sys.argv[2]), [])
print("STARTED", flush=True)
time.sleep(300)
"""


def test_guest_survives_the_death_of_the_process_that_started_it(env):
    spec = env.spec("sv1")
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, env.root, spec.model_dump_json()],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert starter.stdout.readline().strip() == "STARTED"
        pid = env.register("sv1")
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(timeout=10)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        starter.stdout.close()
    env.wait_serial("sv1", r"CORRAL-GUEST-UP sv1")
    fresh = Kvm.from_paths(Paths(env.root))  # a "restarted node daemon"
    assert fresh.list_instances() == ["sv1"]
    info = fresh.instance_info("sv1")
    assert info.pid == pid and info.state is InstanceState.RUNNING
    fresh.stop("sv1", timeout=30)
    assert not pid_alive(pid)


def test_soft_reboot_restarts_from_the_saved_runtime(env):
    old_pid = env.start(env.spec("sr1"))
    env.wait_serial("sr1", r"CORRAL-GUEST-UP sr1")
    with open(env.kvm._layout("sr1").runtime_file) as fh:
        before = json.load(fh)
    env.kvm.reboot("sr1", hard=False)
    new_pid = env.register("sr1")
    assert new_pid != old_pid and not pid_alive(old_pid)
    env.wait_serial("sr1", r"CORRAL-GUEST-UP sr1")  # the log was rotated at the restart
    assert "power button pressed" in Path(env.kvm._layout("sr1").serial_log + ".1").read_text()
    with open(env.kvm._layout("sr1").runtime_file) as fh:
        after = json.load(fh)
    assert after["argv"] == before["argv"] and after["pid"] == new_pid
    env.kvm.stop("sr1", timeout=30)


def test_guest_powering_itself_off_is_listed_as_shutdown_until_cleaned(env):
    pid = env.start(env.spec("off1"))
    env.wait_serial("off1", r"CORRAL-GUEST-UP off1")
    # Type into the interactive serial console exactly as `corral instance console` does.
    console = env.kvm.console(env.spec("off1"), node_host="localhost")
    master, slave = pty.openpty()
    proc = subprocess.Popen(console.command, stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        time.sleep(0.5)
        os.write(master, b"\recho CONSOLE-$((6*7))\r")
        out = b""
        deadline = time.monotonic() + 20
        while b"CONSOLE-42" not in out and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                out += os.read(master, 4096)
        assert b"CONSOLE-42" in out
        os.write(master, b"poweroff -f\r")
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(pid)
    finally:
        if proc.poll() is None:
            os.write(master, b"\x1d")  # Ctrl-] leaves the console
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()
        os.close(master)
    # "user down": QEMU's SHUTDOWN event says the guest did it; listed until cleaned
    assert env.kvm.list_instances() == ["off1"]
    assert env.kvm.instance_info("off1").state is InstanceState.SHUTDOWN
    env.kvm.cleanup("off1")
    assert env.kvm.list_instances() == []
    assert env.kvm.instance_info("off1") is None
    assert run_dir_is_empty(env.kvm)


def test_bridged_nic_gets_a_tap_on_its_bridge(env):
    require_root()
    require_tool("ip")
    bridge = f"crlbr{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True, timeout=10)
    try:
        spec = env.spec("net1").model_copy(
            update={
                "nics": [
                    NicSpec(
                        index=0,
                        uuid="7c0ffee0-0000-4000-8000-000000000001",
                        mac="aa:00:00:c0:ff:ee",
                        link=bridge,
                    )
                ]
            }
        )
        env.start(spec, paused=True)
        with open(env.kvm._layout("net1").runtime_file) as fh:
            tap = json.load(fh)["nics"][0]["tap"]
        master = os.path.basename(os.readlink(f"/sys/class/net/{tap}/master"))
        assert master == bridge
        env.kvm.stop("net1", timeout=0)
        assert not os.path.exists(f"/sys/class/net/{tap}")
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=False, timeout=10)

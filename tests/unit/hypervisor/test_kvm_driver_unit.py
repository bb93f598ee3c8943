"""KVM driver behaviour that needs no QEMU: stale-entry cleanup, rollback, console, node info.

Host commands go through RecordingRunner (a FAKE runner: ``ip`` calls are recorded, not run),
and bridges live in a fake /sys/class/net tree, so no root is needed. A shell script stands in
for QEMU where a start must fail the way QEMU fails (message on stderr, exit code 1); real QEMU
runs in tests/integration/test_kvm_driver.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from corral.common.errors import ErrorKind, HypervisorError, LaunchError
from corral.hypervisor.base import AttachedDisk, InstanceSpec, NicSpec
from corral.hypervisor.kvm.cmdline import HostFacts, build_plan
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.runtime import KvmRuntime, save_runtime
from corral.objects.params.hv import KVM_HVPARAMS
from tests.conftest import require_tool
from tests.unit.hypervisor.hv_fakes import DATA, RecordingRunner, captured

FAKE_QEMU = """#!/bin/sh
echo "qemu-system-x86_64: -blockdev driver=nope: \\
Parameter 'driver' does not accept value 'nope'" >&2
exit 1
"""


@pytest.fixture
def root():
    # Short path: UNIX sockets under it must fit in 107 bytes.
    d = tempfile.mkdtemp(prefix="crlu", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def setup(root):
    qemu = os.path.join(root, "qemu")
    with open(qemu, "w") as fh:
        fh.write(FAKE_QEMU)
    os.chmod(qemu, 0o755)
    kernel = os.path.join(root, "vmlinuz")
    open(kernel, "w").close()
    cpuinfo = os.path.join(root, "cpuinfo")
    with open(cpuinfo, "w") as fh:
        fh.write(captured("cpuinfo-nested-novmx.txt"))
    sysnet = os.path.join(root, "sysnet")
    os.makedirs(os.path.join(sysnet, "br0", "bridge"))
    runner = RecordingRunner()
    driver = Kvm(
        os.path.join(root, "run"),
        log_dir=os.path.join(root, "log"),
        runner=runner,
        kvm_device="/nonexistent/kvm",
        cpuinfo=cpuinfo,
        meminfo=str(DATA / "meminfo.txt"),
        sys_class_net=sysnet,
        launch_timeout=10,
    )
    hv = {"kvm_path": qemu, "kernel_path": kernel, "initrd_path": "", "root_path": ""}
    return driver, runner, hv


def make_spec(hv, name="vm1", nics=()):
    return InstanceSpec(
        name=name,
        uuid=f"uuid-{name}",
        hypervisor="kvm",
        hvparams=hv,
        memory=128,
        min_memory=64,
        vcpus=1,
        nics=list(nics),
    )


def write_stale(driver, spec, pid):
    """A run-dir entry as a guest that died (or a reused pid) leaves it."""
    layout = driver._layout(spec.name)
    os.makedirs(layout.dir)
    hv = KVM_HVPARAMS.fill(KVM_HVPARAMS.check_syntax(spec.hvparams))
    plan = build_plan(
        spec, [], hv, HostFacts(qemu_binary="/q", qemu_version="7.2", accel="tcg"), layout
    )
    save_runtime(
        layout,
        KvmRuntime(
            name=spec.name,
            uuid=spec.uuid,
            argv=plan.argv,
            accel="tcg",
            pid=pid,
            spec=spec,
            nics=plan.nics,
            hvparams=hv,
        ),
    )
    with open(layout.pidfile, "w") as fh:
        fh.write(f"{pid}\n")
    open(layout.qmp_socket, "w").close()
    return layout


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


NIC = NicSpec(index=0, uuid="nic-uuid-1", mac="aa:00:00:00:00:01", link="br0")


def test_stale_entry_of_dead_guest_is_cleaned_with_its_tap(setup):
    driver, runner, hv = setup
    spec = make_spec(hv, nics=[NIC])
    layout = write_stale(driver, spec, dead_pid())
    assert driver.list_instances() == []
    assert not os.path.exists(layout.dir)
    assert ["ip", "tuntap", "del", "dev", "crlnicuuid1.0", "mode", "tap"] in runner.calls
    assert driver.instance_info("vm1") is None


def test_reused_pid_is_not_mistaken_for_the_guest(setup):
    driver, _, hv = setup
    layout = write_stale(driver, make_spec(hv), os.getpid())  # alive, but it is pytest
    assert driver.list_instances() == []
    assert not os.path.exists(layout.dir)
    driver.stop("vm1", timeout=1)  # must not signal pytest
    assert os.getpid()  # still here


def test_entry_locked_by_an_operation_in_progress_is_left_alone(setup):
    driver, _, hv = setup
    layout = write_stale(driver, make_spec(hv), dead_pid())
    with driver._lock(layout):
        assert driver.list_instances() == []
        assert os.path.isdir(layout.dir)
    assert driver.list_instances() == []
    assert not os.path.exists(layout.dir)
    assert not os.path.exists(layout.lock_file)


def test_qemu_refusing_to_start_leaves_nothing(setup):
    driver, runner, hv = setup
    with pytest.raises(LaunchError) as err:
        driver.start(make_spec(hv, nics=[NIC]), [])
    assert "QEMU refused to start vm1 (exit code 1)" in str(err.value)
    assert "does not accept value 'nope'" in str(err.value)
    assert err.value.fields["exitcode"] == 1
    assert err.value.fields["argv"][0] == hv["kvm_path"]
    tap = "crlnicuuid1.0"
    assert ["ip", "tuntap", "add", "dev", tap, "mode", "tap"] in runner.calls
    assert ["ip", "link", "set", "dev", tap, "master", "br0"] in runner.calls
    assert runner.calls[-1] == ["ip", "tuntap", "del", "dev", tap, "mode", "tap"]
    assert os.listdir(driver.run_dir) == []
    assert os.path.exists(driver._layout("vm1").qemu_log)  # kept for diagnosis


def test_missing_bridge_is_refused_before_anything_is_created(setup):
    driver, runner, hv = setup
    nic = NicSpec(index=0, uuid="n2", mac="aa:00:00:00:00:02", link="br-missing")
    with pytest.raises(HypervisorError) as err:
        driver.start(make_spec(hv, nics=[nic]), [])
    assert err.value.kind is ErrorKind.ENVIRONMENT
    assert "bridge 'br-missing' does not exist" in str(err.value)
    assert not any(c[0] == "ip" for c in runner.calls)
    assert os.listdir(driver.run_dir) == []


def test_tap_failure_rolls_back(setup):
    driver, runner, hv = setup
    runner.fail_on = ["master br0"]
    with pytest.raises(HypervisorError, match="cannot connect tap"):
        driver.start(make_spec(hv, nics=[NIC]), [])
    assert runner.calls[-1][:3] == ["ip", "tuntap", "del"]
    assert os.listdir(driver.run_dir) == []


def test_bad_parameters_are_refused_by_key(setup):
    driver, _, hv = setup
    with pytest.raises(HypervisorError) as err:
        driver.start(make_spec({**hv, "cpu_type": "host", "kernel_path": "/nonexistent"}), [])
    assert err.value.kind is ErrorKind.INVALID
    assert set(err.value.fields["problems"]) == {"cpu_type", "kernel_path"}
    with pytest.raises(HypervisorError) as err:
        driver.start(make_spec({**hv, "accel": "kvm"}), [])
    assert "accel" in err.value.fields["problems"]
    assert not os.path.exists(driver.run_dir) or os.listdir(driver.run_dir) == []


def test_socket_path_too_long(setup):
    driver, _, hv = setup
    with pytest.raises(HypervisorError) as err:
        driver.start(make_spec(hv, name="x" * 100), [])
    assert err.value.kind is ErrorKind.INVALID
    assert "longer than 107 bytes" in str(err.value)


def test_operations_on_a_stopped_instance(setup):
    driver, _, _hv = setup
    for call in (lambda: driver.reboot("vm1", hard=True), lambda: driver.balloon("vm1", 100)):
        with pytest.raises(HypervisorError) as err:
            call()
        assert err.value.kind is ErrorKind.WRONG_STATE
    driver.stop("vm1", timeout=1)  # not an error
    driver.cleanup("vm1")


def test_invalid_names(setup):
    driver, _, _ = setup
    for bad in ("", "../x", ".hidden"):
        with pytest.raises(HypervisorError):
            driver.instance_info(bad)


def test_console_serial_vnc_none(setup):
    driver, _, hv = setup
    console = driver.console(make_spec(hv), node_host="node1.example")
    assert console.kind == "ssh"
    assert console.host == "node1.example"
    sock = driver._layout("vm1").serial_socket
    assert console.command == ["socat", "STDIO,raw,echo=0,escape=0x1d", f"UNIX-CONNECT:{sock}"]
    assert console.socket == sock
    assert "Ctrl-]" in console.message

    vnc_spec = make_spec({**hv, "serial_console": False, "vnc_bind_address": "0.0.0.0"})
    vnc_spec = vnc_spec.model_copy(update={"network_port": 5903})
    console = driver.console(vnc_spec, node_host="node1.example")
    assert (console.kind, console.host, console.port) == ("vnc", "node1.example", 5903)

    console = driver.console(make_spec({**hv, "serial_console": False}), node_host="n")
    assert console.kind == "msg" and "no console" in console.message


def test_node_info(setup):
    driver, _, _ = setup
    info = driver.node_info()
    assert info.hypervisor == "kvm"
    assert info.memory_total == 24684084 // 1024
    assert info.memory_free == 24199900 // 1024
    assert info.cpu_total == os.cpu_count()
    assert info.details["kvm_usable"] is False
    assert info.details["default_accel"] == "tcg"


def test_verify_with_real_tools(root):
    require_tool("qemu-system-x86_64", "qemu-img", "socat")
    driver = Kvm(os.path.join(root, "run"))
    assert driver.verify() == []


def test_attached_disks_reach_the_runtime_argv(setup):
    """The argv QEMU was given is recorded exactly in the runtime (checked on failure too)."""
    driver, _, hv = setup
    disk = AttachedDisk(index=0, uuid="dd", path="/srv/x.qcow2", format="qcow2")
    with pytest.raises(LaunchError) as err:
        driver.start(make_spec(hv), [disk])
    argv = err.value.fields["argv"]
    assert "driver=qcow2,node-name=disk0-dd-fmt,file=disk0-dd-file,read-only=off" in argv

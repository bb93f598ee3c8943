"""Host preparation around QEMU starts (kvm/hostprep.py) and the console answer, no QEMU.

Files, the uid pool and chowns are real (in a temporary root); QEMU's probe commands are
answered by RecordingRunner (a FAKE runner replaying the real QEMU 7.2 outputs). Booting
guests with these settings is in tests/integration/test_kvm_params.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.common.revert import Reverter
from corral.hypervisor.base import InstanceSpec
from corral.hypervisor.kvm.accel import AccelChoice
from corral.hypervisor.kvm.cmdline import build_plan
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.runtime import KvmRuntime
from corral.objects.params.hv import KVM_HVPARAMS
from tests.conftest import require_root
from tests.unit.hypervisor.hv_fakes import RecordingRunner, captured

TCG = AccelChoice(accel="tcg", requested="auto", reason="test")


@pytest.fixture
def root():
    d = tempfile.mkdtemp(prefix="crlh", dir="/tmp")  # short: UNIX socket paths
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def driver(root):
    qemu = os.path.join(root, "qemu")
    with open(qemu, "w") as fh:
        fh.write("#!/bin/sh\nexit 1\n")
    os.chmod(qemu, 0o755)
    cpuinfo = os.path.join(root, "cpuinfo")
    with open(cpuinfo, "w") as fh:
        fh.write(captured("cpuinfo-nested-novmx.txt"))
    data = os.path.join(root, "data")
    os.makedirs(data)
    with open(os.path.join(data, "kvm-uid-pool"), "w") as fh:
        fh.write("20100-20102\n")
    drv = Kvm(
        os.path.join(root, "run"),
        log_dir=os.path.join(root, "log"),
        data_dir=data,
        runner=RecordingRunner(),
        kvm_device="/nonexistent/kvm",
        cpuinfo=cpuinfo,
    )
    drv.test_qemu = qemu  # type: ignore[attr-defined]
    return drv


def spec_for(driver, name="vm1", **hv) -> InstanceSpec:
    params = {"kvm_path": driver.test_qemu, "kernel_path": "", "initrd_path": "", **hv}
    return InstanceSpec(
        name=name,
        uuid=f"uuid-{name}",
        hypervisor="kvm",
        hvparams=params,
        memory=128,
        min_memory=64,
        vcpus=1,
        network_port=11001,
    )


def prepared(driver, spec, disks=()) -> KvmRuntime:
    """What start() does up to QEMU: host facts, plan, runtime, run dir and _prepare_host."""
    hv = KVM_HVPARAMS.fill(KVM_HVPARAMS.check_syntax(spec.hvparams))
    layout = driver._layout(spec.name)
    host, record = driver._host_facts(spec, hv, layout, TCG)
    plan = build_plan(spec, list(disks), hv, host, layout)
    runtime = KvmRuntime(
        name=spec.name,
        uuid=spec.uuid,
        argv=plan.argv,
        accel="tcg",
        machine=plan.machine,
        spec=spec,
        disks=plan.disks,
        hvparams=hv,
        security=record,
    )
    os.makedirs(layout.dir, mode=0o700)
    with Reverter() as rv:
        driver._prepare_host(layout, runtime, rv)
        rv.success()
    return runtime


def test_pool_uid_chroot_secret_store_and_owners_then_cleanup(driver, root):
    require_root()
    from corral.hypervisor.base import AttachedDisk

    disk = os.path.join(root, "disk0.img")
    with open(disk, "wb") as fh:
        fh.write(b"\0" * 1024)
    pw = os.path.join(root, "vnc-pw")
    with open(pw, "w") as fh:
        fh.write("s3cret\nsecond line ignored\n")
    template = os.path.join(root, "VARS.fd")
    with open(template, "wb") as fh:
        fh.write(b"\x55" * 4096)
    spec = spec_for(
        driver,
        kernel_path="/k",
        security_model="pool",
        use_chroot=True,
        vnc_bind_address="127.0.0.1",
        vnc_password_file=pw,
        firmware="uefi",
        ovmf_code_path=template,
        ovmf_vars_template=template,
    )
    spec = spec.model_copy(update={"memory": 256})  # OVMF needs more than 128 MiB
    runtime = prepared(driver, spec, [AttachedDisk(index=0, uuid="d0", path=disk)])
    layout = driver._layout("vm1")
    record = runtime.security
    assert record["model"] == "pool" and record["uid"] == 20100 and record["gid"] == 20100
    assert ["-chroot", record["chroot"], "-runas", "20100:20100"] == runtime.argv[
        runtime.argv.index("-chroot") : runtime.argv.index("-pidfile")
    ]
    # the run dir and the disk belong to the uid; the chroot is empty and root's
    st = os.stat(layout.dir)
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (20100, "0o700")
    assert os.stat(disk).st_uid == 20100
    assert os.listdir(record["chroot"]) == [] and os.stat(record["chroot"]).st_uid == 0
    # the password went to a 0600 secret file, first line only, never to the argv
    secret = os.path.join(layout.dir, "vnc.secret")
    with open(secret) as fh:
        assert fh.read() == "s3cret"
    assert oct(os.stat(secret).st_mode & 0o777) == "0o600"
    assert not any("s3cret" in a for a in runtime.argv)
    # the UEFI store was created from the template, under the data dir, named by uuid
    assert record["nvram"] == os.path.join(driver.data_dir, "kvm-nvram", "uuid-vm1.fd")
    with open(record["nvram"], "rb") as fh:
        assert fh.read() == b"\x55" * 4096

    driver._cleanup_files(layout, runtime)
    assert os.stat(disk).st_uid == 0  # owner restored
    assert driver.uid_pool().owner(20100) is None  # uid released
    assert not os.path.exists(layout.dir)
    assert os.path.exists(record["nvram"])  # kept for the next start


def test_reboot_reclaims_the_same_uid_and_a_taken_one_is_replaced(driver):
    require_root()
    runtime = prepared(driver, spec_for(driver, kernel_path="/k", security_model="pool"))
    layout = driver._layout("vm1")
    driver._cleanup_files(layout, runtime)  # the soft reboot's stop
    with Reverter() as rv:  # ...and its start from the saved runtime
        os.makedirs(layout.dir, mode=0o700)
        driver._prepare_host(layout, runtime, rv)
        rv.success()
    assert runtime.security["uid"] == 20100
    driver._cleanup_files(layout, runtime)
    # meanwhile another instance took 20100: the replay gets another uid and a new argv
    pool = driver.uid_pool()
    pool.allocate("other")
    os.makedirs(os.path.join(driver.run_dir, "other"))  # it runs: an operation holds it
    with driver._lock(driver._layout("other")), Reverter() as rv:
        os.makedirs(layout.dir, mode=0o700)
        driver._prepare_host(layout, runtime, rv)
        rv.success()
    assert runtime.security["uid"] == 20101
    assert "20101:20101" in runtime.argv and "20100:20100" not in runtime.argv
    driver._cleanup_files(layout, runtime)


def test_failed_start_before_launch_releases_the_uid(driver):
    spec = spec_for(driver, kernel_path="", security_model="pool")  # no kernel, no disk
    with pytest.raises(HypervisorError) as err:
        driver.start(spec, [])
    assert err.value.kind is ErrorKind.INVALID
    assert [driver.uid_pool().owner(u) for u in (20100, 20101, 20102)] == [None] * 3


def test_replayed_runtime_gets_this_nodes_store_and_chroot(driver, root):
    layout = driver._layout("vm1")
    runtime = KvmRuntime(
        name="vm1",
        uuid="uuid-vm1",
        argv=[
            "q",
            "-blockdev",
            "driver=file,node-name=pflash1-file,filename=/other,,root/kvm-nvram/uuid-vm1.fd,"
            "read-only=off",
            "-run-with",
            "chroot=/srv/chroots/vm1",
        ],
        accel="tcg",
        spec=spec_for(driver),
        hvparams=KVM_HVPARAMS.fill({"use_chroot": True}),
        security={"nvram": "/other,root/kvm-nvram/uuid-vm1.fd", "chroot": "/srv/chroots/vm1"},
    )
    driver._rebase_paths(layout, runtime)
    nvram = os.path.join(driver.data_dir, "kvm-nvram", "uuid-vm1.fd")
    assert runtime.argv == [
        "q",
        "-blockdev",
        f"driver=file,node-name=pflash1-file,filename={nvram},read-only=off",
        "-run-with",
        f"chroot={layout.dir}/chroot",
    ]
    assert runtime.security == {"nvram": nvram, "chroot": f"{layout.dir}/chroot"}


# --- console ------------------------------------------------------------------------------------


def test_console_serial_first_with_vnc_details(driver):
    spec = spec_for(driver, vnc_bind_address="0.0.0.0", vnc_password_file="/pw")
    console = driver.console(spec, node_host="node1.example")
    assert console.kind == "ssh" and console.command[0] == "socat"
    assert console.details == {
        "vnc": {"host": "node1.example", "port": 11001, "display": 5101, "password": True,
                "tls": False},
    }  # fmt: skip
    assert console.message.endswith(" VNC: node1.example:11001.")


def test_console_vnc_without_serial(driver):
    spec = spec_for(
        driver,
        serial_console=False,
        vnc_bind_address="127.0.0.1",
        vnc_tls=True,
        vnc_x509_path="/x",
    )
    console = driver.console(spec, node_host="n1")
    assert (console.kind, console.host, console.port, console.display) == (
        "vnc",
        "127.0.0.1",
        11001,
        5101,
    )
    assert console.details["vnc"]["tls"] is True and console.details["vnc"]["password"] is False
    dumped = console.model_dump(mode="json")  # the RAPI console dict
    assert dumped["display"] == 5101 and dumped["kind"] == "vnc"


def test_console_spice_without_serial(driver):
    spec = spec_for(driver, serial_console=False, spice_bind="::", spice_password_file="/pw")
    console = driver.console(spec, node_host="n1")
    assert (console.kind, console.host, console.port, console.display) == (
        "spice",
        "n1",
        11001,
        None,
    )
    assert console.details["spice"] == {"host": "n1", "port": 11001, "password": True, "tls": False}


def test_console_none(driver):
    console = driver.console(spec_for(driver, serial_console=False), node_host="n1")
    assert console.kind == "msg" and "neither VNC nor SPICE" in console.message

"""The KVM runtime file: layout, JSON round trip, versioning and upgrade."""

from __future__ import annotations

import json
import os
import stat

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import AttachedDisk, InstanceSpec, NicSpec
from corral.hypervisor.kvm import runtime as rt
from corral.hypervisor.kvm.cmdline import HostFacts, build_plan
from corral.hypervisor.kvm.runtime import (
    InstanceLayout,
    KvmRuntime,
    load_runtime,
    save_runtime,
    upgrade,
)
from corral.objects.params.hv import KVM_HVPARAMS


def make_runtime(layout: InstanceLayout) -> KvmRuntime:
    spec = InstanceSpec(
        name=layout.name,
        uuid="u-1",
        hypervisor="kvm",
        hvparams={},
        memory=128,
        min_memory=64,
        vcpus=1,
        nics=[NicSpec(index=0, uuid="n-1", mac="aa:00:00:00:00:01", link="br0")],
    )
    disks = [AttachedDisk(index=0, uuid="d-1", path="/srv/d0", format="qcow2")]
    hv = KVM_HVPARAMS.defaults()
    plan = build_plan(
        spec, disks, hv, HostFacts(qemu_binary="/q", qemu_version="7.2.22", accel="tcg"), layout
    )
    return KvmRuntime(
        name=spec.name,
        uuid=spec.uuid,
        argv=plan.argv,
        accel="tcg",
        accel_reason="no vmx",
        qemu_version="7.2.22",
        machine=plan.machine,
        pid=1234,
        spec=spec,
        disks=plan.disks,
        nics=plan.nics,
        paused_at_start=True,
        start_time=1700000000.5,
        hvparams=hv,
    )


@pytest.fixture
def layout(tmp_path) -> InstanceLayout:
    lay = InstanceLayout(run_dir=str(tmp_path / "run"), log_dir=str(tmp_path / "log"), name="vm1")
    os.makedirs(lay.dir)
    return lay


def test_layout_paths():
    lay = InstanceLayout(run_dir="/run/corral/hv/kvm", log_dir="/var/log/corral/kvm", name="a")
    assert lay.dir == "/run/corral/hv/kvm/a"
    assert lay.qmp_socket == "/run/corral/hv/kvm/a/qmp.sock"
    assert lay.serial_socket == "/run/corral/hv/kvm/a/serial.sock"
    assert lay.pidfile == "/run/corral/hv/kvm/a/qemu.pid"
    assert lay.runtime_file == "/run/corral/hv/kvm/a/runtime.json"
    assert lay.lock_file == "/run/corral/hv/kvm/.a.lock"
    assert lay.serial_log == "/var/log/corral/kvm/a.serial.log"
    assert lay.socket_problem() is None
    long = InstanceLayout(run_dir="/r" * 50, log_dir="/l", name="a")
    assert "longer than 107 bytes" in (long.socket_problem() or "")


def test_round_trip_and_file_mode(layout):
    runtime = make_runtime(layout)
    save_runtime(layout, runtime)
    assert stat.S_IMODE(os.stat(layout.runtime_file).st_mode) == 0o600
    loaded = load_runtime(layout)
    assert loaded == runtime
    assert loaded.nics[0].tap == runtime.nics[0].tap != ""
    assert loaded.disks[0].format == "qcow2"
    with open(layout.runtime_file) as fh:
        data = json.load(fh)
    assert data["version"] == rt.RUNTIME_VERSION
    assert data["accel"] == "tcg"


def test_missing_runtime_is_none(layout):
    assert load_runtime(layout) is None


def test_garbage_runtime_is_a_fault(layout):
    with open(layout.runtime_file, "w") as fh:
        fh.write("{not json")
    with pytest.raises(HypervisorError) as err:
        load_runtime(layout)
    assert err.value.kind is ErrorKind.FAULT


def test_newer_version_is_refused(layout):
    data = make_runtime(layout).to_dict()
    data["version"] = rt.RUNTIME_VERSION + 1
    with pytest.raises(HypervisorError, match="newer than this Corral"):
        KvmRuntime.from_dict(data)


@pytest.mark.parametrize("version", [None, 0, "1", True])
def test_invalid_version_is_refused(layout, version):
    data = make_runtime(layout).to_dict()
    data["version"] = version
    with pytest.raises(HypervisorError, match="no valid version"):
        upgrade(data)


def test_fields_added_later_with_defaults_need_no_upgrade(layout):
    data = make_runtime(layout).to_dict()
    for optional in ("accel_reason", "qemu_version", "machine", "paused_at_start", "hvparams"):
        del data[optional]
    loaded = KvmRuntime.from_dict(data)
    assert loaded.accel_reason == "" and loaded.hvparams == {}


def test_upgrade_chain_runs_each_step_in_order(layout, monkeypatch):
    """Version 1 is the only layout written so far; this registers a hypothetical v2 step
    (renaming ``accel`` to ``accelerator`` and back) to check the machinery that a real
    format change will use: older data is upgraded step by step when read."""
    calls = []

    def v1_to_v2(data):
        calls.append(data["version"])
        out = dict(data)
        out["accelerator"] = out.pop("accel")
        return out

    def v2_to_v3(data):
        calls.append(data["version"])
        out = dict(data)
        out["accel"] = out.pop("accelerator")
        return out

    monkeypatch.setattr(rt, "RUNTIME_VERSION", 3)
    monkeypatch.setattr(rt, "_UPGRADES", {1: v1_to_v2, 2: v2_to_v3})
    old = make_runtime(layout).to_dict()
    old["version"] = 1
    new = upgrade(old)
    assert calls == [1, 2]
    assert new["version"] == 3 and new["accel"] == "tcg"
    assert old["version"] == 1  # the input is not modified

    monkeypatch.setattr(rt, "_UPGRADES", {2: v2_to_v3})
    with pytest.raises(HypervisorError, match="no upgrade from runtime version 1"):
        upgrade(old)


def test_instance_lock(layout):
    import threading

    from corral.hypervisor.kvm.runtime import InstanceLock

    with InstanceLock(layout) as held:
        assert held and os.path.exists(layout.lock_file)
        with InstanceLock(layout, wait=False) as other:
            assert other is False
        with pytest.raises(HypervisorError) as err, InstanceLock(layout, timeout=0.2):
            pass
        assert err.value.kind is ErrorKind.TEMP_NO_RESOURCES
    assert not os.path.exists(layout.lock_file)

    # Many threads incrementing a counter under the lock never interleave.
    counter = {"n": 0, "inside": 0, "overlap": False}

    def work():
        for _ in range(20):
            with InstanceLock(layout, timeout=10):
                counter["inside"] += 1
                counter["overlap"] |= counter["inside"] > 1
                counter["n"] += 1
                counter["inside"] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter["n"] == 80 and not counter["overlap"]
    assert not os.path.exists(layout.lock_file)

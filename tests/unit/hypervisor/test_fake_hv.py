"""The fake hypervisor (a product feature for control-plane tests and benchmarks)."""

from __future__ import annotations

import time

import pytest

from corral.common.errors import ErrorKind, HypervisorError, ParamError
from corral.common.paths import Paths
from corral.hypervisor.base import AttachedDisk, InstanceSpec, InstanceState
from corral.hypervisor.fake import FakeHypervisor
from corral.hypervisor.registry import HYPERVISORS, get_hypervisor
from tests.unit.hypervisor.hv_fakes import DATA


def spec(name: str = "vm1", **kw) -> InstanceSpec:
    base = dict(
        name=name,
        uuid=f"uuid-{name}",
        hypervisor="fake",
        hvparams={},
        memory=512,
        min_memory=256,
        vcpus=2,
    )
    base.update(kw)
    return InstanceSpec(**base)


@pytest.fixture
def fake(tmp_path) -> FakeHypervisor:
    return FakeHypervisor(str(tmp_path / "run" / "fake"), meminfo=str(DATA / "meminfo.txt"))


def test_lifecycle(fake):
    assert fake.list_instances() == []
    assert fake.instance_info("vm1") is None
    fake.start(spec(), [AttachedDisk(index=0, uuid="d", path="/srv/d0")])
    assert fake.list_instances() == ["vm1"]
    info = fake.instance_info("vm1")
    assert info.state is InstanceState.RUNNING
    assert (info.memory, info.vcpus, info.uuid) == (512, 2, "uuid-vm1")
    fake.reboot("vm1", hard=True)
    fake.reboot("vm1", hard=False)
    assert fake.instance_info("vm1").details["reboots"] == 2
    fake.stop("vm1", timeout=10)
    assert fake.list_instances() == []
    fake.stop("vm1", timeout=10)  # stopping a stopped instance is fine


def test_start_twice_is_wrong_state(fake):
    fake.start(spec(), [])
    with pytest.raises(HypervisorError) as err:
        fake.start(spec(), [])
    assert err.value.kind is ErrorKind.WRONG_STATE


def test_paused_start_and_reboot_resumes(fake):
    fake.start(spec(), [], paused=True)
    assert fake.instance_info("vm1").state is InstanceState.PAUSED
    fake.reboot("vm1", hard=True)
    assert fake.instance_info("vm1").state is InstanceState.RUNNING


def test_balloon_respects_limits(fake):
    fake.start(spec(), [])
    assert fake.balloon("vm1", 300) == 300
    assert fake.instance_info("vm1").memory == 300
    for bad in (255, 513):
        with pytest.raises(HypervisorError) as err:
            fake.balloon("vm1", bad)
        assert err.value.kind is ErrorKind.INVALID
    with pytest.raises(HypervisorError) as err:
        fake.balloon("other", 300)
    assert err.value.kind is ErrorKind.WRONG_STATE


def test_operations_on_stopped_instance(fake):
    with pytest.raises(HypervisorError) as err:
        fake.reboot("vm1", hard=True)
    assert err.value.kind is ErrorKind.WRONG_STATE


def test_boot_delay(fake):
    start = time.monotonic()
    fake.start(spec(hvparams={"boot_delay": 0.3}), [])
    assert time.monotonic() - start >= 0.3


def test_bad_hvparams(fake):
    with pytest.raises(ParamError):
        fake.validate_params({"boot_delay": "soon"})
    with pytest.raises(HypervisorError) as err:
        fake.start(spec(hvparams={"nope": 1}), [])
    assert err.value.kind is ErrorKind.INVALID
    assert fake.list_instances() == []


def test_state_survives_a_new_driver_object(fake):
    fake.start(spec("a"), [])
    fake.start(spec("b"), [], paused=True)
    again = FakeHypervisor(fake.run_dir)
    assert again.list_instances() == ["a", "b"]
    assert {i.name: i.state for i in again.all_instances_info()} == {
        "a": InstanceState.RUNNING,
        "b": InstanceState.PAUSED,
    }


def test_node_info_counts_fake_memory(fake):
    before = fake.node_info()
    fake.start(spec("a"), [])
    fake.start(spec("b"), [])
    after = fake.node_info()
    assert after.memory_total == before.memory_total == 24684084 // 1024
    assert after.memory_hv == 1024
    assert after.memory_free == before.memory_free - 1024


def test_console_and_verify(fake):
    console = fake.console(spec(), node_host="node1")
    assert console.kind == "msg" and "no console" in console.message
    assert fake.verify() == []


def test_thousands_of_instances_list_fast(fake):
    for i in range(2000):
        fake.start(spec(f"i{i:05d}"), [])
    start = time.monotonic()
    names = fake.list_instances()
    elapsed = time.monotonic() - start
    assert len(names) == 2000 and names[0] == "i00000"
    assert elapsed < 0.5, elapsed
    assert len(fake.all_instances_info()) == 2000


def test_registry(tmp_path):
    assert set(HYPERVISORS) >= {"kvm", "fake"}
    paths = Paths(str(tmp_path))
    drv = get_hypervisor("fake", paths)
    assert isinstance(drv, FakeHypervisor)
    assert drv.run_dir == paths.hv_run_dir("fake")
    assert get_hypervisor("fake", paths) is drv  # one object per (name, root)
    assert get_hypervisor("fake", Paths(str(tmp_path / "other"))) is not drv
    kvm = get_hypervisor("kvm", paths)
    assert kvm.run_dir == paths.hv_run_dir("kvm")
    assert kvm.log_dir == f"{paths.log_dir}/kvm"
    with pytest.raises(HypervisorError) as err:
        get_hypervisor("vmware", paths)
    assert err.value.kind is ErrorKind.INVALID
    assert "fake" in str(err.value) and "kvm" in str(err.value)

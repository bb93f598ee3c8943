"""Accelerator detection with injected /dev/kvm and /proc/cpuinfo paths.

The cpuinfo without vmx/svm is a capture from the project's test machines (nested kvm_pvm
module: /dev/kvm opens but cannot run ordinary guests); the "vmx" variant is that capture with
``vmx`` added to the flags, standing in for a host with real VT-x.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.kvm.accel import choose_accel, probe_kvm

DATA = Path(__file__).resolve().parents[2] / "data" / "hypervisor"


@pytest.fixture
def nested_cpuinfo(tmp_path) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text((DATA / "cpuinfo-nested-novmx.txt").read_text())
    return path


@pytest.fixture
def vmx_cpuinfo(tmp_path) -> Path:
    text = (DATA / "cpuinfo-nested-novmx.txt").read_text()
    path = tmp_path / "cpuinfo-vmx"
    path.write_text(text.replace("flags\t\t: ", "flags\t\t: vmx ", 1))
    return path


@pytest.fixture
def kvm_device(tmp_path) -> Path:
    # A regular file opens O_RDWR just like a usable /dev/kvm node does.
    path = tmp_path / "kvm"
    path.write_text("")
    return path


def test_nested_kvm_module_is_not_usable(kvm_device, nested_cpuinfo):
    probe = probe_kvm(kvm_device=str(kvm_device), cpuinfo=str(nested_cpuinfo))
    assert not probe.usable
    assert "neither vmx nor svm" in probe.reason
    choice = choose_accel("auto", probe)
    assert choice.accel == "tcg"
    assert choice.requested == "auto"


def test_vmx_and_openable_device_is_usable(kvm_device, vmx_cpuinfo):
    probe = probe_kvm(kvm_device=str(kvm_device), cpuinfo=str(vmx_cpuinfo))
    assert probe.usable, probe.reason
    assert choose_accel("auto", probe).accel == "kvm"
    assert choose_accel("kvm", probe).accel == "kvm"
    assert choose_accel("tcg", probe).accel == "tcg"


def test_svm_counts_too(tmp_path, kvm_device):
    cpuinfo = tmp_path / "amd"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu svm lm\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert probe_kvm(kvm_device=str(kvm_device), cpuinfo=str(cpuinfo)).usable


def test_missing_device(tmp_path, vmx_cpuinfo):
    probe = probe_kvm(kvm_device=str(tmp_path / "nokvm"), cpuinfo=str(vmx_cpuinfo))
    assert not probe.usable
    assert "cannot be opened" in probe.reason
    assert choose_accel("auto", probe).accel == "tcg"


def test_unreadable_cpuinfo(kvm_device, tmp_path):
    probe = probe_kvm(kvm_device=str(kvm_device), cpuinfo=str(tmp_path / "missing"))
    assert not probe.usable


def test_explicit_kvm_when_unusable_is_a_clear_error(kvm_device, nested_cpuinfo):
    probe = probe_kvm(kvm_device=str(kvm_device), cpuinfo=str(nested_cpuinfo))
    with pytest.raises(HypervisorError) as err:
        choose_accel("kvm", probe)
    assert err.value.kind is ErrorKind.ENVIRONMENT
    assert err.value.fields["param"] == "accel"
    assert "accel=kvm" in str(err.value) and "neither vmx nor svm" in str(err.value)


def test_unknown_accel_value():
    probe = probe_kvm(kvm_device="/nonexistent", cpuinfo="/nonexistent")
    with pytest.raises(HypervisorError) as err:
        choose_accel("xen", probe)
    assert err.value.kind is ErrorKind.INVALID

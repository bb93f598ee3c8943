"""KVM and fake hvparams: syntax errors (master) and environment checks (node), by key."""

from __future__ import annotations

import pytest

from corral.common.errors import ParamError
from corral.hypervisor.kvm.driver import Kvm
from corral.hypervisor.kvm.host import parse_machines, parse_version
from corral.objects.params.hv import FAKE_HVPARAMS, HV_SCHEMAS, KVM_HVPARAMS
from tests.unit.hypervisor.hv_fakes import RecordingRunner, captured


def test_syntax_errors_name_every_bad_key():
    with pytest.raises(ParamError) as err:
        KVM_HVPARAMS.check_syntax(
            {
                "accel": "quantum",
                "serial_speed": "fast",
                "kernel_path": "relative/vmlinuz",
                "vnc_bind_address": "not-an-ip",
                "machine_version": "pc;rm -rf /",
                "kvm_extra": "a\nb",
                "no_such_key": 1,
            }
        )
    problems = err.value.problems
    assert set(problems) == {
        "accel",
        "serial_speed",
        "kernel_path",
        "vnc_bind_address",
        "machine_version",
        "kvm_extra",
        "no_such_key",
    }
    assert "auto, kvm, tcg" in problems["accel"]
    assert "unknown parameter" in problems["no_such_key"]
    assert "hvparams/kvm" in str(err.value)


def test_defaults_are_complete_and_valid():
    defaults = KVM_HVPARAMS.defaults()
    assert defaults["accel"] == "auto"
    assert defaults["kvm_path"] == "/usr/bin/qemu-system-x86_64"
    # NOTE: disk_cache's value "default" is also the generic "reset to default" token (as in
    # Ganeti), so it comes back as None from check_syntax and is re-filled.
    assert KVM_HVPARAMS.fill(KVM_HVPARAMS.check_syntax(defaults)) == defaults
    assert HV_SCHEMAS["kvm"] is KVM_HVPARAMS and HV_SCHEMAS["fake"] is FAKE_HVPARAMS


def test_kvm_path_cannot_be_empty():
    with pytest.raises(ParamError) as err:
        KVM_HVPARAMS.check_syntax({"kvm_path": ""})
    assert "kvm_path" in err.value.problems


def test_fake_boot_delay():
    assert FAKE_HVPARAMS.check_syntax({"boot_delay": "1.5"}) == {"boot_delay": 1.5}
    with pytest.raises(ParamError) as err:
        FAKE_HVPARAMS.check_syntax({"boot_delay": 100})
    assert "boot_delay" in err.value.problems
    with pytest.raises(ParamError):
        FAKE_HVPARAMS.check_syntax({"boot_delay": True})


def test_doc_table_lists_every_key():
    table = KVM_HVPARAMS.doc_table()
    for key in KVM_HVPARAMS.specs:
        assert f"`{key}`" in table


def test_parse_machines_from_captured_help():
    machines = parse_machines(captured("qemu-7.2-machine-help.txt"))
    assert {"pc", "q35", "pc-i440fx-7.2", "pc-q35-7.2", "microvm", "none"} <= machines
    assert "Supported" not in machines
    assert parse_version(captured("qemu-7.2-version.txt")) == "7.2.22"
    assert parse_version("garbage") == ""


@pytest.fixture
def env(tmp_path):
    """A fake QEMU binary (an executable file; RecordingRunner answers for it) and files."""
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\nexit 1\n")
    qemu.chmod(0o755)
    kernel = tmp_path / "vmlinuz"
    kernel.write_text("k")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(captured("cpuinfo-nested-novmx.txt"))
    kvm_dev = tmp_path / "kvm"
    kvm_dev.write_text("")
    driver = Kvm(
        str(tmp_path / "run"),
        runner=RecordingRunner(),
        kvm_device=str(kvm_dev),
        cpuinfo=str(cpuinfo),
    )
    return driver, str(qemu), str(kernel)


def test_validate_accepts_a_good_set(env):
    driver, qemu, kernel = env
    driver.validate_params(
        {
            "kvm_path": qemu,
            "kernel_path": kernel,
            "initrd_path": "",
            "machine_version": "q35",
            "cpu_type": "max",
        }
    )


def test_validate_reports_node_problems_by_key(env, tmp_path):
    driver, qemu, _kernel = env
    with pytest.raises(ParamError) as err:
        driver.validate_params(
            {
                "kvm_path": qemu,
                "kernel_path": str(tmp_path / "missing-kernel"),
                "initrd_path": str(tmp_path / "missing-initrd"),
                "cdrom_image_path": str(tmp_path / "missing.iso"),
                "machine_version": "pc-i440fx-99.0",
                "cpu_type": "host",
            }
        )
    problems = err.value.problems
    assert set(problems) == {
        "kernel_path",
        "initrd_path",
        "cdrom_image_path",
        "machine_version",
        "cpu_type",
    }
    assert "does not exist on this node" in problems["kernel_path"]
    assert "is not supported by" in problems["machine_version"]
    assert "'host' needs KVM" in problems["cpu_type"]


def test_validate_explicit_kvm_that_cannot_work(env):
    driver, qemu, kernel = env
    with pytest.raises(ParamError) as err:
        driver.validate_params(
            {"kvm_path": qemu, "kernel_path": kernel, "initrd_path": "", "accel": "kvm"}
        )
    assert set(err.value.problems) == {"accel"}
    assert "neither vmx nor svm" in err.value.problems["accel"]


def test_validate_missing_qemu(env, tmp_path):
    driver, _, kernel = env
    with pytest.raises(ParamError) as err:
        driver.validate_params(
            {"kvm_path": str(tmp_path / "nope"), "kernel_path": kernel, "initrd_path": ""}
        )
    assert set(err.value.problems) == {"kvm_path"}


def test_validate_syntax_errors_come_first(env):
    driver, _, _ = env
    with pytest.raises(ParamError) as err:
        driver.validate_params({"accel": "fast"})
    assert "accel" in err.value.problems

"""KVM and fake hvparams: syntax errors (master) and environment checks (node), by key.

The node checks run against RecordingRunner, a FAKE runner answering QEMU's probe commands
with the outputs captured from this machine's QEMU 7.2 (tests/data/qemu/7.2/), or with those
of another version where a test says so.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from corral.common.errors import ParamError
from corral.hypervisor.kvm.driver import Kvm
from corral.objects.params.hv import (
    FAKE_HVPARAMS,
    HV_SCHEMAS,
    KVM_HVPARAMS,
    kvm_combination_problems,
)
from tests.unit.hypervisor.hv_fakes import RecordingRunner, captured
from tests.unit.hypervisor.test_kvm_probe import VersionRunner


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


#: A wrong value per key and a phrase of the allowed values its error must contain.
BAD_VALUES: dict[str, tuple[Any, str]] = {
    "kvm_path": ("", "must not be empty"),
    "kernel_path": ("vmlinuz", "absolute path"),
    "initrd_path": ("initrd", "absolute path"),
    "root_path": ("/dev/vda\n", "newline"),
    "kernel_args": ("a\0b", "NUL"),
    "boot_order": ("floppy", "disk, cdrom, network"),
    "cdrom_image_path": ("ftp://x/a.iso", "absolute path or an http:// or https:// URL"),
    "cdrom2_image_path": ("a.iso", "absolute path or an http:// or https:// URL"),
    "cdrom_disk_type": ("paravirtual", "ide, scsi"),
    "firmware": ("coreboot", "bios, uefi"),
    "ovmf_code_path": ("OVMF_CODE.fd", "absolute path"),
    "ovmf_vars_template": ("OVMF_VARS.fd", "absolute path"),
    "machine_version": ("pc q35", "pc, q35, pc-i440fx-7.2"),
    "cpu_type": ("max flags", "QEMU CPU model"),
    "accel": ("hvf", "auto, kvm, tcg"),
    "cpu_sockets": (-1, "between 0 and 256"),
    "cpu_cores": (1000, "between 0 and 256"),
    "cpu_threads": (17, "between 0 and 16"),
    "cpu_mask": ("0-x", "syntax: 'all', '0-2,4'"),
    "disk_type": ("virtio", "paravirtual, scsi, ide"),
    "disk_cache": ("unsafe", "default, none, writethrough, writeback"),
    "disk_aio": ("posix", "threads, native, io_uring"),
    "nic_type": ("vmxnet3", "paravirtual, e1000, e1000e, rtl8139"),
    "serial_console": ("maybe", "true/false"),
    "serial_speed": (12345, "9600, 19200, 38400"),
    "vnc_bind_address": ("localhost", "IP address (IPv4 or IPv6) or empty"),
    "vnc_password_file": ("pw.txt", "absolute path"),
    "vnc_tls": ("sometimes", "true/false"),
    "vnc_x509_path": ("certs", "absolute path"),
    "vnc_x509_verify": ("2", "true/false"),
    "keymap": ("English", "en-us, de, fr-ch"),
    "spice_bind": ("eth0", "IP address (IPv4 or IPv6) or empty"),
    "spice_ip_version": (5, "0, 4, 6"),
    "spice_password_file": ("pw", "absolute path"),
    "spice_use_tls": ("x", "true/false"),
    "spice_x509_path": ("x", "absolute path"),
    "spice_tls_ciphers": ("HIGH, LOW", "no commas or spaces"),
    "spice_image_compression": ("jpeg", "auto_glz, auto_lz, quic, glz, lz, off"),
    "spice_jpeg_wan_compression": ("sometimes", "auto, never, always"),
    "spice_zlib_glz_wan_compression": ("sometimes", "auto, never, always"),
    "spice_streaming_video": ("some", "off, all, filter"),
    "spice_playback_compression": ("x", "true/false"),
    "spice_use_vdagent": ("x", "true/false"),
    "usb_devices": ("tablet", "usb-tablet, usb-kbd, usb-mouse"),
    "soundhw": ("sb16", "hda, ich9-hda, ac97, es1370"),
    "reboot_behavior": ("halt", "reboot, exit"),
    "shutdown_timeout": (-5, "between 0 and 86400"),
    "migration_bandwidth": (0, "between 1 and 100000"),
    "migration_downtime": ("fast", "expected an integer"),
    "migration_port": (70000, "between 1 and 65535"),
    "security_model": ("selinux", "none, user, pool"),
    "security_domain": ("Root User", "user name"),
    "use_chroot": ("x", "true/false"),
    "chroot_dir": ("chroot", "absolute path"),
    "kvm_extra": ('-name "unterminated', "quotes balanced"),
}


def test_every_key_has_a_bad_value_case():
    assert set(BAD_VALUES) == set(KVM_HVPARAMS.specs)


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_every_param_error_names_the_key_and_what_is_allowed(key):
    bad, allowed = BAD_VALUES[key]
    with pytest.raises(ParamError) as err:
        KVM_HVPARAMS.check_syntax({key: bad})
    assert set(err.value.problems) == {key}
    assert allowed in err.value.problems[key], err.value.problems[key]
    assert key in str(err.value)


def test_defaults_are_complete_and_valid():
    defaults = KVM_HVPARAMS.defaults()
    assert defaults["accel"] == "auto"
    assert defaults["kvm_path"] == "/usr/bin/qemu-system-x86_64"
    assert defaults["machine_version"] == ""  # the installed QEMU's default machine
    assert defaults["security_model"] == "none" and defaults["firmware"] == "bios"
    # NOTE: disk_cache's value "default" is also the generic "reset to default" token (as in
    # Ganeti), so it comes back as None from check_syntax and is re-filled.
    assert KVM_HVPARAMS.fill(KVM_HVPARAMS.check_syntax(defaults)) == defaults
    assert kvm_combination_problems(defaults) == {}
    assert HV_SCHEMAS["kvm"] is KVM_HVPARAMS and HV_SCHEMAS["fake"] is FAKE_HVPARAMS


def test_urls_and_paths_for_cdroms():
    ok = KVM_HVPARAMS.check_syntax(
        {"cdrom_image_path": "https://deb.example/d.iso", "cdrom2_image_path": "/iso/a.iso"}
    )
    assert ok == {
        "cdrom_image_path": "https://deb.example/d.iso",
        "cdrom2_image_path": "/iso/a.iso",
    }


def test_usb_devices_accepts_commas_and_spaces():
    assert KVM_HVPARAMS.check_syntax({"usb_devices": "usb-tablet, usb-kbd"}) == {
        "usb_devices": "usb-tablet, usb-kbd"
    }


def filled(**kw: Any) -> dict[str, Any]:
    return KVM_HVPARAMS.fill(KVM_HVPARAMS.check_syntax(kw))


@pytest.mark.parametrize(
    ("params", "key", "phrase"),
    [
        ({"disk_aio": "native"}, "disk_aio", "needs disk_cache=none"),
        ({"boot_order": "cdrom", "kernel_path": ""}, "boot_order", "needs cdrom_image_path"),
        ({"vnc_bind_address": "127.0.0.1", "spice_bind": "127.0.0.1"}, "spice_bind", "VNC or"),
        ({"vnc_tls": True}, "vnc_tls", "needs vnc_x509_path"),
        ({"vnc_x509_verify": True}, "vnc_x509_verify", "needs vnc_tls"),
        ({"spice_use_tls": True}, "spice_use_tls", "needs spice_x509_path"),
        ({"spice_bind": "::1", "spice_ip_version": 4}, "spice_ip_version", "use 0 or 6"),
        ({"security_model": "user"}, "security_domain", "needs a user name"),
        ({"security_model": "pool", "security_domain": "qemu"}, "security_domain", "only used"),
    ],
)
def test_keys_that_contradict_each_other(params, key, phrase):
    problems = kvm_combination_problems(filled(**params))
    assert set(problems) == {key}
    assert phrase in problems[key]


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


# --- the node phase ---------------------------------------------------------------------------


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
        data_dir=str(tmp_path / "data"),
    )
    return driver, str(qemu), str(kernel)


def validate_problems(driver: Kvm, params: dict[str, Any]) -> dict[str, str]:
    try:
        driver.validate_params(params)
    except ParamError as exc:
        return dict(exc.problems)
    return {}


def test_validate_accepts_a_good_set(env):
    driver, qemu, kernel = env
    driver.validate_params(
        {
            "kvm_path": qemu,
            "kernel_path": kernel,
            "initrd_path": "",
            "machine_version": "q35",
            "cpu_type": "max",
            "disk_type": "scsi",
            "nic_type": "e1000e",
            "disk_aio": "io_uring",
            "usb_devices": "usb-tablet",
            "soundhw": "hda",
            "spice_bind": "127.0.0.1",
            "security_model": "user",
            "security_domain": "nobody",
            "use_chroot": True,
        }
    )


def test_validate_reports_node_problems_by_key(env, tmp_path):
    driver, qemu, _kernel = env
    problems = validate_problems(
        driver,
        {
            "kvm_path": qemu,
            "kernel_path": str(tmp_path / "missing-kernel"),
            "initrd_path": str(tmp_path / "missing-initrd"),
            "cdrom_image_path": str(tmp_path / "missing.iso"),
            "cdrom2_image_path": "https://mirror.example/x.iso",
            "machine_version": "pc-i440fx-99.0",
            "cpu_type": "host",
            "vnc_bind_address": "127.0.0.1",
            "vnc_password_file": str(tmp_path / "no-pw"),
            "vnc_tls": True,
            "vnc_x509_path": str(tmp_path),
            "keymap": "xx-yy",
            "usb_devices": "usb-tablet,usb-nope",
            "security_model": "pool",
            "firmware": "uefi",
            "ovmf_code_path": str(tmp_path / "no-code.fd"),
            "ovmf_vars_template": str(tmp_path / "no-vars.fd"),
        },
    )
    assert set(problems) == {
        "kernel_path",
        "initrd_path",
        "cdrom_image_path",
        "cdrom2_image_path",
        "machine_version",
        "cpu_type",
        "vnc_password_file",
        "vnc_x509_path",
        "keymap",
        "usb_devices",
        "security_model",
        "ovmf_code_path",
        "ovmf_vars_template",
    }
    assert "does not exist on this node" in problems["kernel_path"]
    assert "qemu-block-extra" in problems["cdrom2_image_path"]  # no curl driver here
    assert "is not supported by" in problems["machine_version"]
    assert "pc-i440fx-7.2" in problems["machine_version"]
    assert "'host' needs KVM" in problems["cpu_type"]
    assert "ca-cert.pem" in problems["vnc_x509_path"]
    assert "usb-nope" in problems["usb_devices"]
    assert "kvm-uid-pool" in problems["security_model"]
    assert "install the ovmf package" in problems["ovmf_code_path"]


def test_validate_against_a_qemu_without_spice(env, tmp_path):
    driver, qemu, kernel = env
    driver.facts.runner = VersionRunner("9.1")
    problems = validate_problems(
        driver,
        {"kvm_path": qemu, "kernel_path": kernel, "initrd_path": "", "spice_bind": "127.0.0.1"},
    )
    assert set(problems) == {"spice_bind"}
    assert "built without SPICE" in problems["spice_bind"]


def test_validate_refuses_a_too_old_qemu(env):
    driver, qemu, kernel = env
    driver.facts.runner = VersionRunner("4.1")
    problems = validate_problems(driver, {"kvm_path": qemu, "kernel_path": kernel})
    assert set(problems) == {"kvm_path"}
    assert "QEMU 4.1.1, older than 4.2" in problems["kvm_path"]


def test_validate_device_models_list_what_the_binary_has(env):
    driver, qemu, kernel = env
    caps = driver.facts.caps(qemu)
    object.__setattr__(caps, "devices", caps.devices - {"e1000e", "virtio-scsi-pci", "scsi-hd"})
    problems = validate_problems(
        driver, {"kvm_path": qemu, "kernel_path": kernel, "nic_type": "e1000e", "disk_type": "scsi"}
    )
    assert set(problems) == {"nic_type", "disk_type"}
    assert "allowed here: paravirtual, e1000, rtl8139" in problems["nic_type"]
    assert "allowed here: paravirtual, ide" in problems["disk_type"]


def test_validate_security_and_passwords(env, tmp_path):
    driver, qemu, kernel = env
    empty = tmp_path / "empty-pw"
    empty.write_text("\n")
    os.makedirs(driver.data_dir)
    with open(os.path.join(driver.data_dir, "kvm-uid-pool"), "w") as fh:
        fh.write("20000-20009\n")
    problems = validate_problems(
        driver,
        {
            "kvm_path": qemu,
            "kernel_path": kernel,
            "security_model": "user",
            "security_domain": "no-such-user-x",
            "spice_bind": "127.0.0.1",
            "spice_password_file": str(empty),
            "use_chroot": True,
            "chroot_dir": str(tmp_path / "no-dir"),
        },
    )
    assert set(problems) == {"security_domain", "spice_password_file", "chroot_dir"}
    assert "does not exist" in problems["security_domain"]
    assert "is empty" in problems["spice_password_file"]
    # the pool file is fine now
    assert validate_problems(driver, {"kvm_path": qemu, "kernel_path": kernel,
                                      "security_model": "pool"}) == {}  # fmt: skip


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

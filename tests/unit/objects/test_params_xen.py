"""Xen hvparams (xen-pvm, xen-hvm): Ganeti's names and defaults, every bad value named by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, ParamError
from corral.objects.cluster import Cluster
from corral.objects.instance import Instance
from corral.objects.params.fill import filled_hvparams
from corral.objects.params.hv import HV_SCHEMAS
from corral.objects.params.hv_xen import (
    XEN_HVM_HVPARAMS,
    XEN_PVM_HVPARAMS,
    cpuid_problem,
    xen_combination_problems,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "hypervisors" / "xen-params.md"

#: Ganeti 2.16's defaults, except xen_cmd (xm is gone) and the HVM device_model /
#: vnc_password_file (no qemu-dm, no cluster-wide password file by default).
PVM_DEFAULTS = {
    "use_bootloader": False,
    "bootloader_path": "",
    "bootloader_args": "",
    "kernel_path": "/boot/vmlinuz-3-xenU",
    "initrd_path": "",
    "root_path": "/dev/xvda1",
    "kernel_args": "ro",
    "migration_port": 8002,
    "migration_mode": "live",
    "blockdev_prefix": "sd",
    "reboot_behavior": "reboot",
    "cpu_mask": "all",
    "cpu_cap": 0,
    "cpu_weight": 256,
    "cpuid": "",
    "soundhw": "",
    "vif_script": "",
    "xen_cmd": "xl",
}
HVM_DEFAULTS = {
    "acpi": True,
    "pae": True,
    "viridian": False,
    "use_localtime": False,
    "serial_console": True,
    "boot_order": "cd",
    "cdrom_image_path": "",
    "disk_type": "paravirtual",
    "nic_type": "rtl8139",
    "vif_type": "ioemu",
    "vnc_bind_address": "0.0.0.0",
    "vnc_password_file": "",
    "device_model": "",
    "kernel_path": "",  # Ganeti: /usr/lib/xen/boot/hvmloader, absent on Debian
    "pci_pass": "",
    "migration_port": 8002,
    "migration_mode": "non-live",
    "blockdev_prefix": "hd",
    "reboot_behavior": "reboot",
    "cpu_mask": "all",
    "cpu_cap": 0,
    "cpu_weight": 256,
    "cpuid": "",
    "soundhw": "",
    "vif_script": "",
    "xen_cmd": "xl",
}

XEND_CPUID = '["1:ecx=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0,edx=xx0xxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]'


def test_defaults_are_ganetis():
    assert XEN_PVM_HVPARAMS.defaults() == PVM_DEFAULTS
    assert XEN_HVM_HVPARAMS.defaults() == HVM_DEFAULTS


def test_registered_under_ganetis_names():
    assert HV_SCHEMAS["xen-pvm"] is XEN_PVM_HVPARAMS
    assert HV_SCHEMAS["xen-hvm"] is XEN_HVM_HVPARAMS


def test_every_key_has_a_doc():
    for schema in (XEN_PVM_HVPARAMS, XEN_HVM_HVPARAMS):
        for spec in schema.specs.values():
            assert len(spec.doc) > 20, spec.name


def test_fill_layers_cluster_then_instance():
    cluster = Cluster(
        name="c",
        master_node="n1",
        enabled_hypervisors=["xen-pvm"],
        hvparams={"xen-pvm": {"kernel_path": "/boot/vmlinuz-6.1-xen", "cpu_weight": 512}},
    )
    instance = Instance(
        name="i1",
        hypervisor="xen-pvm",
        os="busybox",
        primary_node="n1",
        disk_template="diskless",
        hvparams={"cpu_weight": 1024, "root_path": "/dev/xvda"},
    )
    hv = filled_hvparams(cluster, instance)
    assert hv["kernel_path"] == "/boot/vmlinuz-6.1-xen"
    assert hv["cpu_weight"] == 1024
    assert hv["root_path"] == "/dev/xvda"
    assert hv["kernel_args"] == "ro"


def test_strings_from_the_cli_are_coerced():
    out = XEN_HVM_HVPARAMS.check_syntax(
        {
            "acpi": "false",
            "cpu_cap": "200",
            "migration_port": "8003",
            "cpu_mask": "0-1:3",
            "boot_order": "dc",
            "cpuid": "host,tm=0,sse3=0",
            "pci_pass": "0000:03:00.0;04:00.1,permissive=1",
            "soundhw": "hda,ac97",
            "vif_script": "/etc/xen/scripts/vif-custom",
            "vnc_bind_address": "::1",
        }
    )
    assert out["acpi"] is False
    assert out["cpu_cap"] == 200
    assert out["migration_port"] == 8003
    assert out["cpuid"] == "host,tm=0,sse3=0"


@pytest.mark.parametrize("value", ["host", "host,tm=0,sse3=0,family=6", XEND_CPUID, ""])
def test_cpuid_shapes_accepted(value):
    assert cpuid_problem(value) is None
    assert XEN_PVM_HVPARAMS.check_syntax({"cpuid": value})["cpuid"] == value


def test_cpuid_xend_list_with_several_items_and_subleaf():
    value = (
        "['7,0:ebx=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0', "
        '"0x80000001:ecx=kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk1"]'
    )
    assert cpuid_problem(value) is None


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("cpu_mask", "0-2,x", "not a CPU number"),
        ("cpu_mask", "3-1", "runs backwards"),
        ("cpu_cap", -1, "between 0 and 65535"),
        ("cpu_cap", 70000, "between 0 and 65535"),
        ("cpu_weight", 0, "between 1 and 65535"),
        ("cpu_weight", 65536, "between 1 and 65535"),
        ("migration_port", 0, "between 1 and 65535"),
        ("migration_port", 65536, "between 1 and 65535"),
        ("migration_mode", "fast", "must be one of live, non-live"),
        ("reboot_behavior", "halt", "must be one of reboot, exit"),
        ("blockdev_prefix", "vd", "must be one of sd, xvd, hd"),
        ("xen_cmd", "xm", "xm/xend toolstack was removed"),
        ("xen_cmd", "virsh", "must be 'xl'"),
        ("cpuid", "tm=0", "LIBXL string"),
        ("cpuid", "host,tm=0\nroot=1", "newlines"),
        ("cpuid", '["1:ecx=0"]', "32 of 0,1,x,k,s"),
        ("cpuid", '["1:ecx=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"] ; extra', "list of quoted"),
        ("cpuid", "[]", "must not be empty"),
        ("soundhw", "hda;rm", "sound card model"),
        ("vif_script", "vif-bridge,ip=1", "script name"),
        ("vif_script", "vif bridge", "script name"),
        ("kernel_path", "vmlinuz", "absolute path"),
        ("kernel_path", '/boot/"x', "double quotes"),
        ("initrd_path", "/boot/initrd\n", "NUL or newline"),
        ("root_path", "/dev/xvda1 init=/bin/sh", "one word"),
        ("root_path", '/dev/"xvda1', "double quotes"),
        ("kernel_args", 'ro "quiet"', "double quotes"),
        ("kernel_args", "ro\ninit=/bin/sh", "newlines"),
        ("bootloader_args", "--entry='unbalanced", "quotes balanced"),
        ("bootloader_args", "'a\"b'", "double quote"),
        ("use_bootloader", "maybe", "expected a boolean"),
    ],
)
def test_bad_pvm_values_are_named(key, value, words):
    with pytest.raises(ParamError) as err:
        XEN_PVM_HVPARAMS.check_syntax({key: value})
    assert list(err.value.problems) == [key]
    assert words in err.value.problems[key]
    assert err.value.kind is ErrorKind.INVALID
    assert key in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("boot_order", "cx", "boot device letters"),
        ("boot_order", "cc", "boot device letters"),
        ("boot_order", "", "boot device letters"),
        ("boot_order", "cdna c", "boot device letters"),
        ("nic_type", "virtio", "must be one of rtl8139"),
        ("disk_type", "scsi", "must be one of paravirtual, ioemu"),
        ("vif_type", "netfront", "must be one of ioemu, vif"),
        ("vnc_bind_address", "eth0", "IP address"),
        ("pci_pass", "0000:03:00.0,0000:04:00.0", "separated by ';'"),
        ("pci_pass", "03:00", "PCI devices"),
        ("cdrom_image_path", "/srv/iso/a,b.iso", "must not contain ','"),
        ("cdrom_image_path", "/srv/iso/a:b.iso", "must not contain ','"),
        ("cdrom_image_path", "/srv/iso/a=b.iso", "'='"),
        ("cdrom_image_path", "/srv/iso/a b.iso", "whitespace"),
        ("cdrom_image_path", "debian.iso", "absolute path"),
        ("device_model", '/usr/bin/"qemu', "double quotes"),
        ("acpi", "maybe", "expected a boolean"),
        ("xen_cmd", "xm", "not supported"),
    ],
)
def test_bad_hvm_values_are_named(key, value, words):
    with pytest.raises(ParamError) as err:
        XEN_HVM_HVPARAMS.check_syntax({key: value})
    assert list(err.value.problems) == [key]
    assert words in err.value.problems[key]


def test_xm_refusal_says_why():
    with pytest.raises(ParamError) as err:
        XEN_PVM_HVPARAMS.check_syntax({"xen_cmd": "xm"})
    message = err.value.problems["xen_cmd"]
    assert "'xm' is not supported" in message
    assert "xl" in message


def test_every_problem_is_reported_at_once():
    with pytest.raises(ParamError) as err:
        XEN_HVM_HVPARAMS.check_syntax(
            {"cpu_weight": 0, "xen_cmd": "xm", "nosuch": 1, "kernel_args": "ro"}
        )
    # kernel_args is a PVM key: unknown for HVM
    assert set(err.value.problems) == {"cpu_weight", "xen_cmd", "nosuch", "kernel_args"}
    assert "unknown parameter" in err.value.problems["nosuch"]


def test_pvm_only_and_hvm_only_keys_are_unknown_to_the_other():
    with pytest.raises(ParamError) as err:
        XEN_PVM_HVPARAMS.check_syntax({"acpi": True, "nic_type": "e1000"})
    assert set(err.value.problems) == {"acpi", "nic_type"}


def test_default_resets_a_key():
    assert XEN_PVM_HVPARAMS.check_syntax({"cpu_weight": "default"}) == {"cpu_weight": None}


def filled(schema, **over):
    return schema.fill(schema.check_syntax(over))


def test_combinations_of_defaults_are_fine():
    assert xen_combination_problems(filled(XEN_PVM_HVPARAMS), "xen-pvm") == {}
    assert xen_combination_problems(filled(XEN_HVM_HVPARAMS), "xen-hvm") == {}


def test_bootloader_needs_its_path():
    hv = filled(XEN_PVM_HVPARAMS, use_bootloader=True)
    problems = xen_combination_problems(hv, "xen-pvm")
    assert list(problems) == ["bootloader_path"]
    assert "use_bootloader" in problems["bootloader_path"]
    hv = filled(XEN_PVM_HVPARAMS, use_bootloader=True, bootloader_path="/usr/bin/pygrub")
    assert xen_combination_problems(hv, "xen-pvm") == {}


def test_pv_needs_a_kernel_or_a_bootloader():
    hv = filled(XEN_PVM_HVPARAMS, kernel_path="")
    assert list(xen_combination_problems(hv, "xen-pvm")) == ["kernel_path"]
    hv = filled(
        XEN_PVM_HVPARAMS, kernel_path="", use_bootloader=True, bootloader_path="/usr/bin/pygrub"
    )
    assert xen_combination_problems(hv, "xen-pvm") == {}


def test_cdrom_only_boot_needs_an_image():
    hv = filled(XEN_HVM_HVPARAMS, boot_order="d")
    assert list(xen_combination_problems(hv, "xen-hvm")) == ["boot_order"]
    hv = filled(XEN_HVM_HVPARAMS, boot_order="d", cdrom_image_path="/srv/iso/d.iso")
    assert xen_combination_problems(hv, "xen-hvm") == {}
    # "cd": the cdrom is only a fallback
    assert xen_combination_problems(filled(XEN_HVM_HVPARAMS, boot_order="dc"), "xen-hvm") == {}


def test_docs_table_matches_the_schemas():
    text = DOCS.read_text()
    for schema in (XEN_PVM_HVPARAMS, XEN_HVM_HVPARAMS):
        assert schema.doc_table() in text, (
            f"{DOCS.name}: the {schema.name} table is out of date; paste "
            f"{schema.name.split('/')[1].upper().replace('-', '_')}_HVPARAMS.doc_table() "
            "between its BEGIN/END markers"
        )

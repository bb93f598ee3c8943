"""Golden command lines of the KVM driver's pure builder (corral.hypervisor.kvm.cmdline).

Without ``caps`` the builder assumes the baseline every supported QEMU has (machine ``pc``);
tests/unit/hypervisor/test_kvm_cmdline_params.py covers the parameters of issue 3 per QEMU
version, with capabilities probed from tests/data/qemu/<version>/.
"""

from __future__ import annotations

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import AttachedDisk, InstanceSpec, NicSpec
from corral.hypervisor.kvm.cmdline import (
    HostFacts,
    argv_names_instance,
    build_argv,
    build_plan,
    disk_ids,
    qemu_escape,
    tap_name,
)
from corral.hypervisor.kvm.pci import spare_port_args
from corral.hypervisor.kvm.runtime import InstanceLayout
from corral.objects.params.hv import KVM_HVPARAMS

QEMU = "/usr/bin/qemu-system-x86_64"
TCG = HostFacts(qemu_binary=QEMU, qemu_version="7.2.22", accel="tcg")
KVM = HostFacts(qemu_binary=QEMU, qemu_version="7.2.22", accel="kvm")
LAYOUT = InstanceLayout(run_dir="/run/corral/hv/kvm", log_dir="/var/log/corral/kvm", name="vm1")
UUID = "6f1c2d3e-0000-4000-8000-00000000abcd"
DISK0 = AttachedDisk(
    index=0, uuid="11112222-3333-4444-5555-666677778888", path="/srv/disks/vm1.d0", format="raw"
)
NIC_BR = NicSpec(
    index=0, uuid="9a8b7c6d-1111-4222-8333-444455556666", mac="aa:00:00:11:22:33", link="br0"
)


def spec(**kw) -> InstanceSpec:
    base = dict(
        name="vm1", uuid=UUID, hypervisor="kvm", hvparams={}, memory=256, min_memory=128, vcpus=2
    )
    base.update(kw)
    return InstanceSpec(**base)


def hv(**kw):
    return KVM_HVPARAMS.fill(KVM_HVPARAMS.check_syntax(kw))


HEAD_TCG = [
    QEMU,
    "-name", "vm1",
    "-uuid", UUID,
    "-machine", "pc,accel=tcg",
    "-m", "256",
    "-smp", "2",
    "-nodefaults", "-no-user-config",
    "-display", "none",
    "-msg", "timestamp=on",
]  # fmt: skip
MONITOR = [
    "-chardev", "socket,id=qmp,path=/run/corral/hv/kvm/vm1/qmp.sock,server=on,wait=off",
    "-mon", "chardev=qmp,mode=control",
]  # fmt: skip
SERIAL = [
    "-chardev",
    "socket,id=serial0,path=/run/corral/hv/kvm/vm1/serial.sock,server=on,wait=off,"
    "logfile=/var/log/corral/kvm/vm1.serial.log,logappend=off",
    "-serial", "chardev:serial0",
]  # fmt: skip
TAIL = [
    "-device", "virtio-balloon-pci,id=balloon0",
    "-pidfile", "/run/corral/hv/kvm/vm1/qemu.pid",
    "-daemonize",
]  # fmt: skip


def test_kernel_boot_with_raw_disk_and_bridged_nic():
    argv = build_argv(
        spec(nics=[NIC_BR]),
        [DISK0],
        hv(kernel_path="/k/vmlinuz", initrd_path="/k/initrd.img"),
        TCG,
        LAYOUT,
    )
    assert argv == [
        *HEAD_TCG, *MONITOR, *SERIAL,
        "-kernel", "/k/vmlinuz",
        "-initrd", "/k/initrd.img",
        "-append", "root=/dev/vda console=ttyS0,38400 ro",
        "-blockdev",
        "driver=file,node-name=disk0-1111222233-file,filename=/srv/disks/vm1.d0,read-only=off",
        "-blockdev",
        "driver=raw,node-name=disk0-1111222233-fmt,file=disk0-1111222233-file,read-only=off",
        "-device", "virtio-blk-pci,id=disk0-1111222233,drive=disk0-1111222233-fmt",
        "-netdev", "tap,id=net0-9a8b7c6d11,ifname=crl9a8b7c6d.0,script=no,downscript=no",
        "-device", "virtio-net-pci,id=nic0-9a8b7c6d11,mac=aa:00:00:11:22:33,netdev=net0-9a8b7c6d11",
        *TAIL,
    ]  # fmt: skip


def test_disk_boot_qcow2_and_readonly_disk_nic_without_link():
    disks = [
        AttachedDisk(index=0, uuid="aaaa", path="/srv/disks/root.qcow2", format="qcow2"),
        AttachedDisk(index=1, uuid="bbbb", path="/dev/vg/data", format="raw", mode="ro"),
    ]
    nic = NicSpec(index=0, uuid="cccc", mac="aa:00:00:00:00:01")  # no link: no backend
    argv = build_argv(spec(nics=[nic]), disks, hv(kernel_path="", initrd_path=""), TCG, LAYOUT)
    assert argv == [
        *HEAD_TCG, *MONITOR, *SERIAL,
        "-blockdev",
        "driver=file,node-name=disk0-aaaa-file,filename=/srv/disks/root.qcow2,read-only=off",
        "-blockdev", "driver=qcow2,node-name=disk0-aaaa-fmt,file=disk0-aaaa-file,read-only=off",
        "-device", "virtio-blk-pci,id=disk0-aaaa,drive=disk0-aaaa-fmt,bootindex=1",
        "-blockdev",
        "driver=host_device,node-name=disk1-bbbb-file,filename=/dev/vg/data,read-only=on",
        "-blockdev", "driver=raw,node-name=disk1-bbbb-fmt,file=disk1-bbbb-file,read-only=on",
        "-device", "virtio-blk-pci,id=disk1-bbbb,drive=disk1-bbbb-fmt",
        "-device", "virtio-net-pci,id=nic0-cccc,mac=aa:00:00:00:00:01",
        *TAIL,
    ]  # fmt: skip


def test_q35_kvm_vnc_paused_with_cpu_host():
    argv = build_argv(
        spec(network_port=5901, nics=[NIC_BR]),
        [DISK0],
        hv(
            kernel_path="",
            machine_version="q35",
            cpu_type="host",
            vnc_bind_address="127.0.0.1",
            serial_console=False,
        ),
        KVM,
        LAYOUT,
        paused=True,
    )
    assert argv == [
        QEMU,
        "-name", "vm1",
        "-uuid", UUID,
        "-machine", "q35,accel=kvm",
        "-cpu", "host",
        "-m", "256",
        "-smp", "2",
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-msg", "timestamp=on",
        "-vnc", "127.0.0.1:1",
        "-device", "VGA,id=video0",
        *MONITOR,
        "-blockdev",
        "driver=file,node-name=disk0-1111222233-file,filename=/srv/disks/vm1.d0,read-only=off",
        "-blockdev",
        "driver=raw,node-name=disk0-1111222233-fmt,file=disk0-1111222233-file,read-only=off",
        "-device", "pcie-root-port,id=disk0-1111222233-port,chassis=1",
        "-device",
        "virtio-blk-pci,id=disk0-1111222233,drive=disk0-1111222233-fmt,"
        "bus=disk0-1111222233-port,bootindex=1",
        "-netdev", "tap,id=net0-9a8b7c6d11,ifname=crl9a8b7c6d.0,script=no,downscript=no",
        "-device", "pcie-root-port,id=nic0-9a8b7c6d11-port,chassis=2",
        "-device",
        "virtio-net-pci,id=nic0-9a8b7c6d11,mac=aa:00:00:11:22:33,netdev=net0-9a8b7c6d11,"
        "bus=nic0-9a8b7c6d11-port",
        *spare_port_args(),  # empty ports for hotplug (kvm/pci.py)
        *TAIL,
        "-S",
    ]  # fmt: skip


def test_paused_only_adds_dash_s_at_the_end():
    args = (spec(), [DISK0], hv(), TCG, LAYOUT)
    assert build_argv(*args, paused=True) == [*build_argv(*args), "-S"]
    plan = build_plan(*args)
    assert "-S" not in plan.argv  # the runtime keeps the argv without -S (reboot reuses it)


def test_tcg_refuses_cpu_host_naming_cpu_type():
    with pytest.raises(HypervisorError) as err:
        build_argv(spec(), [DISK0], hv(cpu_type="host"), TCG, LAYOUT)
    assert err.value.kind is ErrorKind.INVALID
    assert err.value.fields["param"] == "cpu_type"
    assert "cpu_type=host" in str(err.value) and "tcg" in str(err.value)


def test_other_cpu_model_and_accel_in_machine():
    argv = build_argv(spec(), [DISK0], hv(cpu_type="max"), TCG, LAYOUT)
    assert argv[argv.index("-cpu") + 1] == "max"
    argv = build_argv(spec(), [DISK0], hv(machine_version="pc-i440fx-7.2"), KVM, LAYOUT)
    assert argv[argv.index("-machine") + 1] == "pc-i440fx-7.2,accel=kvm"


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("127.0.0.1", 5905, "127.0.0.1:5"),
        ("127.0.0.1", None, "127.0.0.1:0,to=99"),
        ("::1", 5900, "[::1]:0"),
        ("0.0.0.0", 11000, "0.0.0.0:5100"),
    ],
)
def test_vnc_display(address, port, expected):
    argv = build_argv(spec(network_port=port), [DISK0], hv(vnc_bind_address=address), TCG, LAYOUT)
    assert argv[argv.index("-vnc") + 1] == expected
    assert "VGA,id=video0" in argv


def test_no_vnc_means_no_vga():
    argv = build_argv(spec(), [DISK0], hv(), TCG, LAYOUT)
    assert "-vnc" not in argv
    assert not any(a.startswith("VGA") for a in argv)
    assert argv[argv.index("-display") + 1] == "none"


def test_no_reboot_only_with_reboot_behavior_exit():
    assert "-no-reboot" not in build_argv(spec(), [DISK0], hv(), TCG, LAYOUT)
    assert "-no-reboot" in build_argv(spec(), [DISK0], hv(reboot_behavior="exit"), TCG, LAYOUT)


def test_serial_console_off_drops_serial_and_console_arg():
    argv = build_argv(spec(), [DISK0], hv(kernel_path="/k", serial_console=False), TCG, LAYOUT)
    assert "-serial" not in argv
    assert argv[argv.index("-append") + 1] == "root=/dev/vda ro"


def test_kernel_append_without_root_and_custom_speed():
    argv = build_argv(
        spec(),
        [],
        hv(
            kernel_path="/k", initrd_path="", root_path="", kernel_args="quiet", serial_speed=115200
        ),
        TCG,
        LAYOUT,
    )
    assert "-initrd" not in argv
    assert argv[argv.index("-append") + 1] == "console=ttyS0,115200 quiet"


@pytest.mark.parametrize(
    ("cache", "file_opt", "dev_opt"),
    [
        ("default", None, None),
        ("none", "cache.direct=on", None),
        ("writethrough", None, "write-cache=off"),
        ("writeback", None, "write-cache=on"),
    ],
)
def test_disk_cache(cache, file_opt, dev_opt):
    argv = build_argv(spec(), [DISK0], hv(disk_cache=cache), TCG, LAYOUT)
    file_node = argv[argv.index("-blockdev") + 1]
    device = next(a for a in argv if a.startswith("virtio-blk-pci"))
    assert ("cache.direct=on" in file_node) == (file_opt is not None)
    assert ("write-cache" in device) == (dev_opt is not None)
    if dev_opt:
        assert dev_opt in device


def test_ide_and_scsi_disks_and_nic_models():
    argv = build_argv(
        spec(nics=[NIC_BR]), [DISK0], hv(disk_type="ide", nic_type="e1000"), TCG, LAYOUT
    )
    assert any(a.startswith("ide-hd,id=disk0-") for a in argv)
    assert any(a.startswith("e1000,id=nic0-") for a in argv)
    argv = build_argv(spec(), [DISK0], hv(disk_type="scsi"), TCG, LAYOUT)
    assert "virtio-scsi-pci,id=scsi0" in argv
    assert any(a.startswith("scsi-hd,") and "bus=scsi0.0" in a for a in argv)


def test_cdrom_boot_and_network_boot():
    argv = build_argv(
        spec(nics=[NIC_BR]),
        [DISK0],
        hv(kernel_path="", boot_order="cdrom", cdrom_image_path="/iso/d.iso"),
        TCG,
        LAYOUT,
    )
    assert "ide-cd,id=cdrom0,drive=cdrom0-fmt,bootindex=1" in argv
    assert any(a.startswith("virtio-blk-pci") and a.endswith("bootindex=2") for a in argv)
    argv = build_argv(
        spec(nics=[NIC_BR]), [DISK0], hv(kernel_path="", boot_order="network"), TCG, LAYOUT
    )
    assert any(a.startswith("virtio-net-pci") and a.endswith("bootindex=1") for a in argv)


def test_routed_nic_gets_a_tap_without_bridge():
    nic = NicSpec(index=1, uuid="dddd", mac="aa:00:00:00:00:02", mode="routed", link="100")
    plan = build_plan(spec(nics=[nic]), [DISK0], hv(), TCG, LAYOUT)
    assert plan.nics[0].tap == tap_name(1, "dddd") == "crldddd.1"
    assert plan.nics[0].mode == "routed"


def test_kvm_extra_is_split_and_appended():
    argv = build_argv(spec(), [DISK0], hv(kvm_extra="-rtc  base=utc -usb"), TCG, LAYOUT)
    assert argv[-3:] == ["-rtc", "base=utc", "-usb"]


def test_commas_in_paths_are_escaped():
    layout = InstanceLayout(run_dir="/r,x", log_dir="/l", name="vm1")
    disk = AttachedDisk(index=0, uuid="u", path="/srv/a,b.img", format="raw")
    argv = build_argv(spec(), [disk], hv(), TCG, layout)
    assert "socket,id=qmp,path=/r,,x/vm1/qmp.sock,server=on,wait=off" in argv
    assert any("filename=/srv/a,,b.img" in a for a in argv)
    assert qemu_escape("a,b,,c") == "a,,b,,,,c"


@pytest.mark.parametrize(
    ("kw", "disks", "nics", "param"),
    [
        ({"kernel_path": "", "boot_order": "cdrom"}, [DISK0], [], "boot_order"),
        ({"kernel_path": ""}, [], [], "kernel_path"),
        (
            {},
            [DISK0],
            [NicSpec(index=0, uuid="e", mac="aa:00:00:00:00:03", mode="openvswitch", link="ovs0")],
            "mode",
        ),
        ({}, [AttachedDisk(index=0, uuid="f", path="/x.vmdk", format="vmdk")], [], "format"),
    ],
)
def test_contradictions_are_refused_by_param(kw, disks, nics, param):
    with pytest.raises(HypervisorError) as err:
        build_plan(spec(nics=nics), disks, hv(**kw), TCG, LAYOUT)
    assert err.value.kind is ErrorKind.INVALID
    assert err.value.fields["param"] == param


def test_ids_are_stable_short_and_unique():
    device, node, file_node = disk_ids(3, "0b8e4c52-1111-4222-8333-944455556666")
    assert (device, node, file_node) == (
        "disk3-0b8e4c5211",
        "disk3-0b8e4c5211-fmt",
        "disk3-0b8e4c5211-file",
    )
    assert len(file_node) < 32  # QEMU's node-name limit
    assert len(tap_name(7, "0b8e4c52-1111")) <= 15  # IFNAMSIZ - 1


def test_argv_names_instance():
    argv = build_argv(spec(), [DISK0], hv(), TCG, LAYOUT)
    assert argv_names_instance(argv, "vm1", UUID)
    assert argv_names_instance(argv, "vm1")
    assert not argv_names_instance(argv, "vm2")
    assert not argv_names_instance(argv, "vm1", "other-uuid")
    assert not argv_names_instance(["/usr/bin/python3", "vm1"], "vm1")

"""Golden command lines per hypervisor parameter and per QEMU version (issue 3).

Capabilities come from the probe outputs in tests/data/qemu/<version>/ (7.2 captured from
the real binary, the others written from QEMU's documented formats; see its README), so the
same parameters give the options each version offers.
"""

from __future__ import annotations

import shlex

import pytest

from corral.common.errors import ErrorKind, HypervisorError, ParamError
from corral.hypervisor.base import AttachedDisk, InstanceSpec, NicSpec
from corral.hypervisor.kvm.cmdline import HostFacts, build_plan
from corral.hypervisor.kvm.pci import spare_port_args
from corral.hypervisor.kvm.runtime import InstanceLayout
from corral.hypervisor.kvm.security import RunAs, pool_run_as
from corral.objects.params.hv import KVM_HVPARAMS
from tests.unit.hypervisor.test_kvm_probe import caps_of

QEMU = "/usr/bin/qemu-system-x86_64"
LAYOUT = InstanceLayout(run_dir="/run/corral/hv/kvm", log_dir="/var/log/corral/kvm", name="vm1")
UUID = "6f1c2d3e-0000-4000-8000-00000000abcd"
NVRAM = f"/var/lib/corral/kvm-nvram/{UUID}.fd"
DISK0 = AttachedDisk(index=0, uuid="d0", path="/srv/disks/vm1.d0", format="raw")
NIC0 = NicSpec(index=0, uuid="n0", mac="aa:00:00:00:00:01", link="br0")
QMP_AND_SERIAL = [
    "-chardev", "socket,id=qmp,path=/run/corral/hv/kvm/vm1/qmp.sock,server=on,wait=off",
    "-mon", "chardev=qmp,mode=control",
    "-chardev",
    "socket,id=serial0,path=/run/corral/hv/kvm/vm1/serial.sock,server=on,wait=off,"
    "logfile=/var/log/corral/kvm/vm1.serial.log,logappend=off",
    "-serial", "chardev:serial0",
]  # fmt: skip
TAIL = ["-device", "virtio-balloon-pci,id=balloon0"]
DAEMON = ["-pidfile", "/run/corral/hv/kvm/vm1/qemu.pid", "-daemonize"]


def spec(**kw) -> InstanceSpec:
    base = dict(
        name="vm1",
        uuid=UUID,
        hypervisor="kvm",
        hvparams={},
        memory=256,
        min_memory=128,
        vcpus=4,
        network_port=11000,
    )
    base.update(kw)
    return InstanceSpec(**base)


def hv(**kw):
    base = {"kernel_path": "", "initrd_path": ""}
    base.update(kw)
    return KVM_HVPARAMS.fill(KVM_HVPARAMS.check_syntax(base))


def host(version="7.2", **kw) -> HostFacts:
    caps = caps_of(version, QEMU)
    return HostFacts(qemu_binary=QEMU, qemu_version=caps.version, accel="tcg", caps=caps, **kw)


def argv_of(params, *, version="7.2", disks=(DISK0,), nics=(), **kw):
    return build_plan(spec(nics=list(nics)), list(disks), params, host(version, **kw), LAYOUT).argv


def bad(params, *, version="7.2", disks=(DISK0,), nics=(), **kw) -> HypervisorError:
    with pytest.raises(HypervisorError) as err:
        argv_of(params, version=version, disks=disks, nics=nics, **kw)
    assert err.value.kind is ErrorKind.INVALID
    return err.value


def value(argv, option, n=1):
    """The value after the n-th occurrence of ``option``."""
    found = [i for i, a in enumerate(argv) if a == option]
    return argv[found[n - 1] + 1]


def values(argv, option):
    return [argv[i + 1] for i, a in enumerate(argv) if a == option]


# --- the whole command line of a feature-rich guest, per version ---------------------------------


def full_params():
    return hv(
        machine_version="q35",
        disk_type="scsi",
        nic_type="e1000",
        cdrom_image_path="/iso/install.iso",
        boot_order="cdrom",
        usb_devices="usb-tablet",
        soundhw="hda",
        vnc_bind_address="127.0.0.1",
        vnc_password_file="/etc/corral/vnc-pw",
        keymap="de",
        firmware="uefi",
        cpu_cores=2,
        disk_aio="io_uring",
        security_model="pool",
        use_chroot=True,
    )


def full_argv(version):
    return argv_of(
        full_params(),
        version=version,
        nics=[NIC0],
        run_as=pool_run_as(20001),
        chroot="/run/corral/hv/kvm/vm1/chroot",
        nvram=NVRAM,
    )


def test_golden_full_guest_on_qemu_7_2():
    assert full_argv("7.2") == [
        QEMU,
        "-name", "vm1",
        "-uuid", UUID,
        "-machine", "pc-q35-7.2,accel=tcg,pflash0=pflash0,pflash1=pflash1",
        "-m", "256",
        "-smp", "4,sockets=2,cores=2,threads=1",
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-msg", "timestamp=on",
        "-object", "secret,id=vnc-secret0,file=/run/corral/hv/kvm/vm1/vnc.secret,format=raw",
        "-vnc", "127.0.0.1:5100,password-secret=vnc-secret0",
        "-k", "de",
        "-device", "VGA,id=video0",
        *QMP_AND_SERIAL,
        "-blockdev",
        "driver=file,node-name=pflash0-file,filename=/usr/share/OVMF/OVMF_CODE_4M.fd,"
        "read-only=on",
        "-blockdev", "driver=raw,node-name=pflash0,file=pflash0-file,read-only=on",
        "-blockdev", f"driver=file,node-name=pflash1-file,filename={NVRAM},read-only=off",
        "-blockdev", "driver=raw,node-name=pflash1,file=pflash1-file,read-only=off",
        "-device", "virtio-scsi-pci,id=scsi0",
        "-blockdev",
        "driver=file,node-name=disk0-d0-file,filename=/srv/disks/vm1.d0,read-only=off,"
        "aio=io_uring",
        "-blockdev", "driver=raw,node-name=disk0-d0-fmt,file=disk0-d0-file,read-only=off",
        "-device", "scsi-hd,id=disk0-d0,drive=disk0-d0-fmt,bus=scsi0.0,bootindex=2",
        "-blockdev", "driver=file,node-name=cdrom0-file,filename=/iso/install.iso,read-only=on",
        "-blockdev", "driver=raw,node-name=cdrom0-fmt,file=cdrom0-file,read-only=on",
        "-device", "ide-cd,id=cdrom0,drive=cdrom0-fmt,bootindex=1",
        "-netdev", "tap,id=net0-n0,ifname=crln0.0,script=no,downscript=no",
        "-device", "pcie-root-port,id=nic0-n0-port,chassis=1",
        "-device", "e1000,id=nic0-n0,mac=aa:00:00:00:00:01,netdev=net0-n0,bus=nic0-n0-port",
        *spare_port_args(),
        "-device", "qemu-xhci,id=usb0",
        "-device", "usb-tablet,id=usb0-dev0,bus=usb0.0",
        "-audiodev", "none,id=audio0",
        "-device", "intel-hda,id=sound0",
        "-device", "hda-duplex,id=sound0-codec0,bus=sound0.0,audiodev=audio0",
        *TAIL,
        "-chroot", "/run/corral/hv/kvm/vm1/chroot",
        "-runas", "20001:20001",
        *DAEMON,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("version", "machine", "process"),
    [
        ("7.2", "pc-q35-7.2", ["-chroot", "/run/corral/hv/kvm/vm1/chroot",
                               "-runas", "20001:20001"]),
        ("8.2", "pc-q35-8.2", ["-run-with", "chroot=/run/corral/hv/kvm/vm1/chroot",
                               "-runas", "20001:20001"]),
        ("9.1", "pc-q35-9.1", ["-run-with",
                               "chroot=/run/corral/hv/kvm/vm1/chroot,user=20001:20001"]),
    ],
)  # fmt: skip
def test_full_guest_differs_between_versions_only_where_qemu_changed(version, machine, process):
    argv = full_argv(version)
    reference = full_argv("7.2")
    assert value(argv, "-machine").split(",")[0] == machine
    tail = argv[argv.index("virtio-balloon-pci,id=balloon0") + 1 : argv.index("-pidfile")]
    assert tail == process
    # everything else is the same command line
    strip = {value(argv, "-machine"), value(reference, "-machine"), *process}
    strip |= {"-chroot", "-runas", "-run-with", "/run/corral/hv/kvm/vm1/chroot", "20001:20001"}
    assert [a for a in argv if a not in strip] == [a for a in reference if a not in strip]


def test_full_guest_on_qemu_6_2_refuses_the_vnc_password():
    err = bad(full_params(), version="6.2", nics=[NIC0], run_as=pool_run_as(20001),
              chroot="/c", nvram=NVRAM)  # fmt: skip
    assert err.fields["param"] == "vnc_password_file"
    assert "QEMU 7.0 or newer" in str(err) and "6.2.0" in str(err)


# --- machine, CPU --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "version", "expected"),
    [
        ("", "7.2", "pc-i440fx-7.2"),
        ("", "5.2", "pc-i440fx-5.2"),
        ("pc", "9.1", "pc-i440fx-9.1"),
        ("q35", "8.2", "pc-q35-8.2"),
        ("pc-q35-6.2", "7.2", "pc-q35-6.2"),
    ],
)
def test_machine_default_and_aliases_resolve_to_concrete_types(asked, version, expected):
    plan = build_plan(spec(), [DISK0], hv(machine_version=asked), host(version), LAYOUT)
    assert plan.machine == expected
    assert value(plan.argv, "-machine") == f"{expected},accel=tcg"


def test_unknown_machine_is_refused_naming_machine_version():
    err = bad(hv(machine_version="pc-q35-9.1"), version="7.2")
    assert err.fields["param"] == "machine_version" and "-machine help" in str(err)


@pytest.mark.parametrize(
    ("topology", "vcpus", "smp"),
    [
        ({}, 4, "4"),
        ({"cpu_sockets": 2, "cpu_cores": 2, "cpu_threads": 1}, 4, "4,sockets=2,cores=2,threads=1"),
        ({"cpu_cores": 2}, 4, "4,sockets=2,cores=2,threads=1"),
        ({"cpu_threads": 2}, 4, "4,sockets=2,cores=1,threads=2"),
        ({"cpu_sockets": 1}, 6, "6,sockets=1,cores=6,threads=1"),
        ({"cpu_sockets": 2, "cpu_threads": 2}, 8, "8,sockets=2,cores=2,threads=2"),
    ],
)
def test_smp_topology(topology, vcpus, smp):
    plan = build_plan(spec(vcpus=vcpus), [DISK0], hv(**topology), host(), LAYOUT)
    assert value(plan.argv, "-smp") == smp


@pytest.mark.parametrize(
    ("topology", "vcpus", "param"),
    [
        ({"cpu_sockets": 2, "cpu_cores": 2, "cpu_threads": 2}, 4, "cpu_sockets"),
        ({"cpu_cores": 3}, 4, "cpu_cores"),
        ({"cpu_threads": 8}, 4, "cpu_threads"),
        ({"cpu_sockets": 3}, 4, "cpu_sockets"),
    ],
)
def test_smp_topology_that_cannot_multiply_to_vcpus(topology, vcpus, param):
    with pytest.raises(HypervisorError) as err:
        build_plan(spec(vcpus=vcpus), [DISK0], hv(**topology), host(), LAYOUT)
    assert err.value.fields["param"] == param
    assert f"instance's {vcpus} vCPU(s)" in str(err.value)


# --- disks, NICs, cdroms -------------------------------------------------------------------------


@pytest.mark.parametrize(("aio", "opt"), [("threads", None), ("native", "aio=native"),
                                          ("io_uring", "aio=io_uring")])  # fmt: skip
def test_disk_aio(aio, opt):
    params = hv(disk_aio=aio, disk_cache="none" if aio == "native" else "default")
    file_node = value(argv_of(params), "-blockdev")
    assert ("aio=" in file_node) == (opt is not None)
    if opt:
        assert file_node.endswith(opt)


@pytest.mark.parametrize(
    ("nic_type", "model"),
    [("paravirtual", "virtio-net-pci"), ("e1000e", "e1000e"), ("i82559er", "i82559er"),
     ("pcnet", "pcnet"), ("ne2k_pci", "ne2k_pci"), ("rtl8139", "rtl8139")],
)  # fmt: skip
def test_nic_models(nic_type, model):
    devices = values(argv_of(hv(nic_type=nic_type), nics=[NIC0]), "-device")
    assert any(d.startswith(f"{model},id=nic0-n0,") for d in devices)


def test_scsi_cdrom_brings_the_controller_and_a_second_cdrom_and_url():
    argv = argv_of(
        hv(
            cdrom_disk_type="scsi",
            cdrom_image_path="https://mirror.example/debian.iso",
            cdrom2_image_path="/iso/drivers,v2.iso",
            boot_order="cdrom",
        ),
        disks=[],
    )
    assert values(argv, "-device")[0] == "virtio-scsi-pci,id=scsi0"  # no SCSI disk needed it
    blockdevs = values(argv, "-blockdev")
    assert blockdevs[0] == (
        "driver=https,node-name=cdrom0-file,url=https://mirror.example/debian.iso,read-only=on"
    )
    assert blockdevs[2] == (
        "driver=file,node-name=cdrom1-file,filename=/iso/drivers,,v2.iso,read-only=on"
    )
    cdroms = [d for d in values(argv, "-device") if d.startswith("scsi-cd")]
    assert cdroms == [
        "scsi-cd,id=cdrom0,drive=cdrom0-fmt,bus=scsi0.0,bootindex=1",
        "scsi-cd,id=cdrom1,drive=cdrom1-fmt,bus=scsi0.0",
    ]


def test_only_the_first_cdrom_boots():
    argv = argv_of(hv(boot_order="cdrom", cdrom_image_path="/a.iso", cdrom2_image_path="/b.iso"))
    devices = values(argv, "-device")
    assert "ide-cd,id=cdrom0,drive=cdrom0-fmt,bootindex=1" in devices
    assert "ide-cd,id=cdrom1,drive=cdrom1-fmt" in devices


def test_disk_model_missing_from_the_binary_is_refused():
    caps = caps_of("7.2", QEMU)
    slim = type(caps)(
        binary=QEMU,
        version=caps.version,
        options=caps.options,
        machines=caps.machines,
        devices=caps.devices - {"virtio-scsi-pci", "scsi-hd"},
    )
    with pytest.raises(HypervisorError) as err:
        build_plan(
            spec(), [DISK0], hv(disk_type="scsi"),
            HostFacts(qemu_binary=QEMU, qemu_version="7.2.22", accel="tcg", caps=slim), LAYOUT,
        )  # fmt: skip
    assert err.value.fields["param"] == "disk_type" and "scsi-hd" in str(err.value)


# --- consoles ------------------------------------------------------------------------------------


def test_vnc_tls_with_verify_and_ipv6():
    argv = argv_of(
        hv(
            vnc_bind_address="::1",
            vnc_tls=True,
            vnc_x509_path="/etc/corral/vnc",
            vnc_x509_verify=True,
        )
    )
    assert values(argv, "-object") == [
        "tls-creds-x509,id=vnc-tls0,dir=/etc/corral/vnc,endpoint=server,verify-peer=on"
    ]
    assert value(argv, "-vnc") == "[::1]:5100,tls-creds=vnc-tls0"


def test_spice_golden_on_qemu_7_2():
    argv = argv_of(
        hv(
            spice_bind="127.0.0.1",
            spice_ip_version=4,
            spice_password_file="/etc/corral/spice-pw",
            spice_image_compression="auto_glz",
            spice_streaming_video="filter",
            spice_playback_compression=False,
        )
    )
    start = argv.index("-object")
    assert argv[start : start + 12] == [
        "-object", "secret,id=spice-secret0,file=/run/corral/hv/kvm/vm1/spice.secret,format=raw",
        "-spice",
        "addr=127.0.0.1,ipv4=on,port=11000,password-secret=spice-secret0,"
        "image-compression=auto_glz,streaming-video=filter,playback-compression=off",
        "-device", "qxl-vga,id=video0",
        "-device", "virtio-serial-pci,id=vdagent-serial0",
        "-chardev", "spicevmc,id=vdagent0,name=vdagent",
        "-device",
        "virtserialport,bus=vdagent-serial0.0,chardev=vdagent0,name=com.redhat.spice.0",
    ]  # fmt: skip
    assert "-vnc" not in argv


def test_spice_tls_without_password_and_agent():
    argv = argv_of(
        hv(
            spice_bind="0.0.0.0",
            spice_use_tls=True,
            spice_x509_path="/etc/corral/spice",
            spice_use_vdagent=False,
        )
    )
    assert value(argv, "-spice") == (
        "addr=0.0.0.0,tls-port=11000,x509-dir=/etc/corral/spice,"
        "tls-ciphers=HIGH:-DES:-3DES:-EXPORT:-ADH,disable-ticketing=on,playback-compression=on"
    )
    assert "-object" not in argv and "spicevmc" not in " ".join(argv)


def test_spice_on_a_qemu_without_spice_names_spice_bind():
    err = bad(hv(spice_bind="127.0.0.1"), version="9.1")
    assert err.fields["param"] == "spice_bind"
    assert "built without SPICE" in str(err) and "9.1.0" in str(err)


def test_spice_password_on_qemu_6_2_is_refused():
    err = bad(hv(spice_bind="127.0.0.1", spice_password_file="/pw"), version="6.2")
    assert err.fields["param"] == "spice_password_file"


def test_spice_needs_a_network_port():
    with pytest.raises(HypervisorError) as err:
        build_plan(spec(network_port=None), [DISK0], hv(spice_bind="127.0.0.1"), host(), LAYOUT)
    assert err.value.fields["param"] == "spice_bind"


# --- USB, sound, extra ---------------------------------------------------------------------------


def test_usb_devices_on_xhci():
    devices = values(argv_of(hv(usb_devices="usb-tablet, usb-kbd")), "-device")
    assert devices[-4:-1] == [
        "qemu-xhci,id=usb0",
        "usb-tablet,id=usb0-dev0,bus=usb0.0",
        "usb-kbd,id=usb0-dev1,bus=usb0.0",
    ]


def test_unknown_usb_model_is_refused_by_the_binary_check():
    err = bad(hv(usb_devices="usb-nonexistent"))
    assert err.fields["param"] == "usb_devices" and "usb-nonexistent" in str(err)


@pytest.mark.parametrize(
    ("soundhw", "devices"),
    [
        ("ac97", ["AC97,id=sound0,audiodev=audio0"]),
        ("es1370", ["ES1370,id=sound0,audiodev=audio0"]),
        ("ich9-hda", ["ich9-intel-hda,id=sound0",
                      "hda-duplex,id=sound0-codec0,bus=sound0.0,audiodev=audio0"]),
    ],
)  # fmt: skip
def test_sound_cards(soundhw, devices):
    argv = argv_of(hv(soundhw=soundhw))
    assert value(argv, "-audiodev") == "none,id=audio0"
    assert values(argv, "-device")[-1 - len(devices) : -1] == devices


def test_kvm_extra_is_split_like_a_shell_line():
    argv = argv_of(hv(kvm_extra="-rtc base=utc -smbios 'type=1,product=My PC'"))
    assert argv[-4:] == ["-rtc", "base=utc", "-smbios", "type=1,product=My PC"]


# --- security, firmware --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "run_as", "chroot", "expected"),
    [
        ("5.2", RunAs(uid=1001, gid=1001, qemu_user="corral-kvm"), "", ["-runas", "corral-kvm"]),
        ("8.2", None, "/srv/c,x", ["-run-with", "chroot=/srv/c,,x"]),
        ("9.1", pool_run_as(20005), "", ["-run-with", "user=20005:20005"]),
        ("7.2", None, "", []),
    ],
)
def test_privilege_options_per_version(version, run_as, chroot, expected):
    argv = argv_of(hv(), version=version, run_as=run_as, chroot=chroot)
    after_balloon = argv.index("virtio-balloon-pci,id=balloon0") + 1
    assert argv[after_balloon : argv.index("-pidfile")] == expected


def test_uefi_needs_the_store_path():
    err = bad(hv(firmware="uefi"))
    assert err.fields["param"] == "firmware"


def test_uefi_needs_memory_for_ovmf():
    with pytest.raises(HypervisorError) as err:
        build_plan(spec(memory=128), [DISK0], hv(firmware="uefi"), host(nvram=NVRAM), LAYOUT)
    assert err.value.fields["param"] == "firmware"
    assert "at least 192 MiB" in str(err.value) and "has 128 MiB" in str(err.value)


def test_uefi_on_pc_with_escaped_paths():
    argv = argv_of(
        hv(firmware="uefi", ovmf_code_path="/fw/OVMF,CODE.fd"), nvram="/data/nv,ram/x.fd"
    )
    assert value(argv, "-machine") == "pc-i440fx-7.2,accel=tcg,pflash0=pflash0,pflash1=pflash1"
    blockdevs = values(argv, "-blockdev")
    assert "filename=/fw/OVMF,,CODE.fd" in blockdevs[0]
    assert "filename=/data/nv,,ram/x.fd" in blockdevs[2]


# --- nothing unvalidated reaches an option string ------------------------------------------------


@pytest.mark.parametrize(
    ("key", "smuggled"),
    [
        ("machine_version", "pc,accel=kvm"),
        ("keymap", "de,x=y"),
        ("usb_devices", "usb-tablet,id=evil,bus=pci.0"),
        ("security_domain", "user,evil"),
        ("spice_tls_ciphers", "HIGH,x509-dir=/tmp"),
        ("vnc_bind_address", "127.0.0.1,password=off"),
        ("spice_bind", "127.0.0.1,disable-ticketing=on"),
        ("kernel_path", "relative,path"),
        ("cdrom_image_path", "https://x/a.iso file=/etc/shadow"),
        ("serial_speed", "9600,x"),
    ],
)
def test_commas_cannot_be_smuggled_into_option_values(key, smuggled):
    with pytest.raises(ParamError) as err:
        KVM_HVPARAMS.check_syntax({key: smuggled})
    assert set(err.value.problems) == {key}


def test_paths_with_commas_are_escaped_everywhere():
    layout = InstanceLayout(run_dir="/run/a,b", log_dir="/log/c,d", name="vm1")
    params = hv(
        cdrom_image_path="/iso/e,f.iso",
        vnc_bind_address="127.0.0.1",
        vnc_password_file="/pw",
        vnc_tls=True,
        vnc_x509_path="/x509/g,h",
        use_chroot=True,
    )
    disk = AttachedDisk(index=0, uuid="d0", path="/srv/i,j.img")
    argv = build_plan(
        spec(), [disk], params, host("8.2", chroot="/run/a,b/vm1/chroot"), layout
    ).argv
    joined = shlex.join(argv)
    for escaped in ("/run/a,,b/vm1/qmp.sock", "/log/c,,d/vm1.serial.log", "/iso/e,,f.iso",
                    "/run/a,,b/vm1/vnc.secret", "dir=/x509/g,,h", "/srv/i,,j.img",
                    "chroot=/run/a,,b/vm1/chroot"):  # fmt: skip
        assert escaped in joined, escaped
    # the plain (non-option) arguments stay verbatim
    assert value(argv, "-pidfile") == "/run/a,b/vm1/qemu.pid"

"""Probing QEMU binaries (corral.hypervisor.kvm.probe) on outputs of several QEMU versions.

tests/data/qemu/7.2/ is captured from this machine's real QEMU; the other versions are
written from QEMU's documented formats (see tests/data/qemu/README.md). The prober runs
through RecordingRunner-like fakes here; the real binary is probed in
tests/integration/test_kvm_params.py.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence

import pytest

from corral.common.errors import CommandError, ErrorKind, HypervisorError
from corral.common.runcmd import CmdResult
from corral.hypervisor.kvm.probe import (
    MIN_VERSION,
    QemuCaps,
    QemuProber,
    caps_from_outputs,
    check_supported,
    parse_devices,
    parse_help,
    parse_machines,
    parse_run_with,
    parse_spice,
    parse_version,
    version_tuple,
)
from tests.unit.hypervisor.hv_fakes import QEMU_DATA, QEMU_PROBES

VERSIONS = ("5.2", "6.2", "7.2", "8.2", "9.1")


def data(version: str, name: str) -> str:
    path = QEMU_DATA / version / name
    return path.read_text() if path.exists() else ""


def caps_of(version: str, binary: str = "/usr/bin/qemu-system-x86_64") -> QemuCaps:
    return caps_from_outputs(
        binary,
        version=data(version, "version.txt"),
        help_text=data(version, "help.txt"),
        machine_help=data(version, "machine-help.txt"),
        device_help=data(version, "device-help.txt"),
        spice_help=data(version, "spice-help.txt"),
    )


class VersionRunner:
    """A FAKE runner answering the probe commands from tests/data/qemu/<version>/."""

    def __init__(self, version: str, *, stderr_for_blockdev: str = "") -> None:
        self.version = version
        self.stderr_for_blockdev = stderr_for_blockdev
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        cwd: str | None = None,
        c_locale: bool = False,
    ) -> CmdResult:
        assert c_locale, "probe output is parsed: it must run with LC_ALL=C"
        with self.lock:
            self.calls.append(list(argv))
        if "-blockdev" in argv:
            return CmdResult(tuple(argv), 1, "", self.stderr_for_blockdev)
        name = QEMU_PROBES[tuple(argv[1:])]
        # NOTE: QEMU 7.2's `-spice help` exits with 1 after printing the options
        return CmdResult(tuple(argv), 1 if "-spice" in argv else 0, data(self.version, name), "")


# --- parsers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "full"),
    [("4.1", "4.1.1"), ("5.2", "5.2.0"), ("6.2", "6.2.0"), ("7.2", "7.2.22"), ("8.2", "8.2.2"),
     ("9.1", "9.1.0")],
)  # fmt: skip
def test_parse_version_of_every_capture(version, full):
    assert parse_version(data(version, "version.txt")) == full


def test_version_tuple_and_garbage():
    assert version_tuple("7.2.22") == (7, 2, 22)
    assert version_tuple("9.1") == (9, 1, 0)
    assert version_tuple("") == (0, 0, 0)
    assert parse_version("no version here") == ""


def test_parse_help_of_the_real_7_2():
    options = parse_help(data("7.2", "help.txt"))
    for opt in (
        "-machine",
        "-display",
        "-msg",
        "-no-user-config",
        "-runas",
        "-chroot",
        "-spice",
        "-vnc",
        "-k",
        "-audiodev",
        "-blockdev",
        "-daemonize",
        "-nographic",
    ):
        assert opt in options, opt  # fmt: skip
    assert "-run-with" not in options
    # continuation lines belong to their option; repeated options are joined
    assert "user can be numeric uid:gid instead" in options["-runas"]
    assert "-audiodev none,id=id" in options["-audiodev"]
    assert "aio=threads|native|io_uring" in options["-drive"]
    assert "--preconfig" in options  # QEMU documents this one with two dashes
    assert all(name.startswith("-") and " " not in name for name in options)


@pytest.mark.parametrize(
    ("version", "keys", "runas", "chroot"),
    [
        ("5.2", set(), True, True),
        ("6.2", set(), True, True),
        ("7.2", set(), True, True),
        ("8.2", {"async-teardown", "chroot"}, True, True),
        ("9.1", {"async-teardown", "chroot", "user"}, True, False),
    ],
)
def test_process_options_per_version(version, keys, runas, chroot):
    caps = caps_of(version)
    assert caps.run_with == keys
    assert caps.has_option("-runas") is runas
    assert caps.has_option("-chroot") is chroot
    assert caps.has_option("-display") and caps.has_option("-msg")


def test_parse_run_with_ignores_the_description_lines():
    usage = parse_help(data("9.1", "help.txt"))["-run-with"]
    assert parse_run_with(usage) == {"async-teardown", "chroot", "user"}
    assert parse_run_with("") == frozenset()


def test_parse_machines_of_the_real_7_2():
    machines = parse_machines(data("7.2", "machine-help.txt"))
    assert {"pc", "q35", "pc-i440fx-7.2", "pc-q35-7.2", "pc-q35-4.0.1", "microvm", "none"} <= (
        machines.names
    )
    assert machines.default == "pc-i440fx-7.2"
    assert machines.aliases == {"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"}
    assert "Supported" not in machines.names


@pytest.mark.parametrize("version", VERSIONS)
def test_default_machine_and_aliases_per_version(version):
    caps = caps_of(version)
    assert caps.machines.default == f"pc-i440fx-{version}"
    assert caps.resolve_machine("") == f"pc-i440fx-{version}"
    assert caps.resolve_machine("q35") == f"pc-q35-{version}"
    assert caps.resolve_machine("pc-q35-5.2") == "pc-q35-5.2"  # versioned names stay


def test_parse_devices_names_and_aliases():
    devices = parse_devices(data("7.2", "device-help.txt"))
    assert {"virtio-blk-pci", "virtio-blk", "scsi-hd", "scsi-cd", "ide-cd", "e1000", "e1000e",
            "rtl8139", "qemu-xhci", "usb-tablet", "intel-hda", "hda-duplex", "AC97", "ac97",
            "qxl-vga", "VGA", "pcie-root-port", "virtio-scsi-pci"} <= devices  # fmt: skip
    assert "Controller/Bridge/Hub devices:" not in devices


def test_parse_spice_per_version():
    assert "password-secret" in parse_spice(data("7.2", "spice-help.txt"))
    assert "password-secret" not in parse_spice(data("5.2", "spice-help.txt"))
    assert {"addr", "port", "tls-port", "x509-dir", "disable-ticketing"} <= parse_spice(
        data("6.2", "spice-help.txt")
    )
    assert parse_spice("") == frozenset()
    assert parse_spice("qemu-system-x86_64: -spice help: invalid option") == frozenset()


def test_spice_presence_per_version():
    assert caps_of("7.2").has_spice and caps_of("8.2").has_spice and caps_of("5.2").has_spice
    no_spice = caps_of("9.1")
    assert not no_spice.has_spice and not no_spice.has_device("qxl-vga")


def test_secret_passwords_from_7_0():
    assert not caps_of("6.2").secret_passwords
    assert caps_of("7.2").secret_passwords and caps_of("9.1").secret_passwords


# --- version floor -------------------------------------------------------------------------------


def test_too_old_qemu_is_refused_with_a_clear_error():
    caps = caps_from_outputs(
        "/opt/qemu-4.1/bin/qemu-system-x86_64",
        version=data("4.1", "version.txt"),
        help_text="",
        machine_help="",
        device_help="",
    )
    with pytest.raises(HypervisorError) as err:
        check_supported(caps)
    assert err.value.kind is ErrorKind.ENVIRONMENT
    message = str(err.value)
    assert "QEMU 4.1.1" in message and "older than 4.2" in message
    assert "/opt/qemu-4.1/bin/qemu-system-x86_64" in message
    assert MIN_VERSION == (4, 2)


@pytest.mark.parametrize("version", VERSIONS)
def test_supported_versions_pass(version):
    check_supported(caps_of(version))


def test_unreadable_version_is_refused():
    with pytest.raises(HypervisorError, match="cannot tell the version"):
        check_supported(QemuCaps(binary="/q", version="", options=frozenset()))


# --- the cached prober ---------------------------------------------------------------------------


@pytest.fixture
def binary(tmp_path):
    path = tmp_path / "qemu-system-x86_64"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_prober_asks_each_command_once_per_binary(binary):
    runner = VersionRunner("7.2")
    prober = QemuProber(runner)
    first = prober.caps(str(binary))
    assert prober.caps(str(binary)) is first
    assert prober.version(str(binary)) == "7.2.22"
    assert "q35" in prober.machines(str(binary))
    asked = sorted(tuple(c[1:]) for c in runner.calls)
    assert asked == sorted(QEMU_PROBES)  # --version, --help, -machine/-device/-spice help
    assert first.has_spice and first.machines.default == "pc-i440fx-7.2"


def test_prober_skips_spice_help_without_spice(binary):
    runner = VersionRunner("9.1")
    caps = QemuProber(runner).caps(str(binary))
    assert ("-spice", "help") not in [tuple(c[1:]) for c in runner.calls]
    assert caps.run_with == {"async-teardown", "chroot", "user"}


def test_prober_asks_again_when_the_binary_changes(binary):
    runner = VersionRunner("7.2")
    prober = QemuProber(runner)
    prober.caps(str(binary))
    count = len(runner.calls)
    binary.write_text("#!/bin/sh\n# upgraded: another size\nexit 0\n")
    runner.version = "8.2"
    assert prober.caps(str(binary)).version == "8.2.2"
    assert len(runner.calls) == 2 * count


def test_prober_keys_the_cache_by_real_path(binary, tmp_path):
    link = tmp_path / "kvm"
    os.symlink(binary, link)
    runner = VersionRunner("7.2")
    prober = QemuProber(runner)
    prober.caps(str(binary))
    count = len(runner.calls)
    prober.caps(str(link))
    assert len(runner.calls) == count


def test_prober_concurrent_first_use_gives_equal_answers(binary):
    runner = VersionRunner("7.2")
    prober = QemuProber(runner)
    results: list[QemuCaps] = []
    threads = [threading.Thread(target=lambda: results.append(prober.caps(str(binary))))
               for _ in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.version for r in results}) == 1 and len(results) == 8


def test_missing_binary_is_an_environment_error(tmp_path):
    prober = QemuProber(VersionRunner("7.2"))
    with pytest.raises(HypervisorError) as err:
        prober.caps(str(tmp_path / "nope"))
    assert err.value.kind is ErrorKind.ENVIRONMENT and "not found" in str(err.value)


def test_failing_probe_is_an_environment_error(binary):
    def failing(argv, **kw):
        raise CommandError(list(argv), 1, "", "boom")

    with pytest.raises(HypervisorError) as err:
        QemuProber(failing).caps(str(binary))
    assert err.value.kind is ErrorKind.ENVIRONMENT and "cannot query QEMU" in str(err.value)


@pytest.mark.parametrize(
    ("stderr", "accepted"),
    [
        ("qemu: module block-block-curl not found\n-blockdev ...: Unknown driver 'http'", False),
        ("-blockdev ...: Parameter 'aio' does not accept value 'io_uring'", False),
        ("-blockdev ...: Could not open '/nonexistent/corral-probe': No such file", True),
        ("-blockdev ...: CURL: Couldn't connect to server", True),
    ],
)
def test_block_probes_read_qemus_complaint(binary, stderr, accepted):
    runner = VersionRunner("7.2", stderr_for_blockdev=stderr)
    prober = QemuProber(runner)
    assert prober.has_block_driver(str(binary), "https") is accepted
    assert prober.has_io_uring(str(binary)) is accepted
    before = len(runner.calls)
    prober.has_block_driver(str(binary), "https")
    assert len(runner.calls) == before  # cached
    probe = runner.calls[0]
    assert probe[1:6] == ["-machine", "none", "-nodefaults", "-display", "none"]
    assert probe[-1] == "driver=https,node-name=probe,url=https://127.0.0.1:0/probe"

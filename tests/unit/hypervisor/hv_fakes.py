"""Test doubles for the hypervisor unit tests.

``RecordingRunner`` is a FAKE command runner (the ``runner=`` of the KVM driver): it records
argv lists and replays QEMU output captured from the real qemu-system-x86_64 7.2 in
tests/data/qemu/7.2/, so parameter validation and tap handling can be checked without root
or QEMU. Real commands run in tests/integration/test_kvm_driver.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from corral.common.errors import CommandError
from corral.common.runcmd import CmdResult

DATA = Path(__file__).resolve().parents[2] / "data" / "hypervisor"
#: Outputs of the real qemu-system-x86_64 of several versions (see its README).
QEMU_DATA = Path(__file__).resolve().parents[2] / "data" / "qemu"
#: Probe command (argv after the binary) -> captured output file of tests/data/qemu/<version>/.
QEMU_PROBES = {
    ("--version",): "version.txt",
    ("--help",): "help.txt",
    ("-machine", "help"): "machine-help.txt",
    ("-device", "help"): "device-help.txt",
    ("-spice", "help"): "spice-help.txt",
}


def captured(name: str) -> str:
    return (DATA / name).read_text()


class RecordingRunner:
    """Records every argv; answers QEMU queries from captured output; fails on request."""

    def __init__(self, *, fail_on: Sequence[str] = ()) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = list(fail_on)  # substrings of " ".join(argv) that make a call fail

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
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        joined = " ".join(argv)
        if any(pattern in joined for pattern in self.fail_on):
            if check:
                raise CommandError(argv, 2, "", f"fake failure of {joined}")
            return CmdResult(tuple(argv), 2, "", "fake failure")
        probe = QEMU_PROBES.get(tuple(argv[1:]))
        if probe is not None:
            return CmdResult(tuple(argv), 0, (QEMU_DATA / "7.2" / probe).read_text(), "")
        if "-blockdev" in argv:  # kvm/probe.py block probes: this QEMU 7.2 has no curl
            if "driver=http" in joined:
                return CmdResult(tuple(argv), 1, "", "-blockdev ...: Unknown driver 'http'")
            return CmdResult(tuple(argv), 1, "", "-blockdev ...: Could not open '/nonexistent'")
        return CmdResult(tuple(argv), 0, "", "")

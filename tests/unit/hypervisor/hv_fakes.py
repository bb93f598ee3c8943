"""Test doubles for the hypervisor unit tests.

``RecordingRunner`` is a FAKE command runner (the ``runner=`` of the KVM driver): it records
argv lists and replays QEMU output captured from the real qemu-system-x86_64 7.2 in
tests/data/hypervisor/, so parameter validation and tap handling can be checked without root
or QEMU. Real commands run in tests/integration/test_kvm_driver.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from corral.common.errors import CommandError
from corral.common.runcmd import CmdResult

DATA = Path(__file__).resolve().parents[2] / "data" / "hypervisor"


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
        out = ""
        if argv[1:] == ["--version"]:
            out = captured("qemu-7.2-version.txt")
        elif argv[1:] == ["-machine", "help"]:
            out = captured("qemu-7.2-machine-help.txt")
        return CmdResult(tuple(argv), 0, out, "")

"""The ``xl`` runner (corral/hypervisor/xen/xl.py) with an injected FAKE command runner.

There is no Xen on this host, so ``xl`` cannot run here: the fake runner replays the real
``xl`` 4.17.5 outputs of tests/data/xen/ (stdout, stderr, exit codes as captured) and
records every argv. The real ``xl`` is exercised in the Xen appliance tests
(tests/integration/test_xen_appliance.py). One test runs a real missing program through the
real runner to check the "xl is not installed" path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from corral.common.errors import CommandError, CommandTimeout, ErrorKind, HypervisorError
from corral.common.runcmd import CmdResult
from corral.hypervisor.xen.xl import Xl

DATA = Path(__file__).resolve().parents[2] / "data" / "xen"

Answer = CmdResult | BaseException


def captured(name: str) -> str:
    return (DATA / name).read_text()


class FakeRunner:
    """Answers argv (after the program) from a table; records calls and their options."""

    def __init__(self, answers: Mapping[tuple[str, ...], Answer | list[Answer]]) -> None:
        self.answers = {k: list(v) if isinstance(v, list) else [v] for k, v in answers.items()}
        self.calls: list[list[str]] = []
        self.options: list[dict[str, object]] = []

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
        self.calls.append(list(argv))
        self.options.append({"timeout": timeout, "check": check, "c_locale": c_locale})
        queue = self.answers[tuple(argv[1:])]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, BaseException):
            raise answer
        return CmdResult(tuple(argv), answer.rc, answer.stdout, answer.stderr)


def ok(stdout: str) -> CmdResult:
    return CmdResult((), 0, stdout, "")


def failed(stderr: str, rc: int = 1) -> CmdResult:
    return CmdResult((), rc, "", stderr)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_xl(runner: FakeRunner, clock: FakeClock | None = None) -> Xl:
    clock = clock or FakeClock()
    return Xl("/usr/sbin/xl", runner=runner, clock=clock, sleep=clock.sleep)


XENSTORE_DOWN = (
    "libxl: error: libxl.c:730:libxl_list_domain: cannot get domain info list: "
    "Resource temporarily unavailable\n"
)


def test_domains_parses_list_in_the_c_locale() -> None:
    runner = FakeRunner({("list",): ok(captured("xl_list_pv1.txt"))})
    xl = make_xl(runner)
    assert [d.name for d in xl.domains()] == ["pv1"]
    assert [d.name for d in xl.domains(include_dom0=True)] == ["Domain-0", "pv1"]
    assert runner.calls == [["/usr/sbin/xl", "list"]] * 2
    assert runner.options[0]["c_locale"] is True and runner.options[0]["check"] is False


def test_domains_retries_transient_failures_with_growing_delays() -> None:
    runner = FakeRunner(
        {
            ("list",): [
                failed(XENSTORE_DOWN),
                CommandTimeout(["xl", "list"], 10.0),
                failed(XENSTORE_DOWN),
                ok(captured("xl_list_pv1.txt")),
            ]
        }
    )
    clock = FakeClock()
    assert [d.domid for d in make_xl(runner, clock).domains()] == [1]
    assert len(runner.calls) == 4
    assert clock.sleeps == pytest.approx([0.3, 0.45, 0.675])


def test_domains_gives_up_at_the_deadline_with_the_last_error() -> None:
    runner = FakeRunner({("list",): failed(XENSTORE_DOWN)})
    clock = FakeClock()
    with pytest.raises(HypervisorError) as err:
        make_xl(runner, clock).domains(deadline=5.0)
    assert err.value.kind is ErrorKind.ENVIRONMENT
    assert "cannot get domain info list" in str(err.value)
    assert err.value.fields["rc"] == 1 and err.value.fields["attempts"] == len(runner.calls)
    assert 5 <= len(runner.calls) <= 10
    assert clock.now - 100.0 <= 5.0 and max(clock.sleeps) == 1.0


def test_missing_xl_is_not_retried() -> None:
    runner = FakeRunner(
        {("list",): CommandError(["xl", "list"], None, "", "No such file or directory")}
    )
    clock = FakeClock()
    with pytest.raises(HypervisorError) as err:
        make_xl(runner, clock).domains()
    assert err.value.kind is ErrorKind.ENVIRONMENT and err.value.fields["rc"] is None
    assert "No such file or directory" in str(err.value)
    assert len(runner.calls) == 1 and clock.sleeps == []


def test_missing_xl_through_the_real_runner(tmp_path: Path) -> None:
    xl = Xl(str(tmp_path / "no-such-xl"))
    with pytest.raises(HypervisorError) as err:
        xl.domains(deadline=30)
    assert err.value.kind is ErrorKind.ENVIRONMENT and err.value.fields["missing"] is True
    assert str(tmp_path / "no-such-xl") in str(err.value)


def test_garbage_list_is_a_fault_not_retried() -> None:
    runner = FakeRunner({("list",): ok("Name ID Mem VCPUs State Time(s)\nwhat is this\n")})
    with pytest.raises(HypervisorError) as err:
        make_xl(runner).domains()
    assert err.value.kind is ErrorKind.FAULT and len(runner.calls) == 1


def test_domain_found_missing_and_failing() -> None:
    runner = FakeRunner(
        {
            ("list", "pv1"): ok(captured("xl_list_paused.txt")),
            ("list", "nosuchdom"): failed(captured("xl_list_missing.txt")),
        }
    )
    xl = make_xl(runner)
    found = xl.domain("pv1")
    assert found is not None and found.flags == "--p---" and found.memory == 96
    assert xl.domain("nosuchdom") is None
    assert len(runner.calls) == 2  # NOT_FOUND is an answer, not retried
    dom0 = FakeRunner({("list", "Domain-0"): ok(captured("xl_list.txt"))})
    assert make_xl(dom0).domain("Domain-0") is not None


def test_run_error_carries_xl_message_kind_and_fields() -> None:
    runner = FakeRunner(
        {
            ("create", "/run/pv1.cfg"): failed(captured("xl_create_same_name_too_soon_error.txt")),
            ("shutdown", "nosuchdom"): failed(captured("xl_shutdown_missing.txt")),
            ("destroy", "pv1"): failed(captured("xl_destroy_already_gone_error.txt")),
        }
    )
    xl = make_xl(runner)
    with pytest.raises(HypervisorError) as exists:
        xl.run("create", "/run/pv1.cfg")
    assert exists.value.kind is ErrorKind.EXISTS
    assert str(exists.value) == 'xl create failed: Domain with name "pv1" already exists.'
    assert exists.value.fields["cmd"] == ["/usr/sbin/xl", "create", "/run/pv1.cfg"]
    assert exists.value.fields["rc"] == 1
    assert "cannot make domain" in exists.value.fields["stderr"]  # the whole cascade is kept
    for args in (("shutdown", "nosuchdom"), ("destroy", "pv1")):
        with pytest.raises(HypervisorError) as missing:
            xl.run(*args)
        assert missing.value.kind is ErrorKind.NOT_FOUND
        assert "is an invalid domain identifier (rc=-6)" in str(missing.value)


def test_run_passes_the_timeout_and_reports_one() -> None:
    runner = FakeRunner(
        {
            ("save", "pv1", "/tmp/pv1.save"): ok(captured("xl_save.txt")),
            ("shutdown", "-w", "pv1"): CommandTimeout(["xl"], 5.0, "", "Waiting for 1 domains\n"),
        }
    )
    xl = make_xl(runner)
    assert xl.run("save", "pv1", "/tmp/pv1.save", timeout=600).ok
    assert runner.options[0]["timeout"] == 600
    with pytest.raises(HypervisorError) as err:
        xl.run("shutdown", "-w", "pv1", timeout=5)
    assert err.value.kind is ErrorKind.TEMP_NO_RESOURCES and err.value.fields["rc"] is None
    assert "xl shutdown did not finish within 5s" in str(err.value)


def test_error_without_stderr_uses_stdout_or_the_code() -> None:
    runner = FakeRunner(
        {
            ("pause", "pv1"): CmdResult((), 1, "pv1 is an invalid domain identifier (rc=-6)\n", ""),
            ("unpause", "pv1"): CmdResult((), 3, "", ""),
        }
    )
    xl = make_xl(runner)
    with pytest.raises(HypervisorError) as out:
        xl.run("pause", "pv1")
    assert out.value.kind is ErrorKind.NOT_FOUND
    with pytest.raises(HypervisorError, match="xl unpause failed: exit code 3"):
        xl.run("unpause", "pv1")


def test_info_and_node_info() -> None:
    runner = FakeRunner(
        {("info",): ok(captured("xl_info.txt")), ("list",): ok(captured("xl_list_pv1.txt"))}
    )
    xl = make_xl(runner)
    assert xl.info()["xen_scheduler"] == "credit2"
    node = xl.node_info("xen-pvm")
    assert (node.memory_total, node.memory_free, node.memory_hv) == (2047, 1512, 128)
    assert node.details["memory_dom0"] == 512 and node.hv_version == "4.17.5"


def test_config_found_and_missing() -> None:
    runner = FakeRunner(
        {
            ("list", "-l", "pv1"): ok(captured("xl_list_l_pv1.json")),
            ("list", "-l", "nosuchdom"): failed(captured("xl_list_missing.txt")),
            ("list", "-l", "hvm1"): failed(XENSTORE_DOWN),
        }
    )
    xl = make_xl(runner)
    cfg = xl.config("pv1")
    assert cfg is not None and cfg.max_memkb == 262144 and cfg.nics[0]["bridge"] == "xenbr0"
    assert xl.config("nosuchdom") is None
    with pytest.raises(HypervisorError) as err:
        xl.config("hvm1")
    assert err.value.kind is ErrorKind.ENVIRONMENT


def test_vcpus() -> None:
    runner = FakeRunner(
        {
            ("vcpu-list", "pv1"): ok(captured("xl_vcpu_list_pinned.txt")),
            ("vcpu-list", "nosuchdom"): failed(captured("xl_list_missing.txt")),
        }
    )
    xl = make_xl(runner)
    assert [(v.vcpu, v.hard, v.soft) for v in xl.vcpus("pv1")] == [(0, "1", "all"), (1, "1", "all")]
    with pytest.raises(HypervisorError) as err:
        xl.vcpus("nosuchdom")
    assert err.value.kind is ErrorKind.NOT_FOUND


def test_argv_uses_the_configured_command() -> None:
    runner = FakeRunner({("list",): ok(captured("xl_list.txt"))})
    assert make_xl(runner).domains() == []
    assert runner.calls[0][0] == "/usr/sbin/xl"
    assert Xl().argv("list", "-l") == ["xl", "list", "-l"]

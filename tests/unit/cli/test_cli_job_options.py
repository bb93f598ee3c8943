"""``--dry-run``, ``--reason``, ``--print-jobid`` and ``--submit`` of every job-submitting command.

Real: the parsers, the actions, CorralClient, the HTTP API (which turns ``?dry-run=1`` and
``?reason=`` into opcode fields). FAKE (see conftest): the master behind the API, which records
the opcodes it receives; it applies them even in dry-run mode, so what is checked here is that
the flag reaches the master. That the real master then changes nothing is checked against real
daemons in ``tests/integration/test_cli_real_cluster.py``.
"""

from __future__ import annotations

import argparse

import pytest
import typer.main

from corral.cli import gnt
from corral.cli.main import app

#: gnt-instance subcommand -> arguments (after the subcommand) that submit a job for vm1.
GNT_JOB_CASES = {
    ("gnt-instance", "add"): ["-t", "file", "--disk", "0:size=1G", "-o", "busybox", "vm2"],
    ("gnt-instance", "startup"): ["vm1"],
    ("gnt-instance", "shutdown"): ["vm1"],
    ("gnt-instance", "reboot"): ["vm1"],
    ("gnt-instance", "modify"): ["-B", "vcpus=2", "vm1"],
    ("gnt-instance", "grow-disk"): ["vm1", "0", "1G"],
    ("gnt-instance", "rename"): ["vm1", "vm9"],
    ("gnt-instance", "reinstall"): ["-f", "-o", "noop", "vm1"],
    ("gnt-instance", "remove"): ["-f", "vm1"],
    ("gnt-instance", "add-tags"): ["vm1", "t1"],
    ("gnt-instance", "remove-tags"): ["vm1", "t1"],
    ("gnt-instance", "migrate"): ["-n", "node2", "vm1"],
    ("gnt-instance", "failover"): ["-f", "vm1"],
    ("gnt-instance", "move"): ["-f", "-n", "node2", "vm1"],
    ("gnt-node", "evacuate"): ["-f", "node1"],
    ("gnt-node", "migrate"): ["-f", "node1"],
    ("gnt-node", "failover"): ["-f", "node1"],
    # node membership and groups (raw opcodes on the local socket)
    ("gnt-node", "add"): ["--primary-ip", "127.0.0.2", "--join-token", "t", "node2"],
    ("gnt-node", "readd"): ["node2"],
    ("gnt-node", "remove"): ["node2"],
    ("gnt-node", "modify"): ["-C", "yes", "node2"],
    ("gnt-node", "powercycle"): ["--yes", "node2"],
    ("gnt-group", "add"): ["g1"],
    ("gnt-group", "remove"): ["g1"],
    ("gnt-group", "rename"): ["g1", "g2"],
    ("gnt-group", "assign-nodes"): ["g1", "node2"],
    ("gnt-group", "modify"): ["--alloc-policy", "last_resort", "g1"],
}

#: corral subcommand path -> arguments that submit a job for vm1.
CORRAL_JOB_CASES = {
    ("instance", "add"): ["-t", "file", "--disk", "0:size=1G", "-o", "busybox", "vm2"],
    ("instance", "start"): ["vm1"],
    ("instance", "startup"): ["vm1"],
    ("instance", "stop"): ["vm1"],
    ("instance", "shutdown"): ["vm1"],
    ("instance", "reboot"): ["vm1"],
    ("instance", "modify"): ["-B", "vcpus=2", "vm1"],
    ("instance", "grow-disk"): ["vm1", "0", "1G"],
    ("instance", "rename"): ["vm1", "vm9"],
    ("instance", "reinstall"): ["-f", "-o", "noop", "vm1"],
    ("instance", "remove"): ["-f", "vm1"],
    ("instance", "add-tags"): ["vm1", "t1"],
    ("instance", "remove-tags"): ["vm1", "t1"],
    ("instance", "pause"): ["vm1"],
    ("instance", "resume"): ["vm1"],
    ("instance", "suspend"): ["vm1"],
    ("instance", "unsuspend"): ["vm1"],
    ("instance", "migrate"): ["--target-node", "node2", "vm1"],
    ("instance", "failover"): ["-f", "vm1"],
    ("instance", "move"): ["-f", "-n", "node2", "vm1"],
    ("node", "evacuate"): ["-f", "node1"],
    ("node", "migrate"): ["-f", "node1"],
    ("node", "failover"): ["-f", "node1"],
    ("node", "add"): ["--address", "127.0.0.2", "--join-token", "t", "node2"],
    ("node", "readd"): ["node2"],
    ("node", "remove"): ["node2"],
    ("node", "modify"): ["--offline", "yes", "node2"],
    ("node", "powercycle"): ["--yes", "node2"],
    ("group", "add"): ["g1"],
    ("group", "remove"): ["g1"],
    ("group", "rename"): ["g1", "g2"],
    ("group", "assign-nodes"): ["g1", "node2"],
    ("group", "modify"): ["--alloc-policy", "last_resort", "g1"],
}

ENTRY = {"gnt-instance": gnt.gnt_instance, "gnt-node": gnt.gnt_node, "gnt-group": gnt.gnt_group}


def _gnt_subcommands_with(option: str) -> set[tuple[str, str]]:
    found = set()
    for prog, build in gnt.COMMANDS.items():
        parser = gnt.build_parser(prog, build)
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for pseudo in sub._choices_actions:
            subparser = sub.choices[pseudo.dest]
            if any(option in a.option_strings for a in subparser._actions):
                found.add((prog, pseudo.dest))
    return found


def _corral_commands_with(option: str) -> set[tuple[str, str]]:
    found = set()
    group = typer.main.get_command(app)
    for noun, sub in group.commands.items():  # type: ignore[attr-defined]
        for verb, cmd in getattr(sub, "commands", {}).items():
            if any(option in getattr(p, "opts", []) for p in cmd.params):
                found.add((noun, verb))
    return found


def test_every_dry_run_subcommand_is_covered():
    """A new subcommand with --dry-run must be added to the cases below (and pass it on)."""
    assert _gnt_subcommands_with("--dry-run") == set(GNT_JOB_CASES)
    assert _gnt_subcommands_with("--reason") == set(GNT_JOB_CASES)
    assert _gnt_subcommands_with("--print-jobid") == set(GNT_JOB_CASES)
    assert _corral_commands_with("--dry-run") == set(CORRAL_JOB_CASES)
    assert _corral_commands_with("--reason") == set(CORRAL_JOB_CASES)


@pytest.mark.parametrize("case", sorted(GNT_JOB_CASES), ids="-".join)
def test_gnt_dry_run_and_reason_reach_the_master(case, gnt_run, master):
    master.add_instance("vm1")
    prog, verb = case
    code, out, err = gnt_run(
        ENTRY[prog], verb, "--dry-run", "--reason", "change 42", *GNT_JOB_CASES[case]
    )
    assert code == 0, err
    (ops,) = master.submitted
    assert ops and all(op.dry_run for op in ops), ops
    assert all(op.reason[0][:2] == ["gnt:user", "change 42"] for op in ops)
    assert "dry run:" not in out  # gnt-* print what Ganeti prints: the job log only


@pytest.mark.parametrize("case", sorted(CORRAL_JOB_CASES), ids="-".join)
def test_corral_dry_run_and_reason_reach_the_master(case, run, master):
    master.add_instance("vm1")
    r = run(*case, "--dry-run", "--reason", "change 42", *CORRAL_JOB_CASES[case])
    assert r.exit_code == 0, r.output
    (ops,) = master.submitted
    assert ops and all(op.dry_run for op in ops), ops
    assert all(op.reason[0][:2] == ["gnt:user", "change 42"] for op in ops)
    assert "dry run: " in r.output


def test_without_dry_run_the_job_really_runs(gnt_run, master):
    master.add_instance("vm1")
    code, _out, err = gnt_run(gnt.gnt_instance, "remove", "-f", "vm1")
    assert code == 0, err
    (op,) = master.submitted[-1]
    assert op.dry_run is False
    assert [src for src, _text, _ts in op.reason] == ["gnt:library:rlib2:instances_name"]


def test_corral_add_dry_run_says_nothing_was_created(run, master):
    r = run("instance", "add", "--dry-run", "-t", "file", "-s", "1G", "-o", "busybox", "dry1")
    assert r.exit_code == 0, r.output
    assert "dry run: instance dry1 would be created" in r.output
    assert "created on" not in r.output and "instance dry1 created" not in r.output
    r = run("instance", "modify", "--dry-run", "-B", "vcpus=2", "dry1")
    assert r.exit_code == 0, r.output
    assert "dry run: instance dry1 would be modified" in r.output
    assert "Modified instance" not in r.output
    r = run("instance", "add", "-t", "file", "-s", "1G", "-o", "busybox", "real1")
    assert "instance real1 created on node1" in r.output and "dry run" not in r.output


def test_gnt_print_jobid(gnt_run, master):
    master.add_instance("vm1")
    code, out, err = gnt_run(gnt.gnt_instance, "startup", "--print-jobid", "vm1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "1" and lines[1].endswith("INSTANCE_STARTUP(vm1) started")
    code, out, err = gnt_run(gnt.gnt_instance, "shutdown", "--print-jobid", "--submit", "vm1")
    assert code == 0, err
    assert out == "2\nJobID: 2\n"

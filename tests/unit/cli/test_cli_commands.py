"""``corral`` and ``gnt-*`` commands end to end against the fake master (see conftest: FAKE).

What is real: option parsing (typer / argparse), the actions, CorralClient, the HTTP API and
its opcodes. What is fake: the master service behind the API.
"""

from __future__ import annotations

import json

import pytest

from corral.cli import actions, gnt
from corral.common.errors import ErrorKind, OpError


def test_instance_add_runs_job_and_reports(run, master):
    r = run(
        "instance",
        "add",
        "-t",
        "file",
        "--disk",
        "0:size=1G",
        "-o",
        "busybox",
        "-B",
        "memory=256M,vcpus=1",
        "vm1",
    )
    assert r.exit_code == 0, r.output
    assert "instance vm1 created on node1" in r.output
    (op,) = master.submitted[-1]
    assert op.instance_name == "vm1" and op.disks[0].size == 1024
    assert op.beparams == {"memory": 256, "vcpus": "1"} and op.start is True
    assert master.instance("vm1").disks[0].size == 1024


def test_instance_add_bad_disk_fails_before_submitting(run, master):
    r = run("instance", "add", "-t", "file", "--disk", "0:size=lots", "-o", "busybox", "vm1")
    assert r.exit_code == 1
    assert "--disk 0 size: not a size: 'lots'" in r.output
    assert master.submitted == []


def test_instance_list_table_and_json(run, master):
    master.add_instance("vm1", running=True)
    master.add_instance("vm2")
    r = run("instance", "list", "--no-headers", "--separator", ":", "-o", "name,status,oper_ram")
    assert r.exit_code == 0, r.output
    assert r.output == "vm1:running:128\nvm2:ADMIN_down:-\n"
    r = run("instance", "list", output="json")
    data = json.loads(r.output)
    assert data[0]["name"] == "vm1" and data[0]["status"] == "running"
    assert data[1]["oper_ram"] is None
    r = run("instance", "list", "-o", "name,bogus")
    assert r.exit_code == 14 and "unknown output field(s): bogus" in r.output


def test_not_found_message(run):
    r = run("instance", "info", "vm9")
    assert r.exit_code == 1
    assert "error: instance vm9 not found" in r.output


def test_start_stop_reboot_modify_grow(run, master):
    master.add_instance("vm1")
    assert run("instance", "start", "vm1").exit_code == 0
    assert "vm1" in master.live
    r = run("instance", "reboot", "--type", "soft", "vm1")
    assert r.exit_code == 0 and master.submitted[-1][0].reboot_type == "soft"
    # the corral CLI wants units (gnt-instance reads a bare number as MiB, like Ganeti)
    r = run("instance", "modify", "-m", "300", "vm1")
    assert r.exit_code == 1
    assert "needs a unit" in r.output
    r = run("instance", "modify", "-B", "maxmem=512M", "-m", "300M", "vm1")
    assert r.exit_code == 0, r.output
    op = master.submitted[-1][0]
    assert op.beparams == {"maxmem": 512} and op.runtime_mem == 300
    assert run("instance", "modify", "vm1").exit_code == 1
    r = run("instance", "grow-disk", "vm1", "0", "512M")
    assert r.exit_code == 0 and master.instance("vm1").disks[0].size == 1536
    r = run("instance", "stop", "--timeout", "5", "vm1")
    assert r.exit_code == 0 and master.submitted[-1][0].timeout == 5


def test_submit_prints_job_id(run, master):
    master.add_instance("vm1")
    r = run("instance", "start", "--submit", "vm1")
    assert r.exit_code == 0 and r.output.strip() == "JobID: 1"


def test_failed_job_exit_code_and_message(run, master):
    master.add_instance("vm1")
    r = run("instance", "console", "vm1")  # not running: the console op fails
    assert r.exit_code == 1 and "instance vm1 is not running" in r.output
    master.fail_next = OpError("instance vm1 already exists", kind=ErrorKind.EXISTS)
    r = run("instance", "add", "-t", "file", "-s", "1G", "-o", "busybox", "vm1")
    assert r.exit_code == 1 and "error: instance vm1 already exists" in r.output


def test_remove_needs_force_without_tty(run, master):
    master.add_instance("vm1")
    r = run("instance", "remove", "vm1")
    assert r.exit_code == 13 and "--force" in r.output
    assert master.instances()
    assert run("instance", "remove", "-f", "vm1").exit_code == 0
    assert master.instances() == []


def test_console_runs_command_locally(run, master, monkeypatch):
    master.add_instance("vm1", running=True)
    calls = []
    monkeypatch.setattr(actions, "exec_console", lambda prog, argv: calls.append(argv))
    monkeypatch.setattr(actions, "stdin_is_tty", lambda: True)
    r = run("instance", "console", "vm1")
    assert r.exit_code == 0, r.output
    assert calls == [["socat", "STDIO,raw,echo=0", "UNIX-CONNECT:/run/vm1.serial"]]
    # fed by a pipe (a script): socat cannot set a terminal to raw mode, so plain stdio
    monkeypatch.setattr(actions, "stdin_is_tty", lambda: False)
    calls.clear()
    assert run("instance", "console", "vm1").exit_code == 0
    assert calls == [["socat", "STDIO", "UNIX-CONNECT:/run/vm1.serial"]]
    r = run("instance", "console", "--show-cmd", "vm1")
    assert "socat STDIO,raw,echo=0 UNIX-CONNECT:/run/vm1.serial" in r.output


def test_console_uses_ssh_for_remote_hosts(monkeypatch):
    assert actions.is_local_host("127.0.0.1")
    assert actions.is_local_host("localhost")
    assert not actions.is_local_host("192.0.2.77")  # TEST-NET-1: never configured here


def test_tags_rename_reinstall(run, master):
    master.add_instance("vm1")
    assert run("instance", "add-tags", "vm1", "a", "b").exit_code == 0
    r = run("instance", "list-tags", "vm1")
    assert r.output == "a\nb\n"
    assert run("instance", "remove-tags", "vm1", "a").exit_code == 0
    assert master.instance("vm1").tags == ["b"]
    r = run("instance", "reinstall", "-f", "-o", "noop", "vm1")
    assert r.exit_code == 0, r.output
    assert [o.OP_ID for o in master.submitted[-1]] == [
        "OP_INSTANCE_SHUTDOWN",
        "OP_INSTANCE_REINSTALL",
    ]
    assert run("instance", "rename", "vm1", "vm2").exit_code == 0
    assert [i.name for i in master.instances()] == ["vm2"]


def test_job_commands(run, master):
    master.add_instance("vm1")
    run("instance", "start", "vm1")
    r = run("job", "list", "--no-headers", "--separator", "|")
    assert r.output == "1|success|INSTANCE_STARTUP(vm1)\n"
    r = run("job", "info", "1")
    assert "OP_ID: OP_INSTANCE_STARTUP" in r.output and "Status: success" in r.output
    r = run("job", "watch", "1")
    assert r.exit_code == 0 and "INSTANCE_STARTUP(vm1) started" in r.output
    master.auto_run = False
    run("instance", "stop", "--submit", "vm1")
    r = run("job", "cancel", "2")
    assert r.exit_code == 0 and "Job 2 canceled" in r.output
    r = run("job", "cancel", "2")
    assert r.exit_code == 1
    assert run("job", "info", "x").exit_code == 1


def test_node_os_cluster(run, master):
    r = run("node", "list", "--no-headers", "--separator", ":", "-o", "name,role,mfree")
    assert r.output == "node1:M:3000\nnode2:R:3000\n"
    r = run("node", "info", "node1", output="json")
    assert json.loads(r.output)["pip"] == "127.0.0.1"
    r = run("os", "list")
    assert r.output.split() == ["Name", "busybox+default", "busybox+tiny", "noop"]
    r = run("os", "diagnose")
    assert "OS: broken [global status: invalid - missing create script]" in r.output
    r = run("cluster", "getmaster")
    assert r.output.strip() == "node1"
    r = run("cluster", "info", output="json")
    assert json.loads(r.output)["name"] == "cluster.example"
    r = run("cluster", "destroy")
    assert r.exit_code == 1 and "--yes-do-it" in r.output


# --- gnt-* -------------------------------------------------------------------------------------


def test_gnt_instance_add_submit(gnt_run, master):
    code, out, err = gnt_run(
        gnt.gnt_instance,
        "add",
        "-t",
        "file",
        "--disk",
        "0:size=1G",
        "-o",
        "busybox",
        "-B",
        "memory=256M,vcpus=1",
        "-n",
        "node1",
        "--no-start",
        "--submit",
        "vm1",
    )
    assert code == 0, err
    assert out == "JobID: 1\n"
    op = master.submitted[-1][0]
    assert op.pnode == "node1" and op.start is False


def test_gnt_instance_list_ganeti_format(gnt_run, master):
    master.add_instance("vm1", running=True)
    code, out, _ = gnt_run(
        gnt.gnt_instance, "list", "-o", "name,status", "--no-headers", "--separator=:"
    )
    assert code == 0 and out == "vm1:running\n"
    code, out, _ = gnt_run(gnt.gnt_instance, "list")
    lines = out.splitlines()
    assert lines[0].split() == ["Instance", "Hypervisor", "OS", "Primary_node", "Status", "Memory"]
    assert lines[1].split() == ["vm1", "fake", "busybox", "node1", "running", "128M"]


def test_gnt_job_log_lines_and_failure(gnt_run, master):
    master.add_instance("vm1")
    code, out, err = gnt_run(gnt.gnt_instance, "reboot", "--type=hard", "vm1")
    assert code == 0, err
    assert out.rstrip().endswith("INSTANCE_REBOOT(vm1) started")
    code, out, err = gnt_run(gnt.gnt_instance, "console", "vm1")
    assert code == 1 and err.startswith("Failure: instance vm1 is not running")
    code, out, err = gnt_run(gnt.gnt_instance, "modify", "-B", "memory=512M", "-m", "300", "vm1")
    assert code == 0, err
    assert master.submitted[-1][0].runtime_mem == 300
    code, out, err = gnt_run(gnt.gnt_instance, "grow-disk", "vm1", "0", "1G")
    assert code == 0 and master.instance("vm1").disks[0].size == 2048


def test_gnt_parse_errors(gnt_run, master):
    code, _out, err = gnt_run(
        gnt.gnt_instance, "add", "-t", "file", "--disk", "0:size=1X", "-o", "busybox", "vm1"
    )
    assert code == 1 and "--disk 0 size: not a size" in err and master.submitted == []
    with pytest.raises(SystemExit) as exc:
        gnt.gnt_instance(["reboot", "--type=warm", "vm1"])
    assert exc.value.code == 2


def test_gnt_other_commands(gnt_run, master):
    master.add_instance("vm1")
    assert gnt_run(gnt.gnt_cluster, "getmaster")[1] == "node1\n"
    assert "Software version:" in gnt_run(gnt.gnt_cluster, "version")[1]
    code, out, _ = gnt_run(gnt.gnt_node, "list", "--no-headers", "-o", "name")
    assert out.split() == ["node1", "node2"]
    assert "busybox+tiny" in gnt_run(gnt.gnt_os, "list")[1]
    gnt_run(gnt.gnt_instance, "startup", "vm1")
    code, out, _ = gnt_run(gnt.gnt_job, "list", "--no-headers")
    assert out.split() == ["1", "success", "INSTANCE_STARTUP(vm1)"]
    code, out, _ = gnt_run(gnt.gnt_job, "watch", "1")
    assert code == 0 and out.startswith("Output from job 1 follows")

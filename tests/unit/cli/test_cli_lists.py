"""List commands: verbatim data in rich output, query filters (-F), job status filters, list-fields.

Real: the parsers, the actions, the filter language, CorralClient and the HTTP API. FAKE (see
conftest): the master behind the API.
"""

from __future__ import annotations

import io
import json

from corral.cli import gnt
from corral.cli.common import Cli
from corral.cli.output import print_mapping
from corral.common.paths import Paths
from corral.objects.instance import NIC
from corral.objects.job import JobStatus

MAC = "aa:00:00:cd:a7:c4"  # ":cd:" is rich's emoji code for an optical disc
MARKUP = "[bold]x[/bold]"


# --- data printed verbatim -----------------------------------------------------------------------


def test_rich_table_prints_macs_and_brackets_verbatim(run, master):
    master.add_instance("vm1", nics=[NIC(mac=MAC)], tags=[MARKUP])
    r = run("instance", "list", "-o", "name,mac,tags")
    assert r.exit_code == 0, r.output
    assert MAC in r.output and MARKUP in r.output, r.output
    assert "\N{OPTICAL DISC}" not in r.output


def test_instance_info_prints_data_verbatim(run, master):
    master.add_instance("vm1", os=f"{MAC} {MARKUP}")
    r = run("instance", "info", "vm1")
    assert r.exit_code == 0, r.output
    assert f"os: {MAC} {MARKUP}" in r.output, r.output


def test_cli_consoles_print_mappings_verbatim(tmp_path):
    cli = Cli(paths=Paths(str(tmp_path)))
    cli.out.file = io.StringIO()
    print_mapping(cli.out, {"nics": [{"mac": MAC, "link": MARKUP}]})
    cli.print(f"tag {MARKUP} :cd:")
    text = cli.out.file.getvalue()
    assert f"mac: {MAC}" in text and f"link: {MARKUP}" in text and f"tag {MARKUP} :cd:" in text


def test_gnt_list_prints_data_verbatim(gnt_run, master):
    master.add_instance("vm1", nics=[NIC(mac=MAC)], tags=[MARKUP])
    code, out, _ = gnt_run(gnt.gnt_instance, "list", "--no-headers", "-o", "name,mac,tags")
    assert code == 0 and out.split() == ["vm1", MAC, MARKUP]


# --- query filters -------------------------------------------------------------------------------


def _instances(master):
    master.add_instance("db1", running=True)
    master.add_instance("db2")
    master.add_instance("web1", running=True, tags=["prod"])
    master.add_instance("web2", tags=["prod", "eu"])


def _names(out):
    return out.split()


def test_gnt_instance_list_filter(gnt_run, master):
    _instances(master)

    def names(*args):
        code, out, err = gnt_run(gnt.gnt_instance, "list", "--no-headers", "-o", "name", *args)
        assert code == 0, err
        return _names(out)

    assert names("-F", 'name == "db1"') == ["db1"]
    assert names("-F", "name != 'db1'") == ["db2", "web1", "web2"]
    # the filter reads a field that is not shown: only the asked columns are printed
    assert names("-F", 'status == "running" and not name =~ m/^web/') == ["db1"]
    assert names("-F", '"prod" in tags or name == "db2"') == ["db2", "web1", "web2"]
    assert names("-F", '"prod" not in tags') == ["db1", "db2"]
    assert names("-F", "name =~ /^DB/i") == ["db1", "db2"]
    assert names("-F", "name !~ m#1$#") == ["db2", "web2"]
    assert names("-F", 'name =* "web*"') == ["web1", "web2"]
    assert names("-F", "oper_ram >= 128 and admin_state") == ["db1", "web1"]
    assert names("-F", "disk.count == 1 and (name == 'db2' or name == 'web2')") == ["db2", "web2"]
    # without -F: a lone filter-looking argument is a filter, globs are globs (as Ganeti)
    assert names('status == "ADMIN_down"') == ["db2", "web2"]
    assert names("web*", "db1") == ["db1", "web1", "web2"]
    assert names("db2", "web1") == ["db2", "web1"]


def test_gnt_filter_errors_name_the_problem(gnt_run, master):
    _instances(master)
    cases = {
        ("-F", 'name = "db1"'): "unknown operator '=' (use '==')",
        ("-F", 'name == "db1'): "unterminated string",
        ("-F", '(name == "db1"'): "missing ')'",
        ("-F", 'name == "db1" nonsense'): "unexpected text",
        ("-F", "name =~ m/x/q"): "unknown regular expression flag(s) 'q'",
        ("-F", 'bogus == "x"'): "unknown field(s) bogus (see 'instance list-fields')",
        ("-F", "db1", "db2"): "give exactly one filter argument (got 2)",
    }
    for args, message in cases.items():
        code, out, err = gnt_run(gnt.gnt_instance, "list", "--no-headers", *args)
        assert code == 1, (args, out, err)
        assert message in err, (args, err)
        assert out == ""


def test_corral_list_filter_and_json(run, master):
    _instances(master)
    r = run("instance", "list", "--no-headers", "--separator", ":", "-o", "name,status",
            "-F", 'status == "running"')  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output == "db1:running\nweb1:running\n"
    r = run("instance", "list", "-o", "name", "web*", output="json")
    assert json.loads(r.output) == [{"name": "web1"}, {"name": "web2"}]
    r = run("node", "list", "--no-headers", "-o", "name", "-F", 'role == "M"')
    assert r.output.split() == ["node1"]
    r = run("instance", "list", "-F", "name ==")
    assert r.exit_code == 1 and "expected a value at the end" in r.output


# --- jobs --------------------------------------------------------------------------------------


def _make_jobs(run, master):
    """Jobs 1 success, 2 error, 3 queued, 4 running, 5 canceled."""
    master.add_instance("vm1")
    assert run("instance", "start", "vm1").exit_code == 0  # 1: success
    assert run("instance", "start", "nosuch").exit_code == 1  # 2: error
    master.auto_run = False
    for _ in range(3):  # 3: queued, 4: running, 5: canceled
        assert run("instance", "stop", "--submit", "vm1").exit_code == 0
    master.jobs[4].status = JobStatus.RUNNING
    assert run("job", "cancel", "5").exit_code == 0


def test_gnt_job_list_status_filters(run, gnt_run, master):
    _make_jobs(run, master)

    def ids(*args):
        code, out, err = gnt_run(gnt.gnt_job, "list", "--no-headers", "-o", "id", *args)
        assert code == 0, err
        return _names(out)

    assert ids() == ["1", "2", "3", "4", "5"]
    assert ids("--running") == ["4"]
    assert ids("--pending") == ["3"]
    assert ids("--error") == ["2"]
    assert ids("--finished") == ["1", "2", "5"]
    assert ids("--error", "--running") == ["4"]  # the last one wins, as in Ganeti
    assert ids("--finished", "1", "3", "5") == ["1", "5"]
    assert ids("--archived") == ["1", "2", "3", "4", "5"]  # nothing is ever archived
    assert ids("-F", 'status == "success" or id == 3') == ["1", "3"]
    _code, out, _ = gnt_run(gnt.gnt_job, "list", "--no-headers", "--running")
    assert out.split() == ["4", "running", "INSTANCE_SHUTDOWN(vm1)"]


def test_corral_job_list_status(run, master):
    _make_jobs(run, master)
    r = run("job", "list", "--no-headers", "--separator", ":", "--status", "error",
            "--status", "canceled")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output == "2:error:INSTANCE_STARTUP(nosuch)\n5:canceled:INSTANCE_SHUTDOWN(vm1)\n"
    r = run("job", "list", "--status", "done")
    assert r.exit_code == 1 and "unknown job status(es) done" in r.output


def test_job_list_fields_exists_where_the_hint_points(run, gnt_run, master):
    r = run("job", "list", "-o", "id,foo")
    assert r.exit_code == 14 and "see 'job list-fields'" in r.output
    r = run("job", "list-fields")
    assert r.exit_code == 0, r.output
    names = [line.split()[0] for line in r.output.splitlines()[1:]]
    assert {"id", "status", "summary", "received_ts"} <= set(names)
    code, out, _ = gnt_run(gnt.gnt_job, "list-fields", "status")
    assert code == 0 and out.splitlines()[1].split()[0] == "status"
    assert len(out.splitlines()) == 2


def test_long_listings_are_plain_text(run, master, monkeypatch):
    from corral.cli import actions

    monkeypatch.setattr(actions, "RICH_TABLE_MAX_ROWS", 3)
    for i in range(3):
        master.add_instance(f"vm{i}")
    small = run("instance", "list", "-o", "name").output
    assert "┃" in small  # a rich table
    master.add_instance("vm3")
    big = run("instance", "list", "-o", "name").output
    assert "┃" not in big and "│" not in big
    assert big.split() == ["Instance", "vm0", "vm1", "vm2", "vm3"]

"""``instance modify --disk/--net`` (Ganeti syntax) and ``--hotplug``: parsing and the opcode.

Parsing is pure; the command tests run the real ``corral``/``gnt-instance`` parsers, actions,
client and API against the FAKE master of tests/unit/cli/conftest.py and check the opcode
that reaches it.
"""

from __future__ import annotations

import pytest

from corral.cli import gnt
from corral.cli.devices import parse_device_mods
from corral.cli.parsing import BARE_SIZES_ARE_MIB, UsageError


def test_disk_forms():
    assert parse_device_mods(
        ["add:size=1G,mode=ro,name=data", "2:add,size=512M", "1:remove", "remove", "data:mode=rw",
         "0:modify,name=root"],
        "disk",
    ) == [
        ["add", -1, {"size": 1024, "mode": "ro", "name": "data"}],
        ["add", 2, {"size": 512}],
        ["remove", 1, {}],
        ["remove", -1, {}],
        ["modify", "data", {"mode": "rw"}],
        ["modify", 0, {"name": "root"}],
    ]  # fmt: skip


def test_nic_forms():
    assert parse_device_mods(
        ["add", "add:link=br0,mode=bridged", "0:modify,link=br1", "1:remove", "eth:ip=none",
         "0:-link"],
        "nic",
    ) == [
        ["add", -1, {}],
        ["add", -1, {"link": "br0", "mode": "bridged"}],
        ["modify", 0, {"link": "br1"}],
        ["remove", 1, {}],
        ["modify", "eth", {"ip": "none"}],
        ["modify", 0, {"link": None}],
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "kind", "needle"),
    [
        ("add", "disk", "needs size=SIZE"),
        ("add:size=10", "disk", "needs a unit"),
        ("1:remove,size=1G", "disk", "remove takes no parameters"),
        ("1:add,remove", "disk", "only one of add, remove, modify"),
        ("add:frob=1", "nic", "unknown parameter(s) frob"),
        ("0", "nic", "nothing to change"),
        (":remove", "nic", "expected add, remove"),
    ],
)
def test_bad_values_name_the_option(spec, kind, needle):
    token = BARE_SIZES_ARE_MIB.set(False)  # the corral command's rule
    try:
        with pytest.raises(UsageError) as err:
            parse_device_mods([spec], kind)
    finally:
        BARE_SIZES_ARE_MIB.reset(token)
    assert needle in str(err.value)
    assert ("--disk" if kind == "disk" else "--net") in str(err.value)


def test_bare_sizes_are_mib_under_gnt():
    token = BARE_SIZES_ARE_MIB.set(True)
    try:
        assert parse_device_mods(["add:size=100"], "disk") == [["add", -1, {"size": 100}]]
    finally:
        BARE_SIZES_ARE_MIB.reset(token)


def test_corral_modify_sends_disk_and_nic_changes(run, master):
    master.add_instance("vm1")
    r = run("instance", "modify", "--disk", "add:size=1G", "--net", "0:modify,link=br1",
            "--hotplug", "vm1")  # fmt: skip
    assert r.exit_code == 0, r.output
    op = master.submitted[-1][0]
    assert op.disks == [["add", -1, {"size": 1024}]]
    assert op.nics == [["modify", 0, {"link": "br1"}]]
    assert op.hotplug is True
    r = run("instance", "modify", "--disk", "1:remove", "vm1")
    assert r.exit_code == 0, r.output
    assert master.submitted[-1][0].hotplug is None  # default: when possible
    r = run("instance", "modify", "--no-hotplug", "--net", "add:link=br0", "vm1")
    assert r.exit_code == 0 and master.submitted[-1][0].hotplug is False
    r = run("instance", "modify", "--disk", "add", "vm1")
    assert r.exit_code == 1 and "needs size=SIZE" in r.output


def test_gnt_modify_keeps_ganeti_hotplug_default(gnt_run, master):
    master.add_instance("vm1")
    code, _out, err = gnt_run(gnt.gnt_instance, "modify", "--disk", "add:size=100", "vm1")
    assert code == 0, err
    op = master.submitted[-1][0]
    assert op.disks == [["add", -1, {"size": 100}]] and op.hotplug is False
    code, _out, err = gnt_run(
        gnt.gnt_instance, "modify", "--hotplug-if-possible", "--net", "1:remove", "vm1"
    )
    assert code == 0, err
    op = master.submitted[-1][0]
    assert op.nics == [["remove", 1, {}]] and op.hotplug is False and op.hotplug_if_possible
    code, _out, err = gnt_run(gnt.gnt_instance, "modify", "--hotplug", "--net", "add", "vm1")
    assert code == 0 and master.submitted[-1][0].hotplug is True

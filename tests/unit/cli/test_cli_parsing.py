"""Parsing of Ganeti-style option values (pure functions; no fakes)."""

from __future__ import annotations

import pytest

from corral.cli.parsing import (
    BARE_SIZES_ARE_MIB,
    UsageError,
    build_create_request,
    parse_beparams,
    parse_disks,
    parse_fields,
    parse_hv_option,
    parse_hvparams,
    parse_kv,
    parse_nics,
    parse_node,
    parse_size,
)


def test_kv_forms():
    assert parse_kv("memory=256M,vcpus=1", "-B") == {"memory": "256M", "vcpus": "1"}
    assert parse_kv("no_auto_balance,-vcpus,serial", "-B") == {
        "auto_balance": False,
        "vcpus": None,
        "serial": True,
    }
    assert parse_kv("kernel_args=ro console=ttyS0", "-H") == {"kernel_args": "ro console=ttyS0"}
    assert parse_kv("", "-B") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a=1,,b=2", "empty element"),
        ("=1", "missing parameter name"),
        ("a=1,a=2", "given twice"),
    ],
)
def test_kv_errors_name_the_option(text, message):
    with pytest.raises(UsageError, match=message) as exc:
        parse_kv(text, "-B")
    assert str(exc.value).startswith("-B")


def test_hv_option_forms():
    assert parse_hv_option("kvm:kernel_path=/x,serial_console=true") == (
        "kvm",
        {"kernel_path": "/x", "serial_console": "true"},
    )
    assert parse_hv_option("kernel_path=/x") == (None, {"kernel_path": "/x"})
    assert parse_hv_option("fake") == ("fake", {})
    assert parse_hv_option("kvm:") == ("kvm", {})
    with pytest.raises(UsageError, match="two hypervisors"):
        parse_hvparams(["kvm:a=1", "fake:b=2"])


def test_sizes():
    assert parse_size("1G", "x") == 1024
    assert parse_size("512M", "x") == 512
    assert parse_size("1.5g", "x") == 1536
    # corral wants a unit; the gnt-* commands read a bare number as MiB, like Ganeti
    with pytest.raises(UsageError, match="needs a unit"):
        parse_size("64", "x")
    token = BARE_SIZES_ARE_MIB.set(True)
    try:
        assert parse_size("64", "x") == 64
        with pytest.raises(UsageError, match="positive"):
            parse_size("0", "amount")
    finally:
        BARE_SIZES_ARE_MIB.reset(token)
    with pytest.raises(UsageError, match="--disk 0 size: not a size"):
        parse_size("1X", "--disk 0 size")


def test_disks():
    assert parse_disks(["1:size=512M,mode=ro", "0:size=1G,name=root,format=qcow2"]) == [
        {"size": 1024, "name": "root", "format": "qcow2"},
        {"size": 512, "mode": "ro"},
    ]
    assert parse_disks([], single_size="2G") == [{"size": 2048}]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["size=1G"], "expected N:key=value"),
        (["x:size=1G"], "index 'x' is not a number"),
        (["0:mode=rw"], "--disk 0: missing size"),
        (["0:size=1G,bogus=1"], "unknown parameter.*bogus"),
        (["0:size=1G,mode=rx"], "mode: expected rw or ro"),
        (["0:size=1G", "0:size=2G"], "given twice"),
        (["1:size=1G"], "missing \\[0\\]"),
        (["0:size=lots"], "--disk 0 size"),
    ],
)
def test_disk_errors(specs, message):
    with pytest.raises(UsageError, match=message):
        parse_disks(specs)


def test_nics():
    assert parse_nics(["0:mac=generate,link=br0", "1"]) == [{"mac": "auto", "link": "br0"}, {}]
    with pytest.raises(UsageError, match="unknown parameter"):
        parse_nics(["0:bridge=br0"])


def test_beparams_sizes_checked_before_submission():
    assert parse_beparams(["memory=256M,vcpus=1"]) == {"memory": 256, "vcpus": "1"}
    with pytest.raises(UsageError, match="-B maxmem: not a size"):
        parse_beparams(["maxmem=lots"])


def test_node_and_fields():
    assert parse_node("n1:n2") == ("n1", "n2")
    assert parse_node("n1") == ("n1", None)
    assert parse_fields(None, ["a", "b"]) == ["a", "b"]
    assert parse_fields("+c,d", ["a"]) == ["a", "c", "d"]
    assert parse_fields("x, y", ["a"]) == ["x", "y"]


def test_build_create_request():
    body = build_create_request(
        name="vm1",
        disk_template="file",
        disks=["0:size=1G"],
        single_size=None,
        nets=[],
        no_nics=False,
        os_type="busybox",
        beparams=["memory=256M,vcpus=1"],
        hvparams=["kvm:kernel_path=/x"],
        osparams=["a=b"],
        node="node1",
        no_start=True,
        no_install=False,
    )
    assert body == {
        "mode": "create",
        "name": "vm1",
        "disk_template": "file",
        "disks": [{"size": 1024}],
        "nics": [{}],
        "beparams": {"memory": 256, "vcpus": "1"},
        "hvparams": {"kernel_path": "/x"},
        "hypervisor": "kvm",
        "start": False,
        "no_install": False,
        "os": "busybox",
        "osparams": {"a": "b"},
        "pnode": "node1",
    }


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"disks": []}, "at least one disk"),
        ({"os_type": None}, "-o/--os-type is required"),
        ({"no_nics": True, "nets": ["0:link=br0"]}, "--no-nics and --net"),
    ],
)
def test_build_create_request_errors(kw, message):
    base = dict(
        name="vm1",
        disk_template="file",
        disks=["0:size=1G"],
        single_size=None,
        nets=[],
        no_nics=False,
        os_type="busybox",
        beparams=[],
        hvparams=[],
        osparams=[],
        node=None,
        no_start=False,
        no_install=False,
    )
    base.update(kw)
    with pytest.raises(UsageError, match=message):
        build_create_request(**base)

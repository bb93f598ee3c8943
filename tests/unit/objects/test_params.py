"""Parameter schemas: coercion, every problem named by key, layered defaults."""

from __future__ import annotations

import pytest

from corral.common.errors import ErrorKind, ParamError
from corral.objects.cluster import Cluster
from corral.objects.instance import Instance
from corral.objects.params.fill import filled_beparams, filled_hvparams
from corral.objects.params.hv import KVM_HVPARAMS
from corral.objects.params.schemas import BEPARAMS, expand_be_aliases
from corral.objects.units import check_name, format_size, parse_size_mib


@pytest.mark.parametrize(
    ("raw", "mib"),
    [
        ("512M", 512),
        ("1G", 1024),
        ("1.5g", 1536),
        ("2T", 2 * 1024 * 1024),
        (64, 64),
        ("100", 100),
        ("1GiB", 1024),
        ("2048k", 2),
    ],
)
def test_parse_size(raw, mib):
    assert parse_size_mib(raw) == mib


@pytest.mark.parametrize("raw", ["", "abc", "-1G", "0", "1.3M", "1X", True, None, "1e3"])
def test_parse_size_rejects(raw):
    with pytest.raises(ValueError):
        parse_size_mib(raw)


def test_size_unit_required():
    with pytest.raises(ValueError, match="needs a unit"):
        parse_size_mib("100", require_unit=True)


@pytest.mark.parametrize("name", ["vm1", "web-01.example.com", "a_b"])
def test_valid_names(name):
    assert check_name(name) is None


@pytest.mark.parametrize(
    "name", ["", "vm;rm", "a/b", "-x", "a b", "$(x)", "a..b", "../x", "x" * 300]
)
def test_invalid_names(name):
    assert check_name(name) is not None


def test_format_size():
    assert format_size(1536) == "1.5G"
    assert format_size(1024) == "1G"
    assert format_size(100) == "100M"


def test_schema_reports_every_problem_by_key():
    with pytest.raises(ParamError) as err:
        BEPARAMS.check_syntax({"vcpus": "many", "maxmem": "12Q", "bogus": 1})
    e = err.value
    assert set(e.problems) == {"vcpus", "maxmem", "bogus"}
    assert e.kind is ErrorKind.INVALID
    assert "unknown parameter" in e.problems["bogus"]
    assert "vcpus" in str(e)


def test_schema_coerces_strings():
    assert BEPARAMS.check_syntax({"maxmem": "256M", "vcpus": "2", "auto_balance": "no"}) == {
        "maxmem": 256,
        "vcpus": 2,
        "auto_balance": False,
    }


def test_range_checks():
    with pytest.raises(ParamError, match="vcpus"):
        BEPARAMS.check_syntax({"vcpus": 0})
    with pytest.raises(ParamError, match="serial_speed"):
        KVM_HVPARAMS.check_syntax({"serial_speed": 1})


def test_kvm_choices_and_paths():
    with pytest.raises(ParamError) as err:
        KVM_HVPARAMS.check_syntax({"accel": "xen", "kernel_path": "relative/vmlinuz"})
    assert set(err.value.problems) == {"accel", "kernel_path"}
    assert "auto" in err.value.problems["accel"]


def test_default_resets_key():
    assert BEPARAMS.check_syntax({"vcpus": "default"}) == {"vcpus": None}


def test_memory_alias():
    assert expand_be_aliases({"memory": "256M"}) == {"maxmem": "256M", "minmem": "256M"}
    assert expand_be_aliases({"memory": 256, "minmem": 128}) == {"maxmem": 256, "minmem": 128}


def test_fill_layers():
    cluster = Cluster(
        name="c",
        master_node="n1",
        enabled_hypervisors=["kvm"],
        hvparams={"kvm": {"accel": "tcg", "kernel_args": "quiet"}},
        beparams={"vcpus": 2},
    )
    inst = Instance(
        name="vm1",
        primary_node="n1",
        os="busybox",
        hypervisor="kvm",
        disk_template="file",
        hvparams={"kernel_args": "ro"},
        beparams={"maxmem": 512, "vcpus": None},
    )
    hv = filled_hvparams(cluster, inst)
    assert hv["accel"] == "tcg"  # cluster
    assert hv["kernel_args"] == "ro"  # instance wins
    assert hv["machine_version"] == KVM_HVPARAMS.specs["machine_version"].default
    be = filled_beparams(cluster, inst)
    assert be["vcpus"] == 2  # None in the instance layer does not override
    assert be["maxmem"] == 512


def test_memory_range_message_has_units():
    with pytest.raises(ParamError) as err:
        BEPARAMS.check_syntax({"maxmem": "99999G"})
    assert err.value.problems["maxmem"] == "must be between 16M and 4T, got 97.7T"

"""Ganeti's cpu_mask syntax (objects/params/cpumask.py) and the KVM affinity plan."""

from __future__ import annotations

import pytest

from corral.common.errors import ParamError
from corral.hypervisor.kvm.pinning import affinity_plan
from corral.objects.params.cpumask import (
    cpu_mask_problem,
    node_cpu_problem,
    parse_cpu_mask,
)
from corral.objects.params.hv import FAKE_HVPARAMS, KVM_HVPARAMS


def test_parse_masks():
    assert parse_cpu_mask("all") == [None]
    assert parse_cpu_mask("0-2,4") == [frozenset({0, 1, 2, 4})]
    assert parse_cpu_mask(" 3 ") == [frozenset({3})]
    assert parse_cpu_mask("0-2,4:all:1,3") == [
        frozenset({0, 1, 2, 4}),
        None,
        frozenset({1, 3}),
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty CPU list"),
        ("0:", "mask 1 (vCPU 1): empty"),
        ("a", "'a' is not a CPU number"),
        ("3-1", "runs backwards"),
        ("1,,2", "'' is not a CPU number"),
        ("9999", "out of range"),
        ("0:1-x", "mask 1 (vCPU 1): '1-x'"),
    ],
)
def test_bad_masks_say_why(text, needle):
    with pytest.raises(ValueError) as err:
        parse_cpu_mask(text)
    assert needle in str(err.value)


def test_mask_count_must_be_one_or_the_vcpus():
    assert cpu_mask_problem("0-1", 4) is None
    assert cpu_mask_problem("0:1", 2) is None
    assert cpu_mask_problem("all:all", 2) is None
    problem = cpu_mask_problem("0:1:0", 2)
    assert problem and "3 per-vCPU masks" in problem and "2 vCPU" in problem


def test_node_cpu_check_names_missing_cpus():
    assert node_cpu_problem("0-1:all", 2) is None
    problem = node_cpu_problem("0,3-5", 4)
    assert problem and "CPU(s) 4, 5 do not exist" in problem and "0-3" in problem


def test_hvparam_syntax_is_checked_on_the_master():
    assert KVM_HVPARAMS.check_syntax({"cpu_mask": "0-2,4:all:1,3"}) == {"cpu_mask": "0-2,4:all:1,3"}
    assert KVM_HVPARAMS.defaults()["cpu_mask"] == "all"
    assert FAKE_HVPARAMS.defaults()["cpu_mask"] == "all"
    with pytest.raises(ParamError) as err:
        KVM_HVPARAMS.check_syntax({"cpu_mask": "0-x"})
    assert "cpu_mask" in err.value.problems and "0-2,4:all:1,3" in err.value.problems["cpu_mask"]


def test_affinity_plan_single_mask_pins_every_thread():
    plan = affinity_plan(
        parse_cpu_mask("1"), cpu_count=2, process_threads=[10, 11, 12], vcpu_threads={0: 11}
    )
    assert plan == {10: {1}, 11: {1}, 12: {1}}
    assert affinity_plan([None], cpu_count=2, process_threads=[10], vcpu_threads={}) == {10: {0, 1}}


def test_affinity_plan_per_vcpu_and_shared_threads():
    masks = parse_cpu_mask("0:all:1")
    assert affinity_plan(
        masks, cpu_count=4, process_threads=[], vcpu_threads={0: 20, 1: 21, 2: 22}
    ) == {20: {0}, 21: {0, 1, 2, 3}, 22: {1}}
    # single-threaded TCG: one thread runs both vCPUs and gets both masks
    assert affinity_plan(
        parse_cpu_mask("0:1"), cpu_count=2, process_threads=[], vcpu_threads={0: 30, 1: 30}
    ) == {30: {0, 1}}

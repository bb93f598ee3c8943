"""The xl output parsers, against real ``xl`` 4.17.5 outputs (tests/data/xen/, see README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.base import InstanceState
from corral.hypervisor.xen import xlparse
from corral.hypervisor.xen.xlparse import XlDomain, XlVcpu

DATA = Path(__file__).resolve().parents[2] / "data" / "xen"


def captured(name: str) -> str:
    return (DATA / name).read_text()


# --- xl list ------------------------------------------------------------------------------------


def test_list_dom0_only_file() -> None:
    text = captured("xl_list.txt")
    assert "\t" in text.splitlines()[0]  # the real header mixes tabs and spaces
    assert xlparse.parse_list(text) == []
    assert xlparse.parse_list(text, include_dom0=True) == [
        XlDomain("Domain-0", 0, 512, 2, "r-----", 33.0)
    ]


def test_list_with_guests() -> None:
    assert xlparse.parse_list(captured("xl_list_pv1.txt")) == [
        XlDomain("pv1", 1, 128, 2, "-b----", 5.7)
    ]
    both = xlparse.parse_list(captured("xl_list_pv1.txt"), include_dom0=True)
    assert [d.name for d in both] == ["Domain-0", "pv1"]
    assert xlparse.parse_list(captured("xl_list_with_pvh.txt")) == [
        XlDomain("pvh1", 5, 128, 1, "-b----", 28.7)
    ]
    assert xlparse.parse_list(captured("xl_list_with_hvm.txt")) == [
        XlDomain("hvm1", 6, 128, 1, "------", 75.0)
    ]
    assert xlparse.parse_list(captured("xl_list_after_memset.txt")) == [
        XlDomain("pv1", 1, 96, 1, "-b----", 6.2)
    ]
    assert xlparse.parse_list(captured("xl_list_after_migrate.txt")) == [
        XlDomain("pv1", 2, 96, 1, "-b----", 0.1)
    ]
    assert xlparse.parse_list(captured("xl_list_after_restore.txt")) == [
        XlDomain("pv1", 3, 96, 1, "-b----", 0.0)
    ]


def test_list_states_from_captures() -> None:
    (paused,) = xlparse.parse_list(captured("xl_list_paused.txt"))
    assert paused.flags == "--p---" and paused.state is InstanceState.RUNNING
    (off,) = xlparse.parse_list(captured("xl_list_after_shutdown.txt"))
    assert off.flags == "--ps--" and off.state is InstanceState.SHUTDOWN
    (hvm,) = xlparse.parse_list(captured("xl_list_with_hvm.txt"))
    assert hvm.state is InstanceState.RUNNING  # "------": runnable, waiting for a CPU


def test_list_verbose_extra_columns_are_ignored() -> None:
    assert xlparse.parse_list(captured("xl_list_v.txt"), include_dom0=True) == [
        XlDomain("Domain-0", 0, 512, 2, "r-----", 39.4)
    ]


@pytest.mark.parametrize(
    "line",
    [
        "pv1 1 128 2 -b----",  # a field short
        "pv1 one 128 2 -b---- 5.7",
        "pv1 1 128 2 -b---- fast",
        "pv1 1 128 2 -x---- 5.7",
        "pv1 1 128 2 -b- 5.7",
    ],
)
def test_list_bad_line_is_a_fault_naming_it(line: str) -> None:
    text = captured("xl_list.txt") + line + "\n"
    with pytest.raises(HypervisorError) as err:
        xlparse.parse_list(text)
    assert err.value.kind is ErrorKind.FAULT
    assert line in str(err.value) and err.value.fields["line"] == line


def test_list_without_header_and_blank_lines() -> None:
    assert xlparse.parse_list("\npv1 1 128 2 -b---- 5.7\n\n") == [
        XlDomain("pv1", 1, 128, 2, "-b----", 5.7)
    ]


@pytest.mark.parametrize(
    ("flags", "state"),
    [
        ("r-----", InstanceState.RUNNING),
        ("-b----", InstanceState.RUNNING),
        ("rb----", InstanceState.RUNNING),
        ("--p---", InstanceState.RUNNING),  # paused flag ignored
        ("-bp---", InstanceState.RUNNING),
        ("-----d", InstanceState.RUNNING),  # dying still holds resources
        ("------", InstanceState.RUNNING),
        ("---s--", InstanceState.SHUTDOWN),
        ("--ps--", InstanceState.SHUTDOWN),
        ("r--s--", InstanceState.SHUTDOWN),  # shutdown wins over the others
        ("---s-d", InstanceState.SHUTDOWN),
        ("---sc-", InstanceState.CRASHED),  # xl prints c together with s
        ("----c-", InstanceState.CRASHED),
        ("--psc-", InstanceState.CRASHED),
    ],
)
def test_xen_state(flags: str, state: InstanceState) -> None:
    assert xlparse.xen_state(flags) is state


@pytest.mark.parametrize("flags", ["", "r----", "r------", "x-----", "RUNNING"])
def test_xen_state_unknown_is_a_fault(flags: str) -> None:
    with pytest.raises(HypervisorError) as err:
        xlparse.xen_state(flags)
    assert err.value.kind is ErrorKind.FAULT


# --- xl info ------------------------------------------------------------------------------------


def test_info_keys_and_values() -> None:
    info = xlparse.parse_info(captured("xl_info.txt"))
    assert info["total_memory"] == "2047" and info["free_memory"] == "1512"
    assert info["xen_extra"] == ".5" and info["xen_version"] == "4.17.5"
    assert info["xen_changeset"] == ""
    assert info["xen_caps"] == "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"
    assert info["xen_commandline"].startswith("console=com1 com1=115200,8n1 dom0_mem=512M")
    assert info["cc_compile_date"] == "Sat Nov 29 13:52:25 UTC 2025"
    assert len(info) == 34


def test_info_n_tables_are_skipped() -> None:
    plain = xlparse.parse_info(captured("xl_info.txt"))
    with_n = xlparse.parse_info(captured("xl_info_n.txt"))
    assert set(with_n) - set(plain) == {"cpu_topology", "numa_info"}
    assert all(with_n[k] == v for k, v in plain.items())
    assert "cpu" not in with_n and "node" not in with_n and "0" not in with_n


def test_info_empty_is_a_fault() -> None:
    with pytest.raises(HypervisorError) as err:
        xlparse.parse_info("nosuch: command\n")
    assert err.value.kind is ErrorKind.FAULT


def test_node_info_from_captures() -> None:
    info = xlparse.parse_info(captured("xl_info.txt"))
    domains = xlparse.parse_list(captured("xl_list_pv1.txt"), include_dom0=True)
    node = xlparse.node_info(info, domains, "xen-pvm")
    assert node.hypervisor == "xen-pvm"
    assert (node.memory_total, node.memory_free) == (2047, 1512)
    assert node.memory_hv == 128  # pv1; Domain-0 is not a guest
    assert node.details["memory_dom0"] == 512 and node.details["cpu_dom0"] == 2
    assert (node.cpu_total, node.cpu_nodes, node.cpu_sockets) == (2, 1, 1)
    assert node.hv_version == "4.17.5"


def test_node_info_dom0_only_and_memory_of_xen_itself() -> None:
    info = xlparse.parse_info(captured("xl_info_n.txt"))
    domains = xlparse.parse_list(captured("xl_list.txt"), include_dom0=True)
    node = xlparse.node_info(info, domains, "xen-hvm")
    assert node.memory_hv == 0
    assert node.details == {"memory_dom0": 512, "cpu_dom0": 2, "memory_xen": 2047 - 1512 - 512}


def test_node_info_sockets_from_topology() -> None:
    info = xlparse.parse_info(captured("xl_info.txt"))
    info.update(nr_cpus="16", cores_per_socket="4", threads_per_core="2", nr_nodes="2")
    node = xlparse.node_info(info, [], "xen-pvm")
    assert (node.cpu_total, node.cpu_sockets, node.cpu_nodes) == (16, 2, 2)
    assert "memory_dom0" not in node.details


@pytest.mark.parametrize(
    "key", ["total_memory", "free_memory", "nr_cpus", "nr_nodes", "cores_per_socket", "xen_major"]
)
def test_node_info_missing_key_is_named(key: str) -> None:
    info = xlparse.parse_info(captured("xl_info.txt"))
    del info[key]
    with pytest.raises(HypervisorError) as err:
        xlparse.node_info(info, [], "xen-pvm")
    assert err.value.kind is ErrorKind.FAULT
    assert key in str(err.value) and err.value.fields["key"] == key


def test_node_info_non_number_is_named() -> None:
    info = xlparse.parse_info(captured("xl_info.txt"))
    info["free_memory"] = "lots"
    with pytest.raises(HypervisorError, match="free_memory"):
        xlparse.node_info(info, [], "xen-pvm")


# --- xl list -l ---------------------------------------------------------------------------------


def test_list_long_pv() -> None:
    (pv1,) = xlparse.parse_list_long(captured("xl_list_l_pv1.json"))
    assert (pv1.name, pv1.domid, pv1.type) == ("pv1", 1, "pv")
    assert (pv1.max_memkb, pv1.target_memkb, pv1.max_vcpus) == (262144, 131072, 2)
    assert (pv1.kernel, pv1.ramdisk) == ("/guest/vmlinuz", "/guest/initrd.gz")
    assert pv1.cmdline == "console=hvc0 quiet"
    assert pv1.uuid == "4e0fb0cd-63df-41ec-bf6a-dca4aaa14db1"
    assert (pv1.sched_weight, pv1.sched_cap) == (256, 0)
    assert pv1.disks == [
        {
            "pdev_path": "/dev/xenvg/pv1disk",
            "vdev": "xvda",
            "format": "raw",
            "readwrite": 1,
            "colo_restore_enable": "False",
        }
    ]
    assert pv1.nics == [
        {"devid": 0, "mac": "00:16:3e:00:00:01", "bridge": "xenbr0", "nictype": "vif"}
    ]


def test_list_long_dom0_has_few_keys() -> None:
    (dom0,) = xlparse.parse_list_long(captured("xl_list_l_dom0_only.json"))
    assert (dom0.name, dom0.domid, dom0.type) == ("Domain-0", 0, "pv")
    assert (dom0.max_memkb, dom0.target_memkb) == (524288, 524287)
    assert dom0.max_vcpus is None and dom0.kernel == "" and dom0.disks == [] == dom0.nics
    both = xlparse.parse_list_long(captured("xl_list_l_dom0_and_pv1.json"))
    assert [(c.name, c.domid) for c in both] == [("Domain-0", 0), ("pv1", 1)]
    assert both[1] == xlparse.parse_list_long(captured("xl_list_l_pv1.json"))[0]


def test_list_long_pvh_and_hvm() -> None:
    (pvh,) = xlparse.parse_list_long(captured("xl_list_l_pvh1.json"))
    assert (pvh.name, pvh.domid, pvh.type, pvh.max_vcpus) == ("pvh1", 5, "pvh", 1)
    (hvm,) = xlparse.parse_list_long(captured("xl_list_l_hvm1.json"))
    assert (hvm.name, hvm.domid, hvm.type) == ("hvm1", 6, "hvm")
    assert hvm.cmdline == "console=ttyS0" and hvm.target_memkb == 131072


@pytest.mark.parametrize(
    "text",
    [
        "(domain (domid 1) (name pv1))",  # the old SXP format
        "{}",
        "[1]",
        '[{"config": {"c_info": {"name": "pv1"}}}]',  # no domid
        '[{"domid": 1, "config": {"c_info": {}}}]',  # no name
        '[{"domid": "1", "config": {"c_info": {"name": "pv1"}}}]',
        '[{"domid": 1, "config": {"c_info": {"name": "pv1"}, "b_info": {"max_vcpus": "2"}}}]',
        '[{"domid": 1, "config": {"c_info": {"name": "pv1"}, "disks": {}}}]',
        '[{"domid": 1, "config": []}]',
    ],
)
def test_list_long_bad_json_is_a_fault(text: str) -> None:
    with pytest.raises(HypervisorError) as err:
        xlparse.parse_list_long(text)
    assert err.value.kind is ErrorKind.FAULT


def test_list_long_every_capture_is_valid_json_and_parses() -> None:
    for path in sorted(DATA.glob("xl_list_l_*.json")):
        entries = json.loads(path.read_text())
        assert [c.domid for c in xlparse.parse_list_long(path.read_text())] == [
            e["domid"] for e in entries
        ], path.name


# --- xl vcpu-list -------------------------------------------------------------------------------


def test_vcpu_list_pinned() -> None:
    assert xlparse.parse_vcpu_list(captured("xl_vcpu_list_pinned.txt")) == [
        XlVcpu("pv1", 1, 0, 1, "-b-", 4.4, "1", "all"),
        XlVcpu("pv1", 1, 1, 1, "-b-", 1.4, "1", "all"),
    ]


def test_vcpu_list_captures() -> None:
    dom0 = xlparse.parse_vcpu_list(captured("xl_vcpu_list.txt"))
    assert [(v.name, v.vcpu, v.cpu, v.state) for v in dom0] == [
        ("Domain-0", 0, 0, "r--"),
        ("Domain-0", 1, 1, "-b-"),
    ]
    both = xlparse.parse_vcpu_list(captured("xl_vcpu_list_pv1.txt"))
    assert [(v.name, v.domid, v.vcpu) for v in both] == [
        ("Domain-0", 0, 0),
        ("Domain-0", 0, 1),
        ("pv1", 1, 0),
        ("pv1", 1, 1),
    ]
    assert {(v.hard, v.soft) for v in both} == {("all", "all")}
    hvm = xlparse.parse_vcpu_list(captured("xl_vcpu_list_with_hvm.txt"))
    assert hvm[-1] == XlVcpu("hvm1", 6, 0, 0, "---", 75.4, "all", "all")


def test_vcpu_list_offline_cpu_and_ranges() -> None:
    text = "pv1 1 1 - --p 0.0 0-1,3 / all\n"
    assert xlparse.parse_vcpu_list(text) == [XlVcpu("pv1", 1, 1, None, "--p", 0.0, "0-1,3", "all")]


@pytest.mark.parametrize(
    "line", ["pv1 1 0 1 -b- 4.4", "pv1 1 x 1 -b- 4.4 all / all", "pv1 1 0 1 bad 4.4 all / all"]
)
def test_vcpu_list_bad_line_is_a_fault(line: str) -> None:
    with pytest.raises(HypervisorError) as err:
        xlparse.parse_vcpu_list(captured("xl_vcpu_list.txt") + line + "\n")
    assert err.value.kind is ErrorKind.FAULT and line in str(err.value)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("xl_list_missing.txt", ErrorKind.NOT_FOUND),
        ("xl_shutdown_missing.txt", ErrorKind.NOT_FOUND),
        ("xl_destroy_already_gone_error.txt", ErrorKind.NOT_FOUND),
        ("xl_create_same_name_too_soon_error.txt", ErrorKind.EXISTS),
        ("xl_save.txt", ErrorKind.ENVIRONMENT),
    ],
)
def test_error_kind_of_real_messages(name: str, kind: ErrorKind) -> None:
    assert xlparse.error_kind(captured(name)) is kind


def test_error_message_picks_the_cause() -> None:
    text = captured("xl_create_same_name_too_soon_error.txt")
    assert text.count("libxl: error:") == 5
    assert xlparse.error_message(text) == 'Domain with name "pv1" already exists.'
    assert xlparse.error_message(captured("xl_list_missing.txt")) == (
        "nosuchdom is an invalid domain identifier (rc=-6)"
    )
    assert xlparse.error_message(captured("xl_destroy_already_gone_error.txt")) == (
        "pv1 is an invalid domain identifier (rc=-6)"
    )


def test_error_message_other_shapes() -> None:
    only_consequences = (
        "libxl: error: libxl_create.c:1296:initiate_domain_create: "
        "Domain 4:cannot make domain: -6\n"
        "libxl: error: libxl_domain.c:1137:domain_destroy_callback: "
        "Domain 4:Unable to destroy guest\n"
    )
    assert xlparse.error_message(only_consequences) == "cannot make domain: -6"
    hotplug = (
        "Parsing config from /etc/xen/pv1.cfg\n"
        "libxl: error: libxl_exec.c:117:libxl_report_child_exitstatus: "
        "/etc/xen/scripts/vif-bridge online [-1] exited with error status 1\n"
    )
    assert xlparse.error_message(hotplug) == (
        "/etc/xen/scripts/vif-bridge online [-1] exited with error status 1"
    )
    plain = "Parsing config from /tmp/x.cfg\nxc: progress: 1%\nsomething broke\n"
    assert xlparse.error_message(plain) == "something broke"
    assert xlparse.error_message("") == ""
    assert xlparse.error_message(captured("xl_migrate.txt")) == "Migration successful."

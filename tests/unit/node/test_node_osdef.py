"""OS definitions: discovery, validation errors, and the OS API 20 environment (golden)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from corral.common.errors import ErrorKind, OsError
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceSpec, NicSpec
from corral.node.backend import osdef
from corral.node.backend.osdef import (
    BUILTIN_OS_DIR,
    DiskEnv,
    OsDefinition,
    build_core_env,
    build_env,
    check_osparams,
    diagnose,
    find_os,
    load_os,
    select_variant,
    split_os_name,
)

SCRIPTS_V20 = ("create", "export", "import", "rename", "verify")


def make_os(
    base: Path,
    name: str,
    *,
    api: str | None = "20\n",
    variants: str | None = None,
    parameters: str | None = "",
    scripts: tuple[str, ...] = SCRIPTS_V20,
    not_executable: tuple[str, ...] = (),
) -> Path:
    d = base / name
    d.mkdir(parents=True)
    if api is not None:
        (d / "ganeti_api_version").write_text(api)
    if variants is not None:
        (d / "variants.list").write_text(variants)
    if parameters is not None:
        (d / "parameters.list").write_text(parameters)
    for script in scripts:
        p = d / script
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o644 if script in not_executable else 0o755)
    return d


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(str(tmp_path / "root"))


@pytest.fixture
def search(paths: Paths) -> Path:
    """The first directory of the OS search path."""
    d = Path(paths.os_search_path[0])
    d.mkdir(parents=True)
    return d


# --- discovery and validation ------------------------------------------------------------------


def test_load_full_definition(search: Path) -> None:
    make_os(
        search,
        "deb",
        api="20\n15\n10\n",
        variants="# comment\n\nbookworm\n  trixie  \n",
        parameters="mirror  The Debian mirror URL\ndebug\nsize\tRoot size in MiB\n",
    )
    d = load_os(str(search / "deb"), name="deb")
    assert d.api_versions == (20, 15, 10)
    assert d.api_version == 20
    assert d.variants == ("bookworm", "trixie")
    assert d.parameters == (
        ("mirror", "The Debian mirror URL"),
        ("debug", ""),
        ("size", "Root size in MiB"),
    )


def test_ganeti_noop_style_v10(search: Path) -> None:
    """Debian's ganeti-os-noop says "5\\n10" and has no verify script or lists."""
    make_os(search, "noop", api="5\n10\n", parameters=None, scripts=SCRIPTS_V20[:4])
    d = load_os(str(search / "noop"), name="noop")
    assert d.api_version == 10
    assert (d.variants, d.parameters) == ((), ())


def test_v15_without_variants_file(search: Path) -> None:
    make_os(search, "v15", api="15\n", parameters=None, scripts=SCRIPTS_V20[:4])
    assert load_os(str(search / "v15"), name="v15").variants == ()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"api": None}, "ganeti_api_version"),
        ({"api": "5\n"}, "API version mismatch"),
        ({"api": "21\n"}, "API version mismatch"),
        ({"api": ""}, "API version mismatch"),
        ({"api": "twenty\n"}, "not a number"),
        ({"not_executable": ("create",)}, "'create' is not executable"),
        ({"scripts": ("create", "export", "import", "rename")}, "'verify' is missing"),
        ({"scripts": ("create", "export", "rename", "verify")}, "'import' is missing"),
        ({"parameters": None}, "'parameters.list' is missing"),
    ],
)
def test_invalid_definitions(search: Path, kwargs: dict[str, Any], needle: str) -> None:
    make_os(search, "bad", **kwargs)
    with pytest.raises(OsError) as exc:
        load_os(str(search / "bad"), name="bad")
    assert needle in str(exc.value)
    assert exc.value.kind is ErrorKind.ENVIRONMENT


def test_script_that_is_a_directory(search: Path) -> None:
    d = make_os(search, "bad", scripts=("export", "import", "rename", "verify"))
    (d / "create").mkdir()
    with pytest.raises(OsError, match="not a regular file"):
        load_os(str(d), name="bad")


def test_find_os_search_order_and_builtin_last(paths: Paths, search: Path) -> None:
    second = Path(paths.os_search_path[1])
    make_os(second, "dup", variants="second\n")
    make_os(search, "dup", variants="first\n")
    assert find_os(paths, "dup").variants == ("first",)
    # the built-in busybox OS is found after the search path...
    busybox = find_os(paths, "busybox")
    assert busybox.builtin and busybox.path == os.path.join(BUILTIN_OS_DIR, "busybox")
    # ...and a definition of the same name in the search path takes precedence
    make_os(second, "busybox", variants="custom\n")
    overridden = find_os(paths, "busybox")
    assert not overridden.builtin and overridden.variants == ("custom",)


def test_find_os_not_found(paths: Paths) -> None:
    with pytest.raises(OsError) as exc:
        find_os(paths, "nosuchos")
    assert exc.value.kind is ErrorKind.NOT_FOUND
    assert paths.os_search_path[0] in str(exc.value)


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x+y+z", "-rf"])
def test_bad_os_names(name: str) -> None:
    with pytest.raises(OsError) as exc:
        split_os_name(name)
    assert exc.value.kind is ErrorKind.INVALID


def test_split_os_name() -> None:
    assert split_os_name("debootstrap+bookworm") == ("debootstrap", "bookworm")
    assert split_os_name("noop") == ("noop", "")


def test_diagnose_lists_valid_and_invalid_once(paths: Paths, search: Path) -> None:
    make_os(search, "good", variants="a\n", parameters="p doc\n")
    make_os(search, "broken", api="3\n")
    (search / "not-a-dir").write_text("x")
    make_os(Path(paths.os_search_path[2]), "good", api="1\n")  # hidden by the first one
    infos = {i.name: i for i in diagnose(paths)}
    assert infos["good"].valid and infos["good"].variants == ["a"]
    assert infos["good"].parameters == [("p", "doc")]
    assert infos["good"].path == str(search / "good")
    assert not infos["broken"].valid and "API version mismatch" in infos["broken"].error
    assert "not-a-dir" not in infos
    assert infos["busybox"].builtin and infos["busybox"].valid, infos["busybox"].error
    assert [i.name for i in diagnose(paths)].count("good") == 1


def test_builtin_busybox_definition_is_valid() -> None:
    d = load_os(os.path.join(BUILTIN_OS_DIR, "busybox"), name="busybox", builtin=True)
    assert d.api_version == 20
    assert d.variants == ("default",)
    assert [p for p, _ in d.parameters] == ["dns_nameservers"]


# --- variants and parameters -------------------------------------------------------------------


def _os(**kw: Any) -> OsDefinition:
    base: dict[str, Any] = {"name": "myos", "path": "/os/myos", "api_versions": (20,)}
    base.update(kw)
    return OsDefinition(**base)


def test_variant_default_is_first() -> None:
    assert select_variant(_os(variants=("a", "b")), "") == "a"
    assert select_variant(_os(variants=("a", "b")), "b") == "b"


def test_unknown_variant() -> None:
    with pytest.raises(OsError) as exc:
        select_variant(_os(variants=("a", "b")), "c")
    assert exc.value.kind is ErrorKind.INVALID
    assert "unsupported variant 'c'" in str(exc.value)


def test_variant_for_os_without_variants() -> None:
    with pytest.raises(OsError, match="does not support variants"):
        select_variant(_os(), "x")
    assert select_variant(_os(), "") == ""
    # API 10 definitions have no variants even if the file exists
    assert select_variant(_os(api_versions=(10,), variants=("a",)), "") == ""


def test_unknown_parameters() -> None:
    d = _os(parameters=(("mirror", ""),))
    check_osparams(d, {"mirror": "http://x"})
    with pytest.raises(OsError) as exc:
        check_osparams(d, {"mirror": "x", "zz": "1", "aa": "2"})
    assert exc.value.kind is ErrorKind.INVALID
    assert "aa, zz" in str(exc.value)


# --- the environment ---------------------------------------------------------------------------


def test_env_golden_two_disks_one_nic(tmp_path: Path) -> None:
    d = _os(api_versions=(20, 15, 10), variants=("small", "big"), parameters=(("root-size", ""),))
    spec = InstanceSpec(
        name="vm1.example.com",
        uuid="0f7c-inst",
        hypervisor="kvm",
        hvparams={"disk_type": "paravirtual", "nic_type": "e1000", "serial_console": True},
        memory=256,
        min_memory=128,
        vcpus=2,
        nics=[
            NicSpec(
                index=0,
                uuid="0f7c-nic0",
                mac="aa:00:00:12:34:56",
                mode="bridged",
                link="br0",
                ip="192.0.2.10",
                name="front",
            )
        ],
    )
    disks = [
        DiskEnv(index=0, path="/srv/d/vm1/d0", size=1024, uuid="0f7c-d0", name="root"),
        DiskEnv(index=1, path="/srv/d/vm1/d1", size=512, mode="ro", uuid="0f7c-d1"),
    ]
    paths = Paths("/r")
    env = build_env(
        d,
        instance=spec,
        os_name="myos+big",
        variant="big",
        disks=disks,
        osparams={"root-size": "900"},
        debug=1,
        node_name="node1.example.com",
        paths=paths,
    )
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "OS_API_VERSION": "20",
        "OS_NAME": "myos",
        "OS_VARIANT": "big",
        "DEBUG_LEVEL": "1",
        "OSP_ROOT_SIZE": "900",
        "INSTANCE_NAME": "vm1.example.com",
        "INSTANCE_OS": "myos+big",
        "INSTANCE_UUID": "0f7c-inst",
        "INSTANCE_PRIMARY_NODE": "node1.example.com",
        "HYPERVISOR": "kvm",
        "DISK_COUNT": "2",
        "DISK_0_PATH": "/srv/d/vm1/d0",
        "DISK_0_SIZE": "1024",
        "DISK_0_ACCESS": "rw",
        "DISK_0_UUID": "0f7c-d0",
        "DISK_0_NAME": "root",
        "DISK_0_FRONTEND_TYPE": "paravirtual",
        "DISK_0_BACKEND_TYPE": "file:loop",
        "DISK_1_PATH": "/srv/d/vm1/d1",
        "DISK_1_SIZE": "512",
        "DISK_1_ACCESS": "ro",
        "DISK_1_UUID": "0f7c-d1",
        "DISK_1_FRONTEND_TYPE": "paravirtual",
        "DISK_1_BACKEND_TYPE": "file:loop",
        "NIC_COUNT": "1",
        "NIC_0_MAC": "aa:00:00:12:34:56",
        "NIC_0_UUID": "0f7c-nic0",
        "NIC_0_NAME": "front",
        "NIC_0_IP": "192.0.2.10",
        "NIC_0_MODE": "bridged",
        "NIC_0_BRIDGE": "br0",
        "NIC_0_LINK": "br0",
        "NIC_0_FRONTEND_TYPE": "e1000",
        "INSTANCE_HV_disk_type": "paravirtual",
        "INSTANCE_HV_nic_type": "e1000",
        "INSTANCE_HV_serial_console": "True",
        "INSTANCE_BE_maxmem": "256",
        "INSTANCE_BE_minmem": "128",
        "INSTANCE_BE_vcpus": "2",
        "CORRAL_CACHE_DIR": "/r/var/cache/corral",
        "CORRAL_KERNELS_DIR": "/r/var/lib/corral/kernels",
    }


def test_env_routed_nic_without_ip_or_link() -> None:
    spec = InstanceSpec(
        name="vm2",
        uuid="u",
        hypervisor="fake",
        hvparams={},
        memory=64,
        min_memory=64,
        vcpus=1,
        nics=[NicSpec(index=0, uuid="n", mac="aa:00:00:00:00:01", mode="routed")],
    )
    env = build_env(
        _os(),
        instance=spec,
        os_name="myos",
        variant="",
        disks=[],
        osparams={},
        debug=0,
        node_name="n1",
        paths=Paths("/"),
    )
    nic_keys = sorted(k for k in env if k.startswith("NIC_0"))
    assert nic_keys == ["NIC_0_MAC", "NIC_0_MODE", "NIC_0_UUID"]
    assert env["DISK_COUNT"] == "0"
    assert not any(k.startswith(("DISK_0", "INSTANCE_HV_")) for k in env)


def test_core_env_for_v10_definition() -> None:
    env = build_core_env(_os(api_versions=(5, 10)), variant="", osparams={}, debug=0)
    assert env["OS_API_VERSION"] == "10"
    assert env["OS_VARIANT"] == ""


def test_module_constants_match_compat() -> None:
    assert osdef.SUPPORTED_API_VERSIONS == (20, 15, 10)

"""UEFI firmware (corral.hypervisor.kvm.firmware): the per-instance variables store and args.

Real files in a temporary directory; booting OVMF is in tests/integration/test_kvm_params.py.
"""

from __future__ import annotations

import os

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.kvm.firmware import ensure_nvram, firmware_args, nvram_path
from corral.objects.params.hv import KVM_HVPARAMS
from tests.conftest import unavailable


def test_store_is_per_instance_uuid_under_the_data_dir():
    assert nvram_path("/var/lib/corral", "1234-abcd") == "/var/lib/corral/kvm-nvram/1234-abcd.fd"
    for bad in ("", "../x", ".hidden"):
        with pytest.raises(HypervisorError):
            nvram_path("/d", bad)


def test_store_is_copied_once_with_tight_permissions(tmp_path):
    template = tmp_path / "OVMF_VARS.fd"
    template.write_bytes(b"\x01" * 4096)
    store = tmp_path / "data" / "kvm-nvram" / "u1.fd"
    assert ensure_nvram(str(template), str(store)) is True
    assert store.read_bytes() == template.read_bytes()
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    assert oct(store.parent.stat().st_mode & 0o777) == "0o700"
    # the guest changed its variables: a later start keeps them
    store.write_bytes(b"\x02" * 4096)
    assert ensure_nvram(str(template), str(store)) is False
    assert store.read_bytes() == b"\x02" * 4096
    assert [p for p in os.listdir(store.parent) if p.endswith(".tmp")] == []


def test_store_of_another_size_is_refused(tmp_path):
    template = tmp_path / "OVMF_VARS_4M.fd"
    template.write_bytes(b"\x00" * 8192)
    store = tmp_path / "u1.fd"
    store.write_bytes(b"\x00" * 4096)
    with pytest.raises(HypervisorError) as err:
        ensure_nvram(str(template), str(store))
    assert err.value.kind is ErrorKind.INVALID
    assert err.value.fields["param"] == "ovmf_vars_template" and "2M vs 4M" in str(err.value)


def test_missing_template_is_an_environment_error(tmp_path):
    with pytest.raises(HypervisorError) as err:
        ensure_nvram(str(tmp_path / "none.fd"), str(tmp_path / "u1.fd"))
    assert err.value.kind is ErrorKind.ENVIRONMENT and "ovmf" in str(err.value).lower()


def test_args_only_for_uefi():
    bios = KVM_HVPARAMS.fill({})
    assert firmware_args(bios, "/n.fd") == ([], [])
    uefi = KVM_HVPARAMS.fill({"firmware": "uefi"})
    props, argv = firmware_args(uefi, "/var/lib/corral/kvm-nvram/u1.fd")
    assert props == ["pflash0=pflash0", "pflash1=pflash1"]
    assert argv == [
        "-blockdev",
        "driver=file,node-name=pflash0-file,filename=/usr/share/OVMF/OVMF_CODE_4M.fd,read-only=on",
        "-blockdev",
        "driver=raw,node-name=pflash0,file=pflash0-file,read-only=on",
        "-blockdev",
        "driver=file,node-name=pflash1-file,filename=/var/lib/corral/kvm-nvram/u1.fd,read-only=off",
        "-blockdev",
        "driver=raw,node-name=pflash1,file=pflash1-file,read-only=off",
    ]


def test_debian_ovmf_defaults_exist_where_the_package_is_installed():
    defaults = KVM_HVPARAMS.defaults()
    if not os.path.isdir("/usr/share/OVMF"):
        unavailable("ovmf is not installed")
    assert os.path.isfile(defaults["ovmf_code_path"])
    assert os.path.isfile(defaults["ovmf_vars_template"])

"""init_cluster / destroy_cluster in a temporary root (real certificates, real store)."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from corral.common.errors import CorralError, ErrorKind, OpError, ParamError
from corral.common.paths import Paths
from corral.master.bootstrap import (
    admin_password_file,
    destroy_cluster,
    init_cluster,
    load_cluster_conf,
    open_store,
    rapi_ha1,
)
from corral.master.config import ClusterConfig
from corral.objects.instance import Instance


def _init(paths: Paths, **kw):
    args = dict(
        cluster_name="c1",
        node_name="node1",
        node_address="127.0.0.9",
        enabled_hypervisors=["fake", "kvm"],
        file_storage_dir=os.path.join(paths.root, "disks"),
        rapi_port=15080,
        noded_port=11811,
        beparams={"memory": "256M"},
        hvparams={"fake": {"boot_delay": "0.5"}},
    )
    args.update(kw)
    return init_cluster(paths, **args)


def test_rapi_ha1_matches_ganeti_format():
    expected = hashlib.md5(b"admin:Ganeti Remote API:secret").hexdigest()
    assert rapi_ha1("admin", "secret") == "{HA1}" + expected


def test_init_cluster_lays_out_everything(tmp_path):
    paths = Paths(str(tmp_path))
    cluster = _init(paths)
    assert cluster.enabled_hypervisors == ["fake", "kvm"]
    assert cluster.beparams == {"maxmem": 256, "minmem": 256}
    # a cluster under another root keeps its kernels there (the schema defaults name /var/lib)
    assert cluster.hvparams == {
        "fake": {"boot_delay": 0.5},
        "kvm": {
            "kernel_path": os.path.join(paths.kernels_dir, "vmlinuz-kvmU"),
            "initrd_path": os.path.join(paths.kernels_dir, "initrd-kvmU"),
        },
    }
    conf = load_cluster_conf(paths)
    assert conf.store == "sqlite://" + paths.store_db
    assert (conf.master_node, conf.master_address, conf.rapi_bind) == (
        "node1",
        "127.0.0.9",
        "127.0.0.9",
    )
    assert (conf.rapi_port, conf.noded_port) == (15080, 11811)
    with open(paths.cluster_conf) as fh:
        assert json.load(fh)["version"] == 1
    for path in (paths.ca_cert, paths.node_cert, paths.rapi_cert):
        assert os.path.exists(path)
    for secret in (
        paths.ca_key,
        paths.node_key,
        paths.rapi_cert,
        paths.rapi_users,
        admin_password_file(paths),
    ):
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600, secret
    with open(admin_password_file(paths)) as fh:
        password = fh.read().strip()
    assert len(password) >= 16
    with open(paths.rapi_users) as fh:
        users = [line.split() for line in fh if line.strip() and not line.startswith("#")]
    assert users == [["admin", rapi_ha1("admin", password), "write"]]
    assert os.path.isdir(os.path.join(paths.root, "disks"))
    store = open_store(conf.store)
    try:
        cfg = ClusterConfig(store)
        assert cfg.cluster().name == "c1"
        node = cfg.node("node1")
        assert (node.primary_ip, node.rpc_port) == ("127.0.0.9", 11811)
    finally:
        store.close()


def test_init_twice_is_refused(tmp_path):
    paths = Paths(str(tmp_path))
    _init(paths)
    with pytest.raises(CorralError) as err:
        _init(paths)
    assert err.value.kind is ErrorKind.EXISTS


def test_bad_inputs_name_the_field_and_create_nothing(tmp_path):
    paths = Paths(str(tmp_path))
    with pytest.raises(ParamError) as err:
        _init(
            paths,
            cluster_name="bad name",
            node_address="nowhere",
            enabled_hypervisors=["vmx"],
            rapi_port=0,
            file_storage_dir="relative",
        )
    assert set(err.value.problems) >= {
        "cluster_name",
        "node_address",
        "enabled_hypervisors",
        "rapi_port",
        "file_storage_dir",
    }
    with pytest.raises(ParamError) as err:
        _init(paths, beparams={"maxmem": "huge"})
    assert "maxmem" in err.value.problems
    with pytest.raises(ParamError):
        _init(paths, hvparams={"fake": {"nope": 1}})
    assert not os.path.exists(paths.cluster_conf)
    assert not os.path.exists(paths.ca_cert)
    assert not os.path.exists(paths.store_db)


def test_failed_init_removes_what_it_made(tmp_path, monkeypatch):
    paths = Paths(str(tmp_path))
    from corral.master import bootstrap

    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bootstrap, "write_atomic", broken)
    with pytest.raises(CorralError) as err:
        _init(paths)
    assert "No space left" in str(err.value)
    for path in (
        paths.cluster_conf,
        paths.ca_cert,
        paths.ca_key,
        paths.node_cert,
        paths.store_db,
        paths.rapi_users,
    ):
        assert not os.path.exists(path), path


def test_missing_conf_is_wrong_state(tmp_path):
    with pytest.raises(CorralError) as err:
        load_cluster_conf(Paths(str(tmp_path)))
    assert err.value.kind is ErrorKind.WRONG_STATE
    with pytest.raises(CorralError) as err:
        open_store("etcd://somewhere")
    assert err.value.kind is ErrorKind.INVALID


def test_destroy(tmp_path):
    paths = Paths(str(tmp_path))
    _init(paths)
    store = open_store(load_cluster_conf(paths).store)
    try:
        ClusterConfig(store).add_instance(
            Instance(
                name="vm1",
                primary_node="node1",
                os="x",
                hypervisor="fake",
                disk_template="diskless",
            )
        )
    finally:
        store.close()
    with pytest.raises(OpError) as err:
        destroy_cluster(paths)
    assert err.value.kind is ErrorKind.WRONG_STATE and "vm1" in str(err.value)
    destroy_cluster(paths, force=True)
    for path in (
        paths.cluster_conf,
        paths.store_db,
        paths.ca_cert,
        paths.ca_key,
        paths.rapi_users,
        admin_password_file(paths),
    ):
        assert not os.path.exists(path), path
    _init(paths)  # a fresh cluster can be made again

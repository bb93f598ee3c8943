"""ClusterConfig: typed reads, revision-checked writes, atomic multi-key changes."""

from __future__ import annotations

import threading

import pytest

from corral.common.errors import ErrorKind, OpError, RevisionConflict, StoreError
from corral.master.config import (
    INSTANCES_PREFIX,
    ClusterConfig,
    PutObject,
    Versioned,
    instance_key,
    job_id_from_key,
    job_key,
)
from corral.objects.instance import Instance
from corral.store.base import Put


def _inst(name: str = "vm1") -> Instance:
    return Instance(
        name=name, primary_node="node1", os="testos", hypervisor="fake", disk_template="diskless"
    )


def test_cluster_and_node_reads(config):
    assert config.cluster().name == "testcluster"
    assert [n.name for n in config.nodes()] == ["node1"]
    assert config.read_node("nope") is None
    with pytest.raises(OpError) as err:
        config.node("nope")
    assert err.value.kind is ErrorKind.NOT_FOUND
    assert "nope" in str(err.value)


def test_missing_cluster_is_wrong_state(store):
    from corral.master.config import ClusterConfig

    with pytest.raises(StoreError) as err:
        ClusterConfig(store).cluster()
    assert err.value.kind is ErrorKind.WRONG_STATE


def test_add_instance_twice_is_exists(config):
    config.add_instance(_inst())
    with pytest.raises(OpError) as err:
        config.add_instance(_inst())
    assert err.value.kind is ErrorKind.EXISTS
    assert config.instance("vm1").name == "vm1"


def test_stale_revision_write_is_refused(config):
    config.add_instance(_inst())
    first = config.instance_versioned("vm1")
    second = config.instance_versioned("vm1")
    a = first.value.model_copy(update={"os": "a"})
    config.commit([PutObject(instance_key("vm1"), a, first.revision)])
    b = second.value.model_copy(update={"os": "b"})
    with pytest.raises(RevisionConflict):
        config.commit([PutObject(instance_key("vm1"), b, second.revision)])
    assert config.instance("vm1").os == "a"  # the first update was not lost


def test_concurrent_modify_loses_no_update(config):
    """Two writers (separate config objects, as two processes would be) appending tags
    through read-modify-write, plus two threads sharing one: every tag survives."""
    config.add_instance(_inst())
    other = ClusterConfig(config.store)

    def worker(cfg: ClusterConfig, prefix: str) -> None:
        for i in range(20):
            cfg.modify_instance("vm1", lambda inst, t=f"{prefix}{i}": inst.tags.append(t))

    threads = [
        threading.Thread(target=worker, args=(cfg, p))
        for cfg, p in ((config, "a"), (config, "b"), (other, "c"), (other, "d"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inst = config.instance("vm1")
    assert len(inst.tags) == 80
    assert inst.serial_no == 81


def test_modify_conflict_is_retried(config):
    """A write sneaking in between read and write makes modify retry, not overwrite."""
    config.add_instance(_inst())
    calls = []

    def change(inst: Instance) -> None:
        calls.append(inst.os)
        if len(calls) == 1:  # somebody else writes while we hold the old copy
            config.modify_instance("vm1", lambda other: setattr(other, "os", "theirs"))
        inst.tags.append("mine")

    config.modify_instance("vm1", change)
    inst = config.instance("vm1")
    assert calls == ["testos", "theirs"]
    assert inst.os == "theirs" and inst.tags == ["mine"]


def test_modify_missing_instance_is_not_found(config):
    with pytest.raises(OpError) as err:
        config.modify_instance("ghost", lambda i: None)
    assert err.value.kind is ErrorKind.NOT_FOUND


def test_rename_is_one_transaction(config, store):
    config.add_instance(_inst())
    old = config.instance_versioned("vm1")
    rev_before = store.revision
    renamed = old.value.model_copy(update={"name": "vm2"})
    config.rename_instance(old, renamed)
    assert store.revision == rev_before + 1  # delete + put in one revision
    assert [i.name for i in config.instances()] == ["vm2"]


def test_rename_stale_or_onto_existing_changes_nothing(config):
    config.add_instance(_inst("vm1"))
    config.add_instance(_inst("vm3"))
    old = config.instance_versioned("vm1")
    with pytest.raises(OpError) as err:
        config.rename_instance(old, old.value.model_copy(update={"name": "vm3"}))
    assert err.value.kind is ErrorKind.EXISTS
    config.modify_instance("vm1", lambda i: i.tags.append("x"))
    with pytest.raises(RevisionConflict):
        config.rename_instance(old, old.value.model_copy(update={"name": "vm2"}))
    assert sorted(i.name for i in config.instances()) == ["vm1", "vm3"]


def test_corrupt_value_names_the_key(config, store):
    store.txn([], [Put(INSTANCES_PREFIX + "bad", b"{not json")])
    with pytest.raises(StoreError) as err:
        config.instance("bad")
    assert "/corral/instances/bad" in str(err.value)


def test_job_keys_sort_by_id():
    keys = [job_key(i) for i in (10, 9, 100, 1)]
    assert sorted(keys) == [job_key(1), job_key(9), job_key(10), job_key(100)]
    assert job_key(12) == "/corral/jobs/0000000012"
    assert job_id_from_key(job_key(12)) == 12
    with pytest.raises(ValueError):
        job_id_from_key("/corral/instances/x")


def test_versioned_zero_means_absent(config):
    inst = _inst("new")
    config.commit([PutObject(instance_key("new"), inst, 0)])
    with pytest.raises(RevisionConflict):
        config.commit([PutObject(instance_key("new"), inst, 0)])
    assert isinstance(config.find_instance("new"), Versioned)

"""Typed access to the cluster state kept in the store.

The key layout (see ``docs/architecture/store.md``)::

    /corral/cluster                 the Cluster object
    /corral/nodes/<name>            one Node per host
    /corral/instances/<name>        one Instance per guest
    /corral/jobs/<id, 10 digits>    one Job (zero-padded so keys sort by id)
    /corral/serial/job              the last job id handed out (decimal text)

Values are the objects' JSON (pydantic ``model_dump_json`` / ``model_validate_json``).

Every write is a store transaction guarded by revision comparisons (optimistic concurrency):
a writer states the ``mod_revision`` it read (:class:`Versioned`), and the write fails with
:class:`~corral.common.errors.RevisionConflict` if somebody changed the key in between, so two
concurrent writers can never silently lose an update. :meth:`ClusterConfig.modify_instance`
and friends wrap the read-modify-write loop with retries. Changes touching several keys (a
rename deletes one key and creates another) go into one transaction.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from corral.common.errors import ErrorKind, OpError, RevisionConflict, StoreError
from corral.objects.base import ConfigObject
from corral.objects.cluster import Cluster
from corral.objects.instance import Instance
from corral.objects.node import Node
from corral.store.base import Compare, Delete, KeyValue, Put, Store

log = logging.getLogger(__name__)

ROOT = "/corral/"
CLUSTER_KEY = "/corral/cluster"
NODES_PREFIX = "/corral/nodes/"
INSTANCES_PREFIX = "/corral/instances/"
JOBS_PREFIX = "/corral/jobs/"
JOB_SERIAL_KEY = "/corral/serial/job"

#: How often a read-modify-write is retried when another writer got in first.
MODIFY_RETRIES = 20

M = TypeVar("M", bound=BaseModel)


def node_key(name: str) -> str:
    """The store key of a node."""
    return NODES_PREFIX + name


def instance_key(name: str) -> str:
    """The store key of an instance."""
    return INSTANCES_PREFIX + name


def job_key(job_id: int) -> str:
    """The store key of a job (ids are zero-padded to 10 digits so keys sort by id)."""
    return f"{JOBS_PREFIX}{job_id:010d}"


def job_id_from_key(key: str) -> int:
    """The job id in a job key.

    Raises:
        ValueError: the key is not a job key.
    """
    if not key.startswith(JOBS_PREFIX):
        raise ValueError(f"not a job key: {key!r}")
    return int(key[len(JOBS_PREFIX) :])


@dataclasses.dataclass(frozen=True, slots=True)
class Versioned(Generic[M]):
    """An object with the ``mod_revision`` of the key it was read from.

    ``revision`` 0 means "the key did not exist"; a write conditioned on it requires the key
    to still be absent.
    """

    value: M
    revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class PutObject:
    """Write ``obj`` at ``key`` if the key's ``mod_revision`` is still ``expect``.

    ``expect`` None writes unconditionally; 0 requires the key to be absent.
    """

    key: str
    obj: BaseModel
    expect: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class DeleteKey:
    """Delete ``key`` if its ``mod_revision`` is still ``expect`` (None: unconditionally)."""

    key: str
    expect: int | None


Change = PutObject | DeleteKey


def decode(kv: KeyValue, model: type[M]) -> M:
    """Parse a stored value.

    Raises:
        StoreError: the value is not a valid ``model`` (kind FAULT, naming the key).
    """
    try:
        return model.model_validate_json(kv.value)
    except ValidationError as exc:
        raise StoreError(
            f"corrupt value at {kv.key}: {exc.errors()[0].get('msg', 'invalid')}", key=kv.key
        ) from exc


def encode(obj: BaseModel) -> bytes:
    """The stored form of an object."""
    return obj.model_dump_json().encode()


class ClusterConfig:
    """Typed reads and revision-checked writes of the cluster state.

    Thread-safe as far as the underlying store is; holds no cache, so every read is fresh.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._write_lock = threading.RLock()

    # --- generic --------------------------------------------------------------------------

    def read(self, key: str, model: type[M]) -> Versioned[M] | None:
        """The object at ``key`` with its revision, or None when absent.

        Raises:
            StoreError: the store cannot be read or holds a corrupt value.
        """
        kv = self.store.get(key)
        if kv is None:
            return None
        return Versioned(decode(kv, model), kv.mod_revision)

    def read_all(self, prefix: str, model: type[M]) -> list[Versioned[M]]:
        """Every object under ``prefix``, sorted by key.

        Raises:
            StoreError: the store cannot be read or holds a corrupt value.
        """
        return [Versioned(decode(kv, model), kv.mod_revision) for kv in self.store.range(prefix)]

    def commit(self, changes: Sequence[Change]) -> int:
        """Apply ``changes`` atomically, if every expected revision still holds.

        Returns:
            The store revision after the write.

        Raises:
            RevisionConflict: a key changed since it was read (or exists when it must not);
                nothing was written.
            StoreError: the store cannot be written; nothing was written.
        """
        compares: list[Compare] = []
        ops: list[Put | Delete] = []
        for change in changes:
            if change.expect is not None:
                compares.append(Compare(change.key, "mod_revision", "=", change.expect))
            if isinstance(change, PutObject):
                ops.append(Put(change.key, encode(change.obj)))
            else:
                ops.append(Delete(change.key))
        result = self.store.txn(compares, ops)
        if not result.succeeded:
            keys = ", ".join(c.key for c in changes)
            raise RevisionConflict(f"concurrent update of {keys}; retry", keys=keys)
        return result.revision

    def modify(
        self,
        key: str,
        model: type[M],
        change: Callable[[M], None],
        *,
        missing: Callable[[], Exception],
        retries: int = MODIFY_RETRIES,
    ) -> M:
        """Read, change and write back one object, retrying when another writer got first.

        ``change`` mutates the object in place (it may raise to abort; nothing is written
        then). Configuration objects get their ``serial_no``/``mtime`` bumped.

        Raises:
            Exception: whatever ``missing()`` returns, when the key does not exist.
            RevisionConflict: still conflicting after ``retries`` attempts.
            StoreError: the store failed.
        """
        for attempt in range(retries):
            # NOTE: writers in this process take turns (no conflicts among them); writers in
            # other processes are detected by the revision compare and retried after a
            # growing, jittered pause so that no writer starves.
            with self._write_lock:
                current = self.read(key, model)
                if current is None:
                    raise missing()
                obj = current.value
                change(obj)
                if isinstance(obj, ConfigObject):
                    obj.touch()
                try:
                    self.commit([PutObject(key, obj, current.revision)])
                except RevisionConflict:
                    log.debug("retrying update of %s after a concurrent write", key)
                else:
                    return obj
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise RevisionConflict(f"{key} kept changing; gave up after {retries} attempts", key=key)

    # --- cluster --------------------------------------------------------------------------

    def cluster_versioned(self) -> Versioned[Cluster]:
        """The cluster object with its revision.

        Raises:
            StoreError: no cluster was initialised in this store (kind WRONG_STATE).
        """
        found = self.read(CLUSTER_KEY, Cluster)
        if found is None:
            raise StoreError(
                "the store holds no cluster (run 'corral cluster init')",
                kind=ErrorKind.WRONG_STATE,
            )
        return found

    def cluster(self) -> Cluster:
        """The cluster object (see :meth:`cluster_versioned`)."""
        return self.cluster_versioned().value

    def modify_cluster(self, change: Callable[[Cluster], None]) -> Cluster:
        """Read-modify-write the cluster object (see :meth:`modify`)."""
        return self.modify(
            CLUSTER_KEY,
            Cluster,
            change,
            missing=lambda: StoreError("the store holds no cluster", kind=ErrorKind.WRONG_STATE),
        )

    # --- nodes ----------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """Every node, sorted by name."""
        return [v.value for v in self.read_all(NODES_PREFIX, Node)]

    def read_node(self, name: str) -> Node | None:
        """A node, or None when there is no such node."""
        found = self.read(node_key(name), Node)
        return found.value if found else None

    def node_versioned(self, name: str) -> Versioned[Node]:
        """A node with its revision.

        Raises:
            OpError: no such node (kind NOT_FOUND).
        """
        found = self.read(node_key(name), Node)
        if found is None:
            raise _node_missing(name)
        return found

    def node(self, name: str) -> Node:
        """A node (see :meth:`node_versioned`)."""
        return self.node_versioned(name).value

    def add_node(self, node: Node) -> None:
        """Store a new node.

        Raises:
            OpError: a node of that name exists (kind EXISTS).
        """
        try:
            self.commit([PutObject(node_key(node.name), node, 0)])
        except RevisionConflict as exc:
            raise OpError(
                f"node {node.name!r} already exists", kind=ErrorKind.EXISTS, node=node.name
            ) from exc

    def modify_node(self, name: str, change: Callable[[Node], None]) -> Node:
        """Read-modify-write a node (see :meth:`modify`); NOT_FOUND if it does not exist."""
        return self.modify(node_key(name), Node, change, missing=lambda: _node_missing(name))

    # --- instances ------------------------------------------------------------------------

    def instances(self) -> list[Instance]:
        """Every instance, sorted by name."""
        return [v.value for v in self.read_all(INSTANCES_PREFIX, Instance)]

    def find_instance(self, name: str) -> Versioned[Instance] | None:
        """An instance with its revision, or None."""
        return self.read(instance_key(name), Instance)

    def instance_versioned(self, name: str) -> Versioned[Instance]:
        """An instance with its revision.

        Raises:
            OpError: no such instance (kind NOT_FOUND).
        """
        found = self.find_instance(name)
        if found is None:
            raise _instance_missing(name)
        return found

    def instance(self, name: str) -> Instance:
        """An instance (see :meth:`instance_versioned`)."""
        return self.instance_versioned(name).value

    def add_instance(self, instance: Instance) -> int:
        """Store a new instance; return the store revision.

        Raises:
            OpError: an instance of that name exists (kind EXISTS).
        """
        try:
            return self.commit([PutObject(instance_key(instance.name), instance, 0)])
        except RevisionConflict as exc:
            raise OpError(
                f"instance {instance.name!r} already exists",
                kind=ErrorKind.EXISTS,
                instance=instance.name,
            ) from exc

    def modify_instance(self, name: str, change: Callable[[Instance], None]) -> Instance:
        """Read-modify-write an instance (see :meth:`modify`); NOT_FOUND if it is gone."""
        return self.modify(
            instance_key(name), Instance, change, missing=lambda: _instance_missing(name)
        )

    def remove_instance(self, name: str, *, expect: int | None = None) -> None:
        """Delete an instance (conditioned on its revision when ``expect`` is given).

        Raises:
            RevisionConflict: the instance changed since revision ``expect``.
        """
        self.commit([DeleteKey(instance_key(name), expect)])

    def rename_instance(self, old: Versioned[Instance], renamed: Instance) -> None:
        """Atomically replace ``old`` by ``renamed`` (a different name) in one transaction.

        Raises:
            OpError: an instance named ``renamed.name`` exists (kind EXISTS).
            RevisionConflict: ``old`` changed since it was read; nothing was written.
        """
        new_key = instance_key(renamed.name)
        if self.store.get(new_key) is not None:
            raise OpError(
                f"instance {renamed.name!r} already exists",
                kind=ErrorKind.EXISTS,
                instance=renamed.name,
            )
        renamed.touch()
        self.commit(
            [
                DeleteKey(instance_key(old.value.name), old.revision),
                PutObject(new_key, renamed, 0),
            ]
        )


def _node_missing(name: str) -> OpError:
    return OpError(f"node {name!r} does not exist", kind=ErrorKind.NOT_FOUND, node=name)


def _instance_missing(name: str) -> OpError:
    return OpError(f"instance {name!r} does not exist", kind=ErrorKind.NOT_FOUND, instance=name)

"""Moving a single-host cluster's state from its SQLite file onto etcd, losing nothing.

:func:`move_store` is the whole procedure; ``corral cluster move-store etcd://...`` wraps it
(stopping the master daemon around it). The master daemon must not run while the state is
copied (it is the only writer of the store, so with it stopped the SQLite file cannot change);
jobs that are queued, waiting, running or being canceled make the move refuse, because their
executor state would not survive the restart.

Steps (each failure before step 5 deletes what was copied and changes nothing else):

1. check: ``cluster.json`` names a SQLite store, the master is stopped, no unfinished job;
2. check: the etcd answers and holds no key under ``/corral/``;
3. copy every key (except the leader-election keys, which belong to a lease) in etcd
   transactions of at most :data:`TXN_MAX_OPS` keys and :data:`BATCH_BYTES` bytes, each
   conditioned on its keys being absent (etcd's default ``--max-txn-ops`` is 128 and its
   ``--max-request-bytes`` 1.5 MiB);
4. verify: read everything back from etcd and compare every key and value with the SQLite
   file, which must still be at the revision it had at step 1;
5. switch: rewrite ``cluster.json`` with the etcd URL (atomic rename) — from here on the
   cluster lives on etcd;
6. keep the SQLite file as a backup: it is renamed to ``config.db.pre-etcd-<UTC time>`` in
   the same directory (named in the result).

What changes: key revisions. etcd numbers its revisions itself, so the keys'
``create_revision``/``mod_revision``/``version`` and the store revision differ from SQLite's
(nothing persistent refers to them: they are only used for compare-and-swap between a read
and a write, and watches restart from the current revision). Everything stored — cluster,
nodes, groups, instances with their tags, every job with its log, and the job serial — is
copied byte for byte, so job ids continue where they were.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable, Sequence

from corral.common import daemonize
from corral.common.errors import CorralError, ErrorKind, OpError, ParamError, StoreError
from corral.common.fileio import write_atomic
from corral.common.paths import Paths
from corral.master.bootstrap import check_etcd_target, load_cluster_conf
from corral.master.config import JOBS_PREFIX
from corral.master.leader import LEADERSHIP_PREFIX
from corral.objects.job import Job, JobStatus
from corral.store.base import Compare, Delete, KeyValue, Put, Store
from corral.store.url import is_etcd, normalize_url, open_store

log = logging.getLogger(__name__)

#: Keys per etcd transaction (etcd's default ``--max-txn-ops``).
TXN_MAX_OPS = 128
#: Bytes of keys and values per etcd transaction (below etcd's default 1.5 MiB request limit).
BATCH_BYTES = 1024 * 1024
#: The master daemon's name (its pid file tells whether it runs).
MASTER_DAEMON = "corral-master"
#: Suffix of the SQLite backup kept after a move (followed by a UTC time stamp).
BACKUP_SUFFIX = ".pre-etcd-"


@dataclasses.dataclass(frozen=True)
class MoveResult:
    """What a successful move did."""

    target: str
    keys: int
    bytes: int
    transactions: int
    backup: str
    seconds: float


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    log.info("%s", text)
    if progress is not None:
        progress(text)


def unfinished_jobs(store: Store) -> list[tuple[int, str]]:
    """Ids and statuses of the jobs in ``store`` that are not finalized, by id.

    Raises:
        StoreError: the store cannot be read or holds an invalid job (kind FAULT).
    """
    found = []
    for kv in store.range(JOBS_PREFIX):
        try:
            job = Job.model_validate_json(kv.value)
        except ValueError as exc:
            raise StoreError(f"invalid job at {kv.key}: {exc}", kind=ErrorKind.FAULT) from exc
        if not JobStatus(job.status).finalized:
            found.append((job.id, str(job.status)))
    return found


def copied_keys(source: Store) -> list[KeyValue]:
    """Every key of ``source`` that a move copies (all but the leader-election keys)."""
    return [kv for kv in source.range("") if not kv.key.startswith(LEADERSHIP_PREFIX)]


def batches(
    kvs: Sequence[KeyValue], *, max_ops: int = TXN_MAX_OPS, max_bytes: int = BATCH_BYTES
) -> list[list[KeyValue]]:
    """Split ``kvs`` into transactions of at most ``max_ops`` keys and ``max_bytes`` bytes.

    A key larger than ``max_bytes`` gets a transaction of its own (etcd decides whether it
    fits its request limit).
    """
    out: list[list[KeyValue]] = []
    cur: list[KeyValue] = []
    size = 0
    for kv in kvs:
        item = len(kv.key.encode()) + len(kv.value)
        if cur and (len(cur) >= max_ops or size + item > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(kv)
        size += item
    if cur:
        out.append(cur)
    return out


def _check_source(paths: Paths) -> str:
    """The SQLite store URL of the cluster here, refusing what cannot be moved.

    Raises:
        CorralError: no cluster here (WRONG_STATE), or it is already on etcd (WRONG_STATE).
        OpError: the master daemon runs (WRONG_STATE).
    """
    conf = load_cluster_conf(paths)
    if is_etcd(conf.store):
        raise CorralError(
            f"the cluster's store is already etcd ({conf.store}); nothing to move",
            kind=ErrorKind.WRONG_STATE,
        )
    pid = daemonize.daemon_status(paths.pid_file(MASTER_DAEMON), name=MASTER_DAEMON)
    if pid is not None:
        raise OpError(
            f"{MASTER_DAEMON} is running (pid {pid}); stop it first ('corral cluster "
            "move-store' does that itself); nothing was changed",
            kind=ErrorKind.WRONG_STATE,
        )
    return conf.store


def _refuse_unfinished(store: Store) -> None:
    jobs = unfinished_jobs(store)
    if jobs:
        shown = ", ".join(f"{jid} ({status})" for jid, status in jobs[:10])
        raise OpError(
            f"{len(jobs)} job(s) are not finished: {shown}{', ...' if len(jobs) > 10 else ''}; "
            "wait for them or cancel them, then move the store; nothing was changed",
            kind=ErrorKind.WRONG_STATE,
        )


def _copy(target: Store, groups: list[list[KeyValue]], copied: list[str]) -> None:
    """Write each group in one conditional transaction, recording the keys written.

    Raises:
        StoreError: a transaction failed or found a key already present (kind EXISTS).
    """
    for group in groups:
        keys = [kv.key for kv in group]
        result = target.txn(
            [Compare.absent(k) for k in keys], [Put(kv.key, kv.value) for kv in group]
        )
        if not result.succeeded:
            raise StoreError(
                f"a key of {keys[0]}..{keys[-1]} appeared in etcd during the move "
                "(somebody else writes there)",
                kind=ErrorKind.EXISTS,
            )
        copied.extend(keys)


def _verify(target: Store, source: Store, kvs: Sequence[KeyValue], revision: int) -> None:
    """Compare every copied key and value with etcd, and check the source did not change.

    Raises:
        StoreError: a key is missing, differs or is extra in etcd, or SQLite changed during
            the move (kind FAULT / WRONG_STATE).
    """
    want = {kv.key: kv.value for kv in kvs}
    have = {kv.key: kv.value for kv in target.range("") if not kv.key.startswith(LEADERSHIP_PREFIX)}
    missing = sorted(set(want) - set(have))
    extra = sorted(k for k in set(have) - set(want) if k.startswith("/corral/"))
    differ = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or differ:
        raise StoreError(
            "verification failed: etcd does not hold exactly the SQLite keys "
            f"(missing {missing[:5]}, differing {differ[:5]}, extra {extra[:5]})",
            kind=ErrorKind.FAULT,
        )
    if source.revision != revision:
        raise StoreError(
            f"the SQLite store changed during the move (revision {revision} -> "
            f"{source.revision}); is another process writing it?",
            kind=ErrorKind.WRONG_STATE,
        )


def _undo(target_url: str, copied: list[str]) -> str | None:
    """Delete the copied keys from etcd; return a warning if that failed, else None."""
    if not copied:
        return None
    try:
        store = open_store(target_url)
        try:
            for start in range(0, len(copied), TXN_MAX_OPS):
                store.txn([], [Delete(k) for k in copied[start : start + TXN_MAX_OPS]])
        finally:
            store.close()
    except StoreError as exc:
        return (
            f"{len(copied)} copied key(s) could not be removed from etcd ({exc}); remove "
            "them with 'etcdctl del --prefix /corral/' before trying again"
        )
    return None


def _switch(paths: Paths, target_url: str, source_path: str) -> str:
    """Point ``cluster.json`` at etcd, then rename the SQLite file; return the backup name.

    Raises:
        OSError: ``cluster.json`` could not be rewritten (it is unchanged).
    """
    conf = load_cluster_conf(paths)
    conf.store = target_url
    write_atomic(paths.cluster_conf, conf.model_dump_json(indent=2) + "\n", mode=0o644)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    backup = source_path + BACKUP_SUFFIX + stamp
    try:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(source_path + suffix):
                os.rename(source_path + suffix, backup + suffix)
    except OSError as exc:
        log.warning("the SQLite file stays at %s (cannot rename it: %s)", source_path, exc)
        return source_path
    return backup


def move_store(
    paths: Paths,
    target: str,
    *,
    max_ops: int = TXN_MAX_OPS,
    max_bytes: int = BATCH_BYTES,
    progress: Callable[[str], None] | None = None,
) -> MoveResult:
    """Move this host's SQLite cluster onto the etcd at ``target`` (see the module docstring).

    Args:
        paths: this host's file layout (the cluster's master).
        target: ``etcd://host:port[,host:port...]``.
        max_ops: keys per etcd transaction.
        max_bytes: bytes (keys + values) per etcd transaction.
        progress: called with a line of text at each step.

    Returns:
        What was moved, and where the SQLite backup is.

    Raises:
        ParamError: ``target`` is not an etcd URL (nothing changed).
        OpError: the master daemon runs, or jobs are unfinished (kind WRONG_STATE; nothing
            changed).
        CorralError: no cluster here, or it is on etcd already (WRONG_STATE).
        StoreError: etcd is unreachable (ENVIRONMENT) or holds Corral keys (EXISTS), a copy
            or the verification failed: then the keys copied so far were deleted from etcd
            (the message says if that failed too) and ``cluster.json`` and the SQLite file
            are untouched.
    """
    started = time.monotonic()
    try:
        target_url = normalize_url(target)
    except StoreError as exc:
        raise ParamError({"store": str(exc)}, context="cluster move-store") from exc
    if not is_etcd(target_url):
        raise ParamError(
            {"store": f"the target must be etcd://host:port[,...], not {target!r}"},
            context="cluster move-store",
        )
    source_url = _check_source(paths)
    source_path = source_url[len("sqlite://") :]
    source = open_store(source_url)
    try:
        _refuse_unfinished(source)
        check_etcd_target(target_url, action="cluster move-store")
    except BaseException:
        source.close()
        raise
    copied: list[str] = []
    try:
        revision = source.revision
        kvs = copied_keys(source)
        groups = batches(kvs, max_ops=max_ops, max_bytes=max_bytes)
        size = sum(len(kv.key.encode()) + len(kv.value) for kv in kvs)
        _say(progress, f"Copying {len(kvs)} keys ({size} bytes) in {len(groups)} transactions")
        target_store = open_store(target_url)
        try:
            _copy(target_store, groups, copied)
            _say(progress, "Verifying every key and value in etcd")
            _verify(target_store, source, kvs, revision)
        finally:
            target_store.close()
    except (StoreError, OSError) as exc:
        source.close()
        raise _failed(exc, target_url, copied) from exc
    except BaseException:
        source.close()
        _undo(target_url, copied)
        raise
    # NOTE: closed before the switch, so its WAL is checkpointed into the file renamed below.
    source.close()
    try:
        backup = _switch(paths, target_url, source_path)
    except OSError as exc:
        raise _failed(exc, target_url, copied) from exc
    _say(progress, f"cluster.json now names {target_url}; SQLite backup kept as {backup}")
    return MoveResult(
        target=target_url,
        keys=len(kvs),
        bytes=size,
        transactions=len(groups),
        backup=backup,
        seconds=time.monotonic() - started,
    )


def _failed(exc: BaseException, target_url: str, copied: list[str]) -> StoreError:
    """The error of a failed move, after deleting what was copied."""
    warning = _undo(target_url, copied)
    kind = exc.kind if isinstance(exc, CorralError) else ErrorKind.ENVIRONMENT
    what = f"moving the store to {target_url} failed: {exc}; "
    if warning:
        what += warning + "; cluster.json and the SQLite store are unchanged"
    elif not copied:
        what += "nothing was copied; the cluster stays on SQLite, unchanged"
    else:
        what += (
            f"the {len(copied)} key(s) copied were deleted from etcd; the cluster stays on "
            "SQLite, unchanged"
        )
    return StoreError(what, kind=kind, target=target_url, copied=len(copied))

"""The embedded store: SQLite in WAL mode, for single-host clusters.

Layout: ``kv`` holds the current value of each key with its revisions; ``history`` holds one row
per change (the material of :meth:`SqliteStore.watch`), trimmed by :meth:`SqliteStore.compact`;
``meta`` holds the store-wide revision. Every transaction is one SQLite ``BEGIN IMMEDIATE``
transaction, so a crash leaves either all of it or none of it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

from corral.common.errors import ErrorKind, StoreError
from corral.store.base import (
    Compare,
    Delete,
    Event,
    EventType,
    KeyValue,
    Op,
    Put,
    Store,
    TxnResult,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    rev INTEGER NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_rev ON history(rev);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""

#: History rows kept by automatic compaction (changes older than this many revisions go).
HISTORY_KEEP = 50_000


def _prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


class SqliteStore(Store):
    """A :class:`Store` in one SQLite file (thread-safe; one writer at a time)."""

    def __init__(self, path: str) -> None:
        """Open (creating if needed) the store at ``path``.

        Raises:
            StoreError: the file cannot be opened or is not a Corral store.
        """
        self.path = path
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}", path=path) from exc
        self._writes = 0

    # --- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        """See :meth:`Store.get`."""
        with self._lock:
            row = self._query_one(
                "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?", (key,)
            )
        return KeyValue(*row) if row else None

    def range(self, prefix: str) -> list[KeyValue]:
        """See :meth:`Store.range`."""
        with self._lock:
            rows = self._query(
                "SELECT key, value, create_rev, mod_rev, version FROM kv "
                "WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, _prefix_end(prefix)),
            )
        return [KeyValue(*r) for r in rows]

    @property
    def revision(self) -> int:
        """See :meth:`Store.revision`."""
        with self._lock:
            row = self._query_one("SELECT value FROM meta WHERE name = 'revision'", ())
        return int(row[0]) if row else 0

    # --- writes ---------------------------------------------------------------------------

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """See :meth:`Store.txn`.

        Raises:
            StoreError: also kind INVALID for a :class:`Put` with a lease (leases need etcd).
        """
        if any(isinstance(op, Put) and op.lease for op in (*success, *failure)):
            raise StoreError("leases need etcd", kind=ErrorKind.INVALID, path=self.path)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    ok = all(c.holds(self._get_locked(c.key)) for c in compare)
                    ops = success if ok else failure
                    rev = self._current_rev()
                    if ops:
                        rev += 1
                        for op in ops:
                            self._apply(op, rev)
                        self._db.execute(
                            "UPDATE meta SET value = ? WHERE name = 'revision'", (rev,)
                        )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"store write failed: {exc}", path=self.path) from exc
            if ops:
                self._writes += 1
                self._changed.notify_all()
                if self._writes % 1000 == 0:
                    self.compact(HISTORY_KEEP)
            return TxnResult(ok, rev)

    def _apply(self, op: Op, rev: int) -> None:
        if isinstance(op, Put):
            old = self._get_locked(op.key)
            if old is None:
                self._db.execute(
                    "INSERT INTO kv VALUES (?, ?, ?, ?, 1)", (op.key, op.value, rev, rev)
                )
            else:
                self._db.execute(
                    "UPDATE kv SET value = ?, mod_rev = ?, version = version + 1 WHERE key = ?",
                    (op.value, rev, op.key),
                )
            self._db.execute("INSERT INTO history VALUES (?, ?, 'put', ?)", (rev, op.key, op.value))
        elif isinstance(op, Delete):
            if op.prefix:
                keys = [
                    r[0]
                    for r in self._query(
                        "SELECT key FROM kv WHERE key >= ? AND key < ?",
                        (op.key, _prefix_end(op.key)),
                    )
                ]
            else:
                keys = [op.key] if self._get_locked(op.key) else []
            for key in keys:
                self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
                self._db.execute("INSERT INTO history VALUES (?, ?, 'delete', x'')", (rev, key))

    # --- watch ----------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, timeout: float) -> list[Event]:
        """See :meth:`Store.watch`.

        Writers in this process wake waiters at once; writes by another process are noticed
        within 0.2 s.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                compacted = self._query_one("SELECT value FROM meta WHERE name='compacted'", ())
                if compacted and 0 < int(compacted[0]) >= start_revision:
                    raise StoreError(
                        f"revision {start_revision} was compacted",
                        kind=ErrorKind.WRONG_STATE,
                        compacted=int(compacted[0]),
                    )
                rows = self._query(
                    "SELECT type, key, value, rev FROM history "
                    "WHERE rev >= ? AND key >= ? AND key < ? ORDER BY rev, rowid",
                    (start_revision, prefix, _prefix_end(prefix)),
                )
                if rows:
                    return [Event(EventType(t), k, v, r) for t, k, v, r in rows]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._changed.wait(min(remaining, 0.2))

    def compact(self, keep: int) -> None:
        """Drop history older than the last ``keep`` revisions.

        Raises:
            StoreError: the store cannot be written.
        """
        with self._lock:
            upto = self._current_rev() - keep
            if upto <= 0:
                return
            try:
                self._db.execute("DELETE FROM history WHERE rev <= ?", (upto,))
                self._db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (upto,))
            except sqlite3.Error as exc:
                raise StoreError(f"store compaction failed: {exc}", path=self.path) from exc

    def close(self) -> None:
        """See :meth:`Store.close`."""
        with self._lock:
            self._db.close()

    # --- helpers (caller holds the lock) ----------------------------------------------------

    def _get_locked(self, key: str) -> KeyValue | None:
        row = self._query_one(
            "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?", (key,)
        )
        return KeyValue(*row) if row else None

    def _current_rev(self) -> int:
        row = self._query_one("SELECT value FROM meta WHERE name = 'revision'", ())
        return int(row[0]) if row else 0

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}", path=self.path) from exc

    def _query_one(self, sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
        rows = self._query(sql, args)
        return rows[0] if rows else None

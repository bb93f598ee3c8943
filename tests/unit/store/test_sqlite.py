"""SQLite-only behaviour: durability across reopen, open errors, keep-N compaction.

The shared behaviour (revisions, txn, range, watch) is in ``test_store_contract.py``.
"""

from __future__ import annotations

import pytest

from corral.common.errors import StoreError
from corral.store.sqlite import SqliteStore


def test_data_survives_reopen(tmp_path):
    path = str(tmp_path / "db")
    s = SqliteStore(path)
    s.put("/persist", b"yes")
    rev = s.revision
    s.close()
    s2 = SqliteStore(path)
    assert s2.get("/persist").value == b"yes"
    assert s2.revision == rev
    s2.close()


def test_unopenable_path_raises_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        SqliteStore(str(blocker / "sub" / "db"))

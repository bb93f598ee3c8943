"""Fixtures of the master's unit tests: a SQLite store in a temporary directory."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from master_fakes import seed_cluster

from corral.master.config import ClusterConfig
from corral.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path) -> Iterator[SqliteStore]:
    s = SqliteStore(os.path.join(tmp_path, "config.db"))
    yield s
    s.close()


@pytest.fixture
def config(store, tmp_path) -> ClusterConfig:
    seed_cluster(store, file_storage_dir=os.path.join(tmp_path, "disks"))
    return ClusterConfig(store)

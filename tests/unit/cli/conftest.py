"""Fixtures for the CLI tests: the real API app around the in-memory fake master.

FAKE: ``tests/fakes/master_service.py`` stands in for the master (no daemons); the CLI, the
client, the HTTP layer and the API are real and talk over an in-process ASGI transport.
"""

from __future__ import annotations

import pytest

from corral.api.app import create_app
from corral.cli.common import Cli
from corral.client import CorralClient
from corral.common.paths import Paths
from tests.fakes.asgi import SyncASGITransport
from tests.fakes.master_service import FakeMaster


@pytest.fixture
def master() -> FakeMaster:
    return FakeMaster()


@pytest.fixture
def client_factory(master):
    """Builds clients of an app that trusts every request (as the local socket does)."""
    app = create_app(master, users_file=None, local_socket=True)
    transports = []

    def factory(_cli: Cli) -> CorralClient:
        transport = SyncASGITransport(app)
        transports.append(transport)
        return CorralClient(transport=transport)

    yield factory
    for t in transports:
        t.close()


@pytest.fixture
def make_cli(client_factory, tmp_path):
    def make(**kw) -> Cli:
        return Cli(paths=Paths(str(tmp_path)), client_factory=client_factory, **kw)

    return make

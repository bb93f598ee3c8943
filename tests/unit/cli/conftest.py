"""Fixtures for the CLI tests: the real API app around the in-memory fake master.

FAKE: ``tests/fakes/master_service.py`` stands in for the master (no daemons); the CLI, the
client, the HTTP layer and the API are real and talk over an in-process ASGI transport.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from corral.api.app import create_app
from corral.cli import gnt
from corral.cli.common import Cli
from corral.cli.main import app
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


@pytest.fixture
def run(make_cli):
    """``corral [--output OUTPUT] ARGS`` against the fake master (typer's runner)."""
    runner = CliRunner()

    def invoke(*args, output="table"):
        cli = make_cli()
        return runner.invoke(app, ["--output", output, *args], obj=cli)

    return invoke


@pytest.fixture
def gnt_run(client_factory, monkeypatch, capsys, tmp_path):
    """``gnt-* ARGS`` against the fake master: ``(exit code, stdout, stderr)``."""
    monkeypatch.setattr(gnt, "client_factory", client_factory)
    monkeypatch.setenv("CORRAL_ROOT", str(tmp_path))
    monkeypatch.delenv("CORRAL_API_URL", raising=False)

    def invoke(entry, *args):
        code = entry(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke

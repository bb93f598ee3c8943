"""Fixtures for the API tests: the app around the in-memory fake master (see its docstring)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from corral.api.app import create_app
from corral.api.auth import ha1
from tests.fakes.asgi import sync_client
from tests.fakes.master_service import FakeMaster

USERS = f"""# test users
admin secret write
reader readpw read
hashed {{HA1}}{ha1("hashed", "hashpw")} read,write
plain {{cleartext}}plainpw
"""


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ADMIN = basic("admin", "secret")
READER = basic("reader", "readpw")


@pytest.fixture
def master() -> FakeMaster:
    return FakeMaster()


@pytest.fixture
def users_file(tmp_path) -> str:
    path = tmp_path / "users"
    path.write_text(USERS)
    return str(path)


@pytest.fixture
def client(master: FakeMaster, users_file: str) -> Iterator[httpx.Client]:
    """A TCP-like client (not trusted): every write needs credentials."""
    app = create_app(master, users_file=users_file, local_socket=False)
    with sync_client(app) as c:
        yield c

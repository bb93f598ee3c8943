"""RAPI authentication: users file parsing, password schemes, reload, and the HTTP answers.

The app runs around the in-memory fake master (tests/fakes/master_service.py: FAKE); the auth
code, the users file and the HTTP handling are real.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from corral.api.app import create_app
from corral.api.auth import (
    REALM,
    Access,
    Authenticator,
    RapiUser,
    UsersFile,
    ha1,
    is_local_socket,
    parse_basic_auth,
    parse_users,
    verify_password,
)
from corral.api.errors import HttpError
from tests.fakes.asgi import sync_client
from tests.unit.api.conftest import ADMIN, READER, basic

JSON = {"Content-Type": "application/json"}


def test_ha1_matches_rfc2617_with_ganeti_realm():
    expected = hashlib.md5(b"jack:Ganeti Remote API:abc123").hexdigest()
    assert ha1("jack", "abc123") == expected
    assert REALM == "Ganeti Remote API"


def test_parse_users_rights_and_comments(caplog):
    users = parse_users(
        "# comment\n\njack abc write\njill {cleartext}x read\nbob pw\nbroken\n"
        "multi pw read, write ,bogus\n"
    )
    assert set(users) == {"jack", "jill", "bob", "multi"}
    assert users["jack"].rights == {"read", "write"}  # write implies read
    assert users["jill"].rights == {"read"} and not users["jill"].can_write
    assert users["bob"].rights == frozenset()
    assert users["multi"].can_write
    assert "skipped" in caplog.text


@pytest.mark.parametrize(
    ("stored", "given", "ok"),
    [
        ("abc", "abc", True),
        ("abc", "abd", False),
        ("{cleartext}abc", "abc", True),
        ("{CLEARTEXT}abc", "abc", True),
        ("{HA1}" + ha1("u", "pw"), "pw", True),
        ("{ha1}" + ha1("u", "pw").upper(), "pw", True),
        ("{HA1}" + ha1("u", "pw"), "nope", False),
        ("{SHA}whatever", "whatever", False),
        ("{}abc", "abc", False),
    ],
)
def test_verify_password(stored, given, ok):
    assert verify_password(RapiUser("u", stored, frozenset()), given) is ok


def test_parse_basic_auth():
    assert parse_basic_auth(basic("a", "b:c")["Authorization"]) == ("a", "b:c")
    assert parse_basic_auth("Bearer xyz") is None
    assert parse_basic_auth("Basic !!!") is None
    assert parse_basic_auth(None) is None


def test_local_socket_detection():
    assert is_local_socket({"server": ("/run/corral/master.sock", None), "client": None})
    assert not is_local_socket({"server": ("127.0.0.1", 5080), "client": ("127.0.0.1", 5555)})
    assert not is_local_socket({"server": ("/x", None), "client": ("127.0.0.1", 1)})


def test_users_file_reloads_on_change(tmp_path):
    path = tmp_path / "users"
    path.write_text("a pw1 write\n")
    users = UsersFile(str(path))
    assert users.get("a").password == "pw1"
    path.write_text("a pw22 read\nb x\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert users.get("a").password == "pw22"
    assert users.get("b") is not None
    path.unlink()
    assert users.get("a") is None  # a removed file means no users
    assert UsersFile(None).get("a") is None


def test_explicit_reload(tmp_path):
    path = tmp_path / "users"
    path.write_text("a pw1 write\n")
    auth = Authenticator(UsersFile(str(path)))
    st = os.stat(path)
    path.write_text("a pw2 write\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime and size: not noticed
    assert auth.users._users["a"].password == "pw1"
    auth.reload()
    assert auth.users._users["a"].password == "pw2"


def test_authenticator_rules(tmp_path):
    path = tmp_path / "users"
    path.write_text("w pw write\nr pw read\nn pw\n")
    auth = Authenticator(UsersFile(str(path)))
    tcp = {"server": ("127.0.0.1", 5080), "client": ("127.0.0.1", 1234)}
    uds = {"server": ("/sock", None), "client": None}
    auth.check(tcp, None, Access.NONE)
    auth.check(uds, None, Access.WRITE)  # the socket is trusted
    auth.check(tcp, basic("w", "pw")["Authorization"], Access.WRITE)
    auth.check(tcp, basic("n", "pw")["Authorization"], Access.READ)
    with pytest.raises(HttpError) as e:
        auth.check(tcp, basic("r", "pw")["Authorization"], Access.WRITE)
    assert e.value.status == 403
    with pytest.raises(HttpError) as e:
        auth.check(tcp, basic("w", "bad")["Authorization"], Access.WRITE)
    assert e.value.status == 401
    assert e.value.headers["WWW-Authenticate"] == 'Basic realm="Ganeti Remote API"'
    never = Authenticator(UsersFile(str(path)), local_socket=False)
    with pytest.raises(HttpError):
        never.check(uds, None, Access.WRITE)
    always = Authenticator(UsersFile(str(path)), local_socket=True)
    always.check(tcp, None, Access.WRITE)


def test_http_401_403_and_ha1_user(client, master):
    master.add_instance("vm1")
    resp = client.put("/2/instances/vm1/startup")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Basic realm="Ganeti Remote API"'
    assert resp.json()["code"] == 401
    assert client.put("/2/instances/vm1/startup", headers=basic("admin", "x")).status_code == 401
    assert client.put("/2/instances/vm1/startup", headers=READER).status_code == 403
    assert client.put("/2/instances/vm1/startup", headers=ADMIN).status_code == 200
    assert (
        client.put("/2/instances/vm1/shutdown", headers=basic("hashed", "hashpw")).status_code
        == 200
    )
    # a user without rights may not write
    resp = client.put("/2/instances/vm1/startup", headers=basic("plain", "plainpw"))
    assert resp.status_code == 403


def test_require_auth_for_reads(master, users_file):
    app = create_app(master, users_file=users_file, require_auth_for_reads=True,
                     local_socket=False)  # fmt: skip
    with sync_client(app) as c:
        assert c.get("/2/instances").status_code == 401
        assert c.get("/2/instances", headers=READER).status_code == 200
        assert c.get("/2/instances", headers=basic("plain", "plainpw")).status_code == 200
        assert c.get("/version", headers=basic("reader", "wrong")).status_code == 401


def test_missing_users_file_refuses_writes(master, tmp_path):
    app = create_app(master, users_file=str(tmp_path / "none"), local_socket=False)
    with sync_client(app) as c:
        body = json.dumps({"fields": ["status"]})
        assert c.request("GET", "/2/jobs/1/wait", content=body, headers={**JSON, **ADMIN}
                         ).status_code == 401  # fmt: skip
        assert c.get("/version").json() == 2

"""RAPI authentication: Ganeti's users file, HTTP Basic auth and the trusted local socket.

Users file (Ganeti format, ``paths.rapi_users``)::

    # user   password                                 rights
    jack     abc123                                   write
    jill     {cleartext}abc123                        read
    api      {HA1}7046452df2cbb530877058712cf17bd4    read,write

A password is clear text (optionally prefixed ``{cleartext}``) or ``{HA1}`` followed by the
hex MD5 of ``"user:Ganeti Remote API:password"`` (RFC 2617 H(A1) with Ganeti's realm). Rights
are comma separated; ``write`` implies ``read``. Unknown rights are ignored, malformed lines
are skipped with a warning. The file is re-read when its mtime/size/inode changes (checked on
every authenticated request, so no inotify is needed) and on SIGHUP (see
:meth:`Authenticator.reload` and ``create_app``).

Access levels, as Ganeti's RAPI:

* ``NONE``: ``GET`` of public resources; no credentials needed unless the server was told to
  require authentication for reads (Ganeti ``--require-authentication``).
* ``READ``: same resources when authentication is required for reads: any valid user.
* ``WRITE``: every ``PUT``/``POST``/``DELETE`` and a few sensitive ``GET`` s
  (``/2/jobs/[id]/wait``, ``/2/instances/[i]/console``, ``/2/query/...``).

Missing or wrong credentials give ``401`` with ``WWW-Authenticate: Basic realm="Ganeti Remote
API"``; a valid user without the right gives ``403``.

The local UNIX socket is trusted. The socket file is root-only (mode 0600), so reaching it *is*
the authentication, as with Ganeti's luxi socket. How a request's transport is known: uvicorn
serving a UNIX socket puts ``scope["server"] = (socket_path, None)`` and ``scope["client"] =
None``; over TCP both are ``(host, port)`` pairs built from the real socket, which a client
cannot forge. ``create_app(..., local_socket=None)`` (the default) decides per request from
that; ``local_socket=True`` makes an app instance that trusts every request (for an app served
*only* on the socket) and ``local_socket=False`` one that never does (TCP only).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from corral.api.errors import HttpError

log = logging.getLogger(__name__)

#: Ganeti's authentication realm; part of the ``{HA1}`` hash, so it must not change.
REALM = "Ganeti Remote API"

RIGHT_READ = "read"
RIGHT_WRITE = "write"


class Access(enum.Enum):
    """What a request needs."""

    NONE = "none"
    READ = "read"
    WRITE = "write"


@dataclasses.dataclass(frozen=True, slots=True)
class RapiUser:
    """One line of the users file."""

    name: str
    password: str  # as written in the file, with its optional {scheme}
    rights: frozenset[str]

    @property
    def can_write(self) -> bool:
        """Whether the user may change things."""
        return RIGHT_WRITE in self.rights


def ha1(user: str, password: str, realm: str = REALM) -> str:
    """The ``{HA1}`` hash (without prefix) of a user's password."""
    digest = f"{user}:{realm}:{password}".encode()
    return hashlib.md5(digest, usedforsecurity=False).hexdigest()


def parse_users(text: str) -> dict[str, RapiUser]:
    """Parse a users file.

    Lines are ``user password [rights]``; empty lines and ``#`` comments are skipped, lines
    with fewer than two fields are skipped with a warning (as Ganeti does). A later line for
    the same user replaces an earlier one.

    Never raises on content; the caller handles read errors.
    """
    users: dict[str, RapiUser] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            log.warning("users file line %d: expected 'user password [rights]', skipped", lineno)
            continue
        rights: set[str] = set()
        if len(parts) == 3:
            for option in parts[2].split(","):
                option = option.strip().lower()
                if option:
                    rights.add(option)
        if RIGHT_WRITE in rights:
            rights.add(RIGHT_READ)
        users[parts[0]] = RapiUser(parts[0], parts[1], frozenset(rights))
    return users


def verify_password(user: RapiUser, password: str) -> bool:
    """Whether ``password`` matches the user's entry (clear text or ``{HA1}``).

    An unknown ``{scheme}`` never matches (logged). Comparison is constant-time.
    """
    expected = user.password
    if not expected.startswith("{"):
        expected = "{cleartext}" + expected
    end = expected.find("}", 1)
    if end <= 1:
        log.warning("invalid password scheme for RAPI user %r", user.name)
        return False
    scheme = expected[: end + 1].upper()
    secret = expected[end + 1 :]
    if scheme == "{CLEARTEXT}":
        return hmac.compare_digest(secret.encode(), password.encode())
    if scheme == "{HA1}":
        return hmac.compare_digest(secret.lower().encode(), ha1(user.name, password).encode())
    log.warning("unknown password scheme %s for RAPI user %r", scheme, user.name)
    return False


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """Return ``(user, password)`` from an ``Authorization: Basic ...`` header, or None."""
    if not header:
        return None
    parts = header.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(parts[1].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if ":" not in decoded:
        return None
    user, password = decoded.split(":", 1)
    return user, password


def is_local_socket(scope: Mapping[str, Any]) -> bool:
    """Whether an ASGI request came over a UNIX socket (see the module docstring)."""
    server = scope.get("server")
    return (
        scope.get("client") is None
        and isinstance(server, tuple | list)
        and len(server) == 2
        and server[1] is None
    )


class UsersFile:
    """The users file, re-read when it changes on disk or on :meth:`reload`.

    Args:
        path: the users file; ``None`` means no users (every authenticated request fails).
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, RapiUser] = {}
        self.reload()

    def reload(self) -> None:
        """Read the file now (SIGHUP). A missing or unreadable file means no users (logged)."""
        with self._lock:
            self._load()

    def _load(self) -> None:
        if self.path is None:
            self._users = {}
            return
        try:
            st = os.stat(self.path)
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            log.warning("no RAPI users file at %s: authenticated requests will fail", self.path)
            self._users, self._stamp = {}, None
            return
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read RAPI users file %s: %s", self.path, exc)
            self._users, self._stamp = {}, None
            return
        self._users = parse_users(text)
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        log.info("loaded %d RAPI user(s) from %s", len(self._users), self.path)

    def _changed(self) -> bool:
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return self._stamp is not None
        return (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp

    def get(self, name: str) -> RapiUser | None:
        """The user called ``name`` (re-reading the file first if it changed)."""
        with self._lock:
            if self._changed():
                self._load()
            return self._users.get(name)


class Authenticator:
    """Decides whether a request may proceed.

    Args:
        users: the users file.
        require_auth_for_reads: make plain ``GET`` s need a valid user too.
        local_socket: ``None`` = trust requests that came over a UNIX socket (detected per
            request); ``True`` = trust every request; ``False`` = trust none.
    """

    def __init__(
        self,
        users: UsersFile,
        *,
        require_auth_for_reads: bool = False,
        local_socket: bool | None = None,
    ) -> None:
        self.users = users
        self.require_auth_for_reads = require_auth_for_reads
        self.local_socket = local_socket

    def reload(self) -> None:
        """Re-read the users file (SIGHUP)."""
        self.users.reload()

    def trusted(self, scope: Mapping[str, Any]) -> bool:
        """Whether the request's transport is the trusted local socket."""
        if self.local_socket is not None:
            return self.local_socket
        return is_local_socket(scope)

    def check(self, scope: Mapping[str, Any], authorization: str | None, access: Access) -> None:
        """Let the request through or raise.

        Raises:
            HttpError: 401 (no or wrong credentials, with ``WWW-Authenticate``), 403 (the
                user lacks the ``write`` right).
        """
        if self.trusted(scope):
            return
        if access is Access.NONE and not self.require_auth_for_reads:
            return
        creds = parse_basic_auth(authorization)
        user = self.users.get(creds[0]) if creds else None
        if creds is None or user is None or not verify_password(user, creds[1]):
            raise HttpError(
                401,
                "authentication required: send HTTP Basic credentials of a RAPI user",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
            )
        if access is Access.WRITE and not user.can_write:
            raise HttpError(403, f"user {user.name!r} does not have the 'write' right")

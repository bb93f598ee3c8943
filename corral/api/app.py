"""The API application: Ganeti RAPI v2 under ``/2/...`` served by FastAPI.

``corral-master`` serves the app returned by :func:`create_app` on HTTPS (the RAPI port) and on
the root-only UNIX socket ``paths.master_socket``. Requests over the socket are trusted (see
``corral/api/auth.py`` for how the transport is recognised); requests over TCP are
authenticated from the Ganeti-format users file.

Every error answer carries Ganeti's body ``{"code", "message", "explain"}`` (plus Corral's
``kind``; see ``corral/api/errors.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from fastapi import FastAPI

from corral.api.auth import Authenticator, UsersFile
from corral.api.errors import install_handlers
from corral.api.protocol import MasterServiceApi
from corral.api.rapi2 import cluster, instances, jobs, mobility, nodes, query

log = logging.getLogger(__name__)


def create_app(
    service: MasterServiceApi,
    *,
    users_file: str | None,
    require_auth_for_reads: bool = False,
    local_socket: bool | None = None,
    reload_on_sighup: bool = True,
) -> FastAPI:
    """Build the API application around the master service.

    Args:
        service: the master service (``corral.master.service.MasterService``).
        users_file: the RAPI users file (Ganeti format); ``None`` = no users, so only the
            trusted local socket can make authenticated requests.
        require_auth_for_reads: also require a valid user for plain ``GET`` s (Ganeti's
            ``--require-authentication``).
        local_socket: ``None`` (default): trust requests that arrive over a UNIX socket and
            authenticate the others; ``True``: trust every request (an app served only on the
            socket); ``False``: authenticate every request.
        reload_on_sighup: re-read the users file on SIGHUP. Installed when the app starts in
            the main thread's event loop; elsewhere (tests) silently skipped. The file is
            also re-read whenever it changes on disk.

    Never raises for a missing users file (logged; authenticated requests then fail with 401).
    """
    authenticator = Authenticator(
        UsersFile(users_file),
        require_auth_for_reads=require_auth_for_reads,
        local_socket=local_socket,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        installed = False
        if reload_on_sighup:
            installed = _install_sighup(authenticator)
        try:
            yield
        finally:
            if installed:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    app = FastAPI(
        title="Corral API",
        description="Ganeti RAPI v2 compatible API of the Corral master",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.authenticator = authenticator
    install_handlers(app)
    for module in (cluster, instances, jobs, mobility, nodes, query):
        app.include_router(module.router)
    return app


def _install_sighup(authenticator: Authenticator) -> bool:
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, authenticator.reload)
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        log.debug("not reloading RAPI users on SIGHUP here: %s", exc)
        return False
    return True

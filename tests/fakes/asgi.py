"""A synchronous httpx transport that runs an ASGI app in a private event loop thread.

Starlette's ``TestClient`` warns (an error under ``filterwarnings = error``) with the httpx
installed here, so tests drive the app with a plain ``httpx.Client`` over this transport. It
does not run the app's lifespan (Corral's only installs a SIGHUP handler).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx


class SyncASGITransport(httpx.BaseTransport):
    """Send each request to ``app`` through ``httpx.ASGITransport`` on a background loop."""

    def __init__(self, app: Any, *, client: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self._inner = httpx.ASGITransport(app=app, client=client)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        copy = httpx.Request(request.method, request.url, headers=request.headers, content=body)

        async def send() -> httpx.Response:
            resp = await self._inner.handle_async_request(copy)
            content = await resp.aread()
            return httpx.Response(resp.status_code, headers=resp.headers, content=content)

        return asyncio.run_coroutine_threadsafe(send(), self._loop).result(timeout=60)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def sync_client(app: Any, base_url: str = "http://testserver") -> httpx.Client:
    """An ``httpx.Client`` talking to ``app`` in-process."""
    return httpx.Client(transport=SyncASGITransport(app), base_url=base_url)

"""FakeQmpServer: a FAKE QMP server on a real UNIX socket, for monitor tests.

It stands in for QEMU's monitor (Ganeti's ``FakeQmpSocket``, qemu's ``NullProtocol``) so the
client side — qemu.qmp's QMPClient wrapped by corral.hypervisor.kvm.monitor — is exercised over
a real socket, including the failure modes a real QEMU rarely shows on demand: a server that
never greets, one that stops answering, one that hangs up instead of replying. Real-QEMU
coverage is in tests/integration/test_kvm_driver.py.

Modes:
    ``normal``   greeting, capability negotiation, then replies from ``replies``;
    ``silent``   accepts the connection and never sends a byte;
    ``mute``     greets and negotiates, then never answers a command;
    ``hangup``   like normal, but closes the connection instead of answering ``quit``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

GREETING = {
    "QMP": {
        "version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"},
        "capabilities": ["oob"],
    }
}

Reply = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


class FakeQmpServer:
    """A threaded QMP lookalike listening on ``path``; a context manager."""

    def __init__(self, path: str, *, mode: str = "normal", replies: dict[str, Reply] | None = None):
        self.path = path
        self.mode = mode
        self.replies: dict[str, Reply] = {"quit": {"return": {}}, **(replies or {})}
        self.received: list[dict[str, Any]] = []
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()

    def __enter__(self) -> FakeQmpServer:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(4)
        self._sock.settimeout(0.1)
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for t in self._threads:
            t.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    @property
    def commands(self) -> list[str]:
        return [m.get("execute", "") for m in self.received]

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _send(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        conn.sendall(json.dumps(msg).encode() + b"\r\n")

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.mode == "silent":
                self._stop.wait()
                return
            self._send(conn, GREETING)
            # NOTE: QMP is a stream of JSON objects, not lines: qemu.qmp sends no newline.
            decoder = json.JSONDecoder()
            buf = ""
            while not self._stop.is_set():
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk.decode()
                while True:
                    buf = buf.lstrip()
                    try:
                        msg, end = decoder.raw_decode(buf)
                    except json.JSONDecodeError:
                        break
                    buf = buf[end:]
                    if not self._handle(conn, msg):
                        return
        except OSError:
            return
        finally:
            conn.close()

    def _handle(self, conn: socket.socket, msg: dict[str, Any]) -> bool:
        """Answer one message; False ends the connection."""
        command = msg.get("execute", "")
        if command == "qmp_capabilities":
            self._send(conn, {"return": {}, "id": msg.get("id")})
            return True
        self.received.append(msg)
        if self.mode == "mute":
            return True
        if command == "quit" and self.mode == "hangup":
            return False
        reply = self.replies.get(command)
        if reply is None:
            reply = {
                "error": {
                    "class": "CommandNotFound",
                    "desc": f"The command {command} has not been found",
                }
            }
        elif callable(reply):
            reply = reply(msg)
        self._send(conn, {**reply, "id": msg.get("id")})
        return command != "quit"

#!/usr/bin/python3
"""TEST-ONLY command agent of the Xen appliance's dom0 (not a product interface).

Usage: ``test-agent.py DEVICE`` (a virtio-serial port, e.g. ``/dev/vport1p1``).

Protocol: JSON lines both ways. A request ``{"id": N, "argv": [...], "timeout": S,
"input": "text or null"}`` runs ``argv`` (no shell) in a thread; the reply is ``{"id": N,
"rc": RC, "stdout": "...", "stderr": "...", "error": null}``. ``rc`` is -1 with ``error`` set
when the command cannot start or ran past its timeout (its process group is killed then).
``{"id": N, "op": "ping"}`` answers ``{"id": N, "rc": 0, "stdout": "pong", ...}``. Output is
decoded as UTF-8 with replacement characters. Requests run concurrently; replies come in the
order the commands finish. Only the standard library is used (Debian's python3).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

_write_lock = threading.Lock()


def _reply(fd: int, msg: dict[str, Any]) -> None:
    data = (json.dumps(msg) + "\n").encode()
    with _write_lock:
        while data:
            n = os.write(fd, data)
            data = data[n:]


def _run(fd: int, req: dict[str, Any]) -> None:
    rid = req.get("id")
    base: dict[str, Any] = {"id": rid, "rc": -1, "stdout": "", "stderr": "", "error": None}
    if req.get("op") == "ping":
        base.update(rc=0, stdout="pong")
        _reply(fd, base)
        return
    argv = req.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        base["error"] = "argv must be a non-empty list of strings"
        _reply(fd, base)
        return
    timeout = float(req.get("timeout") or 120)
    data = req.get("input")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        base["error"] = f"cannot start {argv[0]}: {exc}"
        _reply(fd, base)
        return
    try:
        out, err = proc.communicate(data.encode() if data is not None else None, timeout=timeout)
        base["rc"] = proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = proc.communicate()
        base["error"] = f"timed out after {timeout} s"
    base["stdout"] = out.decode("utf-8", "replace")
    base["stderr"] = err.decode("utf-8", "replace")
    _reply(fd, base)


def main() -> int:
    """Serve requests on the port given as the only argument; never returns normally."""
    if len(sys.argv) != 2:
        sys.stderr.write("usage: test-agent.py DEVICE\n")
        return 2
    fd = os.open(sys.argv[1], os.O_RDWR)
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:  # host side not connected: poll
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                _reply(fd, {"id": None, "rc": -1, "stdout": "", "stderr": "", "error": "bad JSON"})
                continue
            threading.Thread(target=_run, args=(fd, req), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())

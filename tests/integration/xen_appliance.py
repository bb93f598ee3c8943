"""The Xen test appliance: a real Xen 4.17 + Debian dom0 running corral-noded, under QEMU TCG.

``make xen-appliance`` builds the image once into ``.cache/xen-appliance/``
(``scripts/xen-appliance/build.sh``; override the directory with ``CORRAL_XEN_APPLIANCE_DIR``).
The session fixture :func:`xen_appliance` boots it once per test session:

* a host-side cluster root (tmp) with a CA, a certificate for the master side (the RPC
  client) and one for the node ``xen1`` (address 127.0.0.1);
* a qcow2 overlay over ``rootfs.img`` (the base image is never written) and a config disk
  (a tar archive on a raw image: params, the node's TLS files, the checkout's current
  ``corral/`` tree, ``dom0-init`` and the test agent; so code changes need no rebuild);
* QEMU ``-accel tcg -cpu max,-smap,-smep,-rdtscp`` (without -smap/-smep dom0 crashes) with
  Xen as the multiboot kernel, user networking ``restrict=on`` with a single hostfwd
  127.0.0.1:<free port> -> dom0:1811 (corral-noded), the serial console to a log file;
* a TEST-ONLY command channel (``sh``): JSON lines over a virtio-serial port to
  ``scripts/xen-appliance/test-agent.py`` in dom0 — for raw ``xl`` calls, reading guest
  consoles, benchmarks; it is not a product interface.

Only one appliance runs on the machine at a time: the fixture holds ``flock`` on
:data:`LOCK_FILE` (other engineers' sessions wait). Teardown kills QEMU (by pid, waited for),
removes the overlay and keeps the serial log (its path is printed when a test failed).
Boot takes 45-70 s on a quiet machine; give tests using the fixture a generous
``@pytest.mark.timeout`` (pytest-timeout counts fixture setup): see test_xen_appliance.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.common.paths import Paths
from corral.common.runcmd import CmdResult
from corral.rpc import tls
from corral.rpc.calls import VERSION, Call, Empty
from corral.rpc.client import NodeAddress, RpcClient
from tests.conftest import require_tool, unavailable

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "xen-appliance"
APPLIANCE_DIR = Path(
    os.environ.get("CORRAL_XEN_APPLIANCE_DIR") or REPO / ".cache" / "xen-appliance"
)
#: Machine-wide lock: one Xen appliance at a time (2 shared cores).
LOCK_FILE = "/tmp/corral-xen-appliance.lock"
NODE_NAME = "xen1"
NODED_PORT = 1811
#: Seconds to wait for dom0's ready marker, and for the lock.
BOOT_TIMEOUT = float(os.environ.get("CORRAL_XEN_BOOT_TIMEOUT", "600"))
LOCK_TIMEOUT = float(os.environ.get("CORRAL_XEN_LOCK_TIMEOUT", "3600"))
READY = "CORRAL-XEN-READY"
FAILED = "CORRAL-XEN-FAILED"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApplianceMissing(RuntimeError):
    """The appliance image is not built (``make xen-appliance``)."""


class XenAppliance:
    """One booted appliance (see the module docstring). Use :func:`xen_appliance`."""

    def __init__(self, workdir: Path, image_dir: Path = APPLIANCE_DIR) -> None:
        self.workdir = workdir
        self.image_dir = image_dir
        self.paths = Paths(str(workdir / "master"))
        self.node_paths = Paths(str(workdir / "node"))
        self.port = _free_port()
        self.node = NodeAddress(name=NODE_NAME, host="127.0.0.1", port=self.port)
        self.serial_log = str(workdir / "serial.log")
        self.qemu_log = str(workdir / "qemu.log")
        self.overlay = str(workdir / "dom0.qcow2")
        self.config_img = str(workdir / "config.img")
        self.agent_sock = str(workdir / "agent.sock")
        #: Seconds from QEMU start to the ready marker / to the first answered RPC.
        self.boot_seconds: float | None = None
        self.rpc_seconds: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._pending: dict[int, concurrent.futures.Future[dict[str, Any]]] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._client: RpcClient | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, reaper: Path | None = None) -> None:
        """Boot the appliance; returns once dom0's node daemon answers ``version``.

        Raises:
            ApplianceMissing: the image is not built.
            RuntimeError: QEMU exited, dom0 reported a failure or did not get ready in time
                (the message carries the serial log's tail and path).
        """
        for f in ("boot/xen", "boot/vmlinuz", "boot/initrd.img", "rootfs.img"):
            if not (self.image_dir / f).is_file():
                raise ApplianceMissing(
                    f"no Xen appliance in {self.image_dir} (run make xen-appliance)"
                )
        self._acquire_lock()
        self._make_certs()
        self._make_disks()
        self._start_rpc_loop()
        t0 = time.monotonic()
        self._start_qemu(reaper)
        self._connect_agent()
        self._wait_ready(t0)
        self.boot_seconds = time.monotonic() - t0
        self._wait_rpc(t0)
        self.rpc_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Kill QEMU, remove the overlay, release the lock; never raises."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._loop is not None:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=10)
            self._loop.close()
            self._loop = None
        for f in (self.overlay, self.config_img, self.agent_sock):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _acquire_lock(self) -> None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(
                        f"another Xen appliance holds {LOCK_FILE} for over {LOCK_TIMEOUT} s"
                    ) from None
                time.sleep(2)
        self._lock_fd = fd

    def _make_certs(self) -> None:
        tls.create_ca(self.paths, "xen-appliance")
        tls.issue_node_cert(self.paths, "master", ["127.0.0.1"])
        tls.issue_node_cert(self.node_paths, NODE_NAME, ["127.0.0.1"], ca=self.paths)

    def _make_disks(self) -> None:
        subprocess.run(
            [
                "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                "-b", str(self.image_dir / "rootfs.img"), self.overlay,
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        params = f"NODE_NAME={NODE_NAME}\nNODED_PORT={NODED_PORT}\n"
        with tarfile.open(self.config_img, "w") as tar:
            _add_bytes(tar, "params.env", params.encode(), 0o644)
            _add_file(tar, "dom0-init", SCRIPTS / "dom0-init", 0o755)
            _add_file(tar, "test-agent.py", SCRIPTS / "test-agent.py", 0o755)
            for src in (self.node_paths.ca_cert, self.node_paths.node_cert):
                _add_file(tar, f"crypto/{os.path.basename(src)}", Path(src), 0o644)
            _add_file(tar, "crypto/node.key", Path(self.node_paths.node_key), 0o600)
            tar.add(
                str(REPO / "corral"),
                arcname="src/corral",
                filter=lambda ti: None if "__pycache__" in ti.name else ti,
            )
        size = os.path.getsize(self.config_img)
        with open(self.config_img, "ab") as fh:  # whole sectors, plus room for the reader
            fh.truncate(size + (-size % 512) + 1024 * 1024)

    def _start_qemu(self, reaper: Path | None) -> None:
        boot = self.image_dir / "boot"
        argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max,-smap,-smep,-rdtscp",
            "-machine", "pc", "-m", "2048", "-smp", "2",
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{self.serial_log}",
            "-kernel", str(boot / "xen"),
            "-append", "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M dom0_max_vcpus=2",
            "-initrd",
            f"{boot / 'vmlinuz'} root=/dev/vda rw console=hvc0 init=/sbin/corral-boot,"
            f"{boot / 'initrd.img'}",
            "-drive", f"file={self.overlay},if=virtio,format=qcow2,cache=unsafe",
            "-drive", f"file={self.config_img},if=virtio,format=raw,readonly=on",
            "-netdev",
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:{NODED_PORT}",
            "-device", "e1000,netdev=n0",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={self.agent_sock},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=corral.test",
        ]  # fmt: skip
        with open(self.qemu_log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if reaper is not None:
            with open(reaper, "a", encoding="utf-8") as fh:
                fh.write(f"{self.proc.pid}\n")

    def _connect_agent(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.agent_sock)
                break
            except OSError:
                s.close()
                self._check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(self._why("QEMU's agent socket did not appear")) from None
                time.sleep(0.2)
        self._sock = s
        self._reader = threading.Thread(target=self._read_replies, daemon=True)
        self._reader.start()

    def _read_replies(self) -> None:
        assert self._sock is not None
        buf = b""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                with self._pending_lock:
                    fut = self._pending.pop(msg.get("id"), None)
                if fut is not None:
                    fut.set_result(msg)
        with self._pending_lock:
            for fut in self._pending.values():
                fut.set_exception(ConnectionError("test channel closed"))
            self._pending.clear()

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(self._why(f"QEMU exited with {self.proc.returncode}"))

    def _why(self, what: str) -> str:
        tail = "\n".join(self.console().splitlines()[-40:])
        qemu = (
            Path(self.qemu_log).read_text(errors="replace") if Path(self.qemu_log).exists() else ""
        )
        return f"{what}; serial log {self.serial_log}:\n{tail}\nqemu: {qemu[-2000:]}"

    def _wait_ready(self, t0: float) -> None:
        while True:
            text = self.console()
            if READY in text:
                return
            if FAILED in text:
                raise RuntimeError(self._why("dom0 init failed"))
            self._check_alive()
            if time.monotonic() - t0 > BOOT_TIMEOUT:
                raise RuntimeError(self._why(f"dom0 not ready after {BOOT_TIMEOUT} s"))
            time.sleep(1)

    def _wait_rpc(self, t0: float) -> None:
        last: Exception | None = None
        while time.monotonic() - t0 < BOOT_TIMEOUT + 120:
            try:
                self.call(VERSION, Empty(), timeout=30)
                return
            except Exception as exc:  # RpcError until the daemon serves
                last = exc
                self._check_alive()
                time.sleep(2)
        raise RuntimeError(self._why(f"corral-noded does not answer version: {last}"))

    # --- RPC ---------------------------------------------------------------------------------
    def _start_rpc_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
        self._loop_thread.start()

        async def make() -> RpcClient:
            return RpcClient.from_paths(self.paths)

        self._client = asyncio.run_coroutine_threadsafe(make(), loop).result(30)

    def call(self, call: Call[Any, Any], request: Any, *, timeout: float | None = None) -> Any:
        """Run a node RPC on dom0's corral-noded (mutual TLS); returns its response.

        Safe to use from several threads. Raises what ``RpcClient.call`` raises (the node's
        CorralError or RpcError).
        """
        assert self._loop is not None and self._client is not None, "appliance not started"
        fut = asyncio.run_coroutine_threadsafe(
            self._client.call(self.node, call, request, timeout=timeout), self._loop
        )
        wait = (timeout or call.timeout) + 30
        return fut.result(wait)

    # --- test channel ------------------------------------------------------------------------
    def sh(
        self, *argv: str, timeout: float = 120, input: str | None = None, check: bool = False
    ) -> CmdResult:
        """Run ``argv`` in dom0 through the TEST-ONLY channel (no shell; use ``sh -c``).

        dom0's PATH has /usr/lib/xen-4.17/bin first. A command that cannot start or runs
        past ``timeout`` gives rc -1 with the reason in stderr.

        Raises:
            AssertionError: ``check`` is true and the command failed (message has its output).
            TimeoutError / ConnectionError: the channel did not answer.
        """
        assert self._sock is not None, "appliance not started"
        rid = next(self._ids)
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        with self._pending_lock:
            self._pending[rid] = fut
        req = {"id": rid, "argv": list(argv), "timeout": timeout, "input": input}
        with self._send_lock:
            self._sock.sendall((json.dumps(req) + "\n").encode())
        msg = fut.result(timeout + 30)
        stderr = msg.get("stderr", "")
        if msg.get("error"):
            stderr = f"{stderr}\ntest agent: {msg['error']}".lstrip()
        res = CmdResult(
            argv=tuple(argv), rc=int(msg.get("rc", -1)), stdout=msg.get("stdout", ""), stderr=stderr
        )
        if check and not res.ok:
            raise AssertionError(f"{' '.join(argv)} failed (rc {res.rc}): {res.stdout}{res.stderr}")
        return res

    def read_file(self, path: str) -> str:
        """Text of a file in dom0.

        Raises:
            FileNotFoundError: cat failed (no such file, unreadable).
        """
        res = self.sh("cat", path, timeout=60)
        if not res.ok:
            raise FileNotFoundError(f"{path} in dom0: {res.stderr.strip()}")
        return res.stdout

    def guest_console(self, name: str) -> str:
        """The console log of Xen guest ``name`` (xenconsoled), "" if there is none yet."""
        res = self.sh("cat", f"/var/log/xen/console/guest-{name}.log", timeout=60)
        return res.stdout if res.ok else ""

    def wait_guest_console(self, name: str, text: str, timeout: float = 180) -> str:
        """Poll guest ``name``'s console log until it contains ``text``; returns the log.

        Raises:
            AssertionError: ``text`` did not appear in time (message has the log's tail).
        """
        deadline = time.monotonic() + timeout
        log = ""
        while time.monotonic() < deadline:
            log = self.guest_console(name)
            if text in log:
                return log
            time.sleep(1)
        raise AssertionError(f"{text!r} not in guest-{name}.log after {timeout} s:\n{log[-3000:]}")

    def wait_domain_gone(self, name: str, timeout: float = 120) -> float:
        """Poll ``xl domid NAME`` until the domain is gone; returns the seconds waited.

        Raises:
            AssertionError: still there after ``timeout``.
        """
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self.sh("xl", "domid", name, timeout=60).ok:
                return time.monotonic() - t0
            time.sleep(0.5)
        raise AssertionError(f"domain {name} still exists after {timeout} s")

    def console(self) -> str:
        """The serial log so far (Xen + dom0 console)."""
        try:
            return Path(self.serial_log).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def noded_log(self) -> str:
        """dom0's corral-noded log ("" when unreadable)."""
        res = self.sh("cat", "/var/log/corral/noded.log", timeout=60)
        return res.stdout if res.ok else ""


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: Path, mode: int) -> None:
    _add_bytes(tar, name, path.read_bytes(), mode)


@pytest.fixture(scope="session")
def xen_appliance(
    tmp_path_factory: pytest.TempPathFactory, guest_reaper: Path, request: pytest.FixtureRequest
) -> Iterator[XenAppliance]:
    """The booted Xen appliance, shared by the whole session (see the module docstring)."""
    require_tool("qemu-system-x86_64", "qemu-img")
    workdir = tmp_path_factory.mktemp("xen-appliance")
    app = XenAppliance(workdir)
    try:
        try:
            app.start(guest_reaper)
        except ApplianceMissing as exc:
            unavailable(str(exc))
        print(
            f"\nxen appliance: ready after {app.boot_seconds:.0f} s,"
            f" rpc after {app.rpc_seconds:.0f} s"
        )
        yield app
    finally:
        failed = request.session.testsfailed
        if failed:
            print(f"\nxen appliance: {failed} test(s) failed; serial log kept in {app.serial_log}")
        app.stop()

"""The owner of one guest's QEMU process: launch, find again, stop, kill.

QEMU runs with ``-daemonize``: the process we spawn forks the real guest process, waits until
it finished initialising (sockets listening, devices created) and exits with 0, or prints
why it could not start and exits non-zero. The guest process is then in its own session and
is *not* a child of the node daemon, so killing or restarting the daemon does not touch
running guests. Its pid comes from the pid file QEMU writes (``-pidfile``).

Because the guest is not our child we cannot ``waitpid`` it: liveness is read from
``/proc/<pid>/stat`` (a zombie counts as gone), and a pid only counts as the instance's QEMU
when ``/proc/<pid>/cmdline`` names the instance (``-name``) and its uuid (``-uuid``) — so a
stale pid file whose pid was reused by another program is never mistaken for a guest, and
that program is never signalled.

This module is the one place of the KVM driver that starts a long-lived process with
:class:`subprocess.Popen` (STYLE.md §5); short commands go through ``common/runcmd``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from corral.common.errors import HypervisorError, LaunchError
from corral.hypervisor.kvm.cmdline import argv_names_instance
from corral.hypervisor.kvm.monitor import Monitor, QmpSession, VmStatus
from corral.hypervisor.kvm.runtime import InstanceLayout

log = logging.getLogger(__name__)

PROC = "/proc"
#: How often liveness is polled while waiting for QEMU to exit or QMP to come up.
POLL_INTERVAL = 0.05
#: Seconds granted to ``quit`` and to SIGKILL after the soft phase of a stop.
HARD_STOP_GRACE = 5.0
#: How much of QEMU's stderr goes into a LaunchError.
LOG_TAIL_CHARS = 4000


def pid_alive(pid: int, *, proc: str = PROC) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(os.path.join(proc, str(pid), "stat"), encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return False
    # The command name (field 2) is in parentheses and may contain spaces or ")".
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] not in ("Z", "X", "x")


def pid_cmdline(pid: int, *, proc: str = PROC) -> list[str] | None:
    """The argv of a process, or None when it is gone or unreadable."""
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return [part.decode("utf-8", errors="replace") for part in raw.split(b"\0") if part]


def read_pidfile(path: str) -> int | None:
    """The pid in a pid file, or None when it is missing or malformed."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def wait_child(child: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for a child to exit; its exit code.

    NOTE: ``Popen.wait(timeout)`` polls with sleeps growing to 50 ms (Python 3.11), which
    made every QEMU start (and migration accept) ~25 ms slower on average; a pidfd wakes us
    the moment ``-daemonize``'s parent exits.

    Raises:
        subprocess.TimeoutExpired: it did not exit within ``timeout`` seconds.
    """
    try:
        fd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # kernels before 5.3
        return child.wait(timeout=timeout)
    try:
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(child.args, timeout)
    return child.wait()


def _tail(path: str, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class QemuProcess:
    """One instance's QEMU process.

    Use :meth:`launch` to start a new one, or :meth:`attach` to find a running one. As a
    context manager it kills the process when the block raises (qemu.machine style), so a
    failed start never leaves a guest behind.

    Args:
        layout: the instance's file layout.
        name: the instance name (must appear after ``-name`` in QEMU's argv).
        uuid: the instance uuid (must appear after ``-uuid``); empty to check the name only.
        qmp_timeout: seconds for each QMP connection and command.
        proc: the procfs mount (tests may point it elsewhere).
    """

    def __init__(
        self,
        layout: InstanceLayout,
        *,
        name: str,
        uuid: str = "",
        qmp_timeout: float = 10.0,
        proc: str = PROC,
    ) -> None:
        self.layout = layout
        self.name = name
        self.uuid = uuid
        self.pid: int | None = None
        self.proc = proc
        self.argv: list[str] = []  # what launch() ran, for error reports
        self.monitor = Monitor(layout.qmp_socket, name=name, timeout=qmp_timeout)

    # --- discovery ---------------------------------------------------------------------

    @classmethod
    def attach(
        cls,
        layout: InstanceLayout,
        *,
        name: str,
        uuid: str = "",
        qmp_timeout: float = 10.0,
        proc: str = PROC,
    ) -> QemuProcess | None:
        """The running QEMU of an instance, from its pid file; None if it does not run."""
        owner = cls(layout, name=name, uuid=uuid, qmp_timeout=qmp_timeout, proc=proc)
        pid = read_pidfile(layout.pidfile)
        if pid is None or not owner._is_ours(pid):
            return None
        owner.pid = pid
        return owner

    def _is_ours(self, pid: int) -> bool:
        if not pid_alive(pid, proc=self.proc):
            return False
        cmdline = pid_cmdline(pid, proc=self.proc)
        return cmdline is not None and argv_names_instance(cmdline, self.name, self.uuid)

    def alive(self) -> bool:
        """Whether the process still runs (and is still this instance's QEMU)."""
        return self.pid is not None and self._is_ours(self.pid)

    # --- start ---------------------------------------------------------------------------

    def launch(self, argv: Sequence[str], *, timeout: float) -> int:
        """Start QEMU (its argv must contain ``-daemonize`` and ``-pidfile``).

        QEMU's stderr while starting goes to ``layout.qemu_log``.

        Returns:
            The pid of the guest process.

        Raises:
            LaunchError: QEMU refused the command line or could not initialise (the message
                ends with QEMU's own error output), did not finish starting within
                ``timeout`` seconds, or exited right away. Whatever was started is killed.
        """
        argv = list(argv)
        self.argv = argv
        os.makedirs(self.layout.log_dir, exist_ok=True)
        log.debug("launch %s: %s", self.name, argv)
        try:
            with open(self.layout.qemu_log, "wb") as out:
                child = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    close_fds=True,
                    start_new_session=True,
                )
        except OSError as exc:
            raise LaunchError(
                f"cannot run {argv[0]}: {exc.strerror}", argv=argv, exitcode=None
            ) from exc
        try:
            rc = wait_child(child, timeout)
        except subprocess.TimeoutExpired as exc:
            child.kill()
            child.wait()
            self._kill_pidfile_process()
            raise LaunchError(
                f"QEMU for {self.name} did not finish starting within {timeout:g}s",
                argv=argv,
                exitcode=None,
                log_tail=_tail(self.layout.qemu_log),
            ) from exc
        if rc != 0:
            self._kill_pidfile_process()
            raise LaunchError(
                f"QEMU refused to start {self.name} (exit code {rc})",
                argv=argv,
                exitcode=rc,
                log_tail=_tail(self.layout.qemu_log),
            )
        pid = read_pidfile(self.layout.pidfile)
        if pid is None or not self._is_ours(pid):
            raise LaunchError(
                f"QEMU for {self.name} exited right after starting",
                argv=argv,
                exitcode=rc,
                log_tail=_tail(self.layout.qemu_log),
            )
        self.pid = pid
        return pid

    def _kill_pidfile_process(self) -> None:
        pid = read_pidfile(self.layout.pidfile)
        if pid is not None and self._is_ours(pid):
            self.pid = pid
            self.kill()

    def wait_qmp(self, *, timeout: float) -> VmStatus:
        """Wait until QMP answers ``query-status``; return that status.

        Raises:
            LaunchError: QEMU exited meanwhile, or QMP did not answer within ``timeout``
                (the last QMP problem and QEMU's log are in the message).
        """
        deadline = time.monotonic() + timeout
        last = "QMP socket not created"
        while True:
            if not self.alive():
                raise LaunchError(
                    f"QEMU for {self.name} exited while starting",
                    argv=self.argv,
                    exitcode=None,
                    log_tail=_tail(self.layout.qemu_log),
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LaunchError(
                    f"QMP of {self.name} did not come up within {timeout:g}s ({last})",
                    argv=self.argv,
                    exitcode=None,
                    log_tail=_tail(self.layout.qemu_log),
                )
            if os.path.exists(self.layout.qmp_socket):
                mon = Monitor(
                    self.layout.qmp_socket,
                    name=self.name,
                    timeout=max(0.1, min(self.monitor.timeout, remaining)),
                )
                try:
                    return mon.call(lambda q: q.query_status())
                except HypervisorError as exc:
                    last = str(exc)
            time.sleep(POLL_INTERVAL)

    # --- stop ----------------------------------------------------------------------------

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to end; True if it did."""
        deadline = time.monotonic() + max(0.0, timeout)
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def kill(self) -> None:
        """SIGKILL the process and wait (up to :data:`HARD_STOP_GRACE`) until it is gone.

        Raises:
            HypervisorError: it is still there afterwards (e.g. stuck in the kernel).
        """
        if self.pid is None or not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if not self.wait_exit(HARD_STOP_GRACE):
            raise HypervisorError(
                f"QEMU of {self.name} (pid {self.pid}) did not die after SIGKILL",
                pid=self.pid,
            )

    def _qmp(self, action_name: str, timeout: float) -> bool:
        mon = Monitor(self.layout.qmp_socket, name=self.name, timeout=max(0.1, timeout))

        async def act(q: QmpSession) -> None:
            await (q.system_powerdown() if action_name == "powerdown" else q.quit())

        try:
            mon.call(act)
        except HypervisorError as exc:
            log.warning("%s: QMP %s failed: %s", self.name, action_name, exc)
            return False
        return True

    def shutdown(self, *, timeout: float, force: bool = False) -> str:
        """Stop the guest: ACPI power button for ``timeout`` s, then ``quit``, then SIGKILL.

        ``force`` (or ``timeout <= 0``) skips the ACPI phase. A guest that ignores the power
        button (no ``button.ko``, nothing listening) is therefore still gone after about
        ``timeout`` + 2 x :data:`HARD_STOP_GRACE` seconds at most.

        Returns:
            How it ended: ``"not-running"``, ``"powerdown"``, ``"quit"`` or ``"kill"``.

        Raises:
            HypervisorError: the process survived SIGKILL.
        """
        if not self.alive():
            return "not-running"
        if not force and timeout > 0:
            deadline = time.monotonic() + timeout
            sent = self._qmp("powerdown", min(self.monitor.timeout, timeout))
            # NOTE: when the power button could not even be pressed (QMP wedged), waiting for
            # the guest to react is pointless: go straight to the hard phase.
            if sent and self.wait_exit(deadline - time.monotonic()):
                return "powerdown"
            log.info("%s: no ACPI shutdown within %gs, quitting QEMU", self.name, timeout)
        if self._qmp("quit", HARD_STOP_GRACE) and self.wait_exit(HARD_STOP_GRACE):
            return "quit"
        log.warning("%s: QEMU did not quit, sending SIGKILL to pid %s", self.name, self.pid)
        self.kill()
        return "kill"

    # --- context manager -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            with contextlib.suppress(HypervisorError):
                self.kill()

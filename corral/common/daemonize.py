"""Starting, stopping and finding long-running daemons (``corral-noded``, ``corral-master``).

This module owns long-lived processes, so it starts them itself (``os.posix_spawnp``, STYLE
§5); short commands still go through ``common/runcmd``.

* :func:`start_daemon` runs a command in a new session (``setsid``: no controlling terminal,
  its own process group), stdin ``/dev/null``, stdout/stderr appended to a log file, and waits
  until the daemon has written its pid file — daemons write it only once they serve, so a
  return means "ready". The daemon survives the death of whoever started it.
* :func:`stop_daemon` sends SIGTERM, waits, then SIGKILL.
* :func:`daemon_status` tells whether the pid file names a live process of that daemon.

Daemons themselves use :func:`claim_pid_file` / :func:`release_pid_file` and
:func:`set_process_name`. A pid file holds the pid and a newline. The daemon's name is the pid
file's stem (``/run/corral/corral-noded.pid`` -> ``corral-noded``); a pid is only believed when
that process's ``comm`` (set by :func:`set_process_name`) or one of its argv words is the name,
so a stale pid file whose pid was reused by another program is recognised as stale.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence

from corral.common.errors import CorralError, ErrorKind
from corral.common.fileio import remove_file, write_atomic

log = logging.getLogger(__name__)

_PR_SET_NAME = 15
_POLL = 0.05


# --- pid files ---------------------------------------------------------------------------------


def read_pid_file(pid_file: str) -> int | None:
    """The pid in ``pid_file``, or None if it is missing, empty or garbage."""
    try:
        with open(pid_file, encoding="ascii", errors="replace") as fh:
            text = fh.read(64).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _daemon_name(pid_file: str) -> str:
    return os.path.basename(pid_file).removesuffix(".pid")


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"x")


def _is_daemon(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            comm = fh.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return False
    # NOTE: the kernel keeps only the first 15 bytes of a process name (TASK_COMM_LEN).
    if comm == name[:15]:
        return True
    return any(os.path.basename(a) == name for a in argv)


def daemon_status(pid_file: str, *, name: str | None = None) -> int | None:
    """The pid of the running daemon of ``pid_file``, or None if it does not run.

    Args:
        pid_file: the daemon's pid file.
        name: the daemon's name; default the pid file's stem.

    A pid file naming a dead process, a zombie, or a process that is not this daemon (pid
    reused) counts as not running. Never raises.
    """
    pid = read_pid_file(pid_file)
    if pid is None or not _alive(pid):
        return None
    return pid if _is_daemon(pid, name or _daemon_name(pid_file)) else None


def claim_pid_file(pid_file: str, *, name: str | None = None) -> None:
    """Write our pid to ``pid_file`` unless another instance of the daemon runs.

    Raises:
        CorralError: the daemon already runs (kind EXISTS, field ``pid``), or the file cannot
            be written (ENVIRONMENT).
    """
    other = daemon_status(pid_file, name=name)
    if other is not None and other != os.getpid():
        raise CorralError(
            f"{name or _daemon_name(pid_file)} is already running (pid {other}, {pid_file})",
            kind=ErrorKind.EXISTS,
            pid=other,
            pid_file=pid_file,
        )
    try:
        os.makedirs(os.path.dirname(pid_file) or ".", exist_ok=True)
        write_atomic(pid_file, f"{os.getpid()}\n", mode=0o644)
    except OSError as exc:
        raise CorralError(
            f"cannot write pid file {pid_file}: {exc.strerror or exc}",
            kind=ErrorKind.ENVIRONMENT,
            pid_file=pid_file,
        ) from exc


def release_pid_file(pid_file: str, pid: int | None = None) -> None:
    """Remove ``pid_file`` if it still names ``pid`` (default: us). Never raises."""
    if read_pid_file(pid_file) == (pid or os.getpid()):
        with contextlib.suppress(OSError):
            remove_file(pid_file)


def set_process_name(name: str) -> None:
    """Set this process's name (``/proc/self/comm``, what ``ps`` and ``top`` show).

    Best effort: on failure (not Linux, no libc) nothing happens. Call it from the main thread.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError) as exc:
        log.debug("cannot set process name to %s: %s", name, exc)


# --- start / stop ------------------------------------------------------------------------------


def _log_tail(log_file: str, offset: int, limit: int = 4000) -> str:
    try:
        with open(log_file, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace").strip()


#: Signals the daemon gets back at their default action even if the caller ignores them
#: (Python itself ignores SIGPIPE and SIGXFSZ; ``nohup`` ignores SIGHUP).
_RESET_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
)


def _spawn(argv: Sequence[str], log_file: str, env: Mapping[str, str] | None) -> int:
    """Start ``argv`` in a new session with stdin /dev/null and output to ``log_file``.

    NOTE: ``os.posix_spawnp`` rather than ``subprocess.Popen``: a Popen object that is
    garbage-collected while its process runs emits a ResourceWarning, and a daemon outlives
    the object by design.
    """
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        return os.posix_spawnp(
            argv[0],
            list(argv),
            dict(os.environ if env is None else env),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
            setsigdef=_RESET_SIGNALS,
        )
    finally:
        os.close(fd)


def start_daemon(
    argv: Sequence[str],
    pid_file: str,
    log_file: str,
    *,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
) -> int:
    """Start a daemon detached from the caller and wait until it is ready.

    The command runs in a new session (no controlling terminal, own process group) with
    stdin from ``/dev/null`` and stdout and stderr appended to ``log_file``. It must write
    ``pid_file`` once it serves (Corral's daemons do; one that daemonizes itself again is fine
    as long as the final process writes it). Corral's daemons change to ``/`` themselves.

    If the daemon already runs (:func:`daemon_status`), its pid is returned and nothing is
    started (like ``systemctl start`` of a running unit).

    Args:
        argv: the command, e.g. ``["corral-noded", "--root", root, "--foreground"]``;
            ``argv[0]`` is looked up in ``PATH``.
        pid_file: where the daemon writes its pid.
        log_file: where its output goes (appended).
        timeout: how long to wait for the pid file.
        env: environment of the daemon (default: ours).
        name: the daemon's name for :func:`daemon_status` (default: the pid file's stem).

    Returns:
        The daemon's pid (from its pid file).

    Raises:
        CorralError: the command cannot be run, exits before writing its pid file, or does not
            write it within ``timeout`` (then it is killed); kind ENVIRONMENT, with fields
            ``argv``, ``exitcode`` and ``log_tail`` (its output of this start).
    """
    running = daemon_status(pid_file, name=name)
    if running is not None:
        log.info("%s already runs (pid %d)", name or _daemon_name(pid_file), running)
        return running
    with contextlib.suppress(OSError):
        remove_file(pid_file)  # stale
    try:
        os.makedirs(os.path.dirname(pid_file) or ".", exist_ok=True)
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        offset = os.path.getsize(log_file) if os.path.exists(log_file) else 0
        log.debug("starting daemon: %s", list(argv))
        child = _spawn(argv, log_file, env)
    except OSError as exc:
        raise CorralError(
            f"cannot start {argv[0]}: {exc.strerror or exc}",
            kind=ErrorKind.ENVIRONMENT,
            argv=list(argv),
        ) from exc

    deadline = time.monotonic() + timeout
    while True:
        pid = read_pid_file(pid_file)
        if pid is not None and _alive(pid):
            log.info("started %s (pid %d)", argv[0], pid)
            return pid
        rc = _exit_code(child)
        if rc is not None:
            pid = read_pid_file(pid_file)
            if pid is not None and _alive(pid):
                continue  # it daemonized itself again; the final process is ready
            tail = _log_tail(log_file, offset)
            raise CorralError(
                f"{argv[0]} exited with code {rc} before it was ready"
                + (f": {tail}" if tail else f" (see {log_file})"),
                kind=ErrorKind.ENVIRONMENT,
                argv=list(argv),
                exitcode=rc,
                log_tail=tail,
            )
        if time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                os.killpg(child, signal.SIGKILL)  # its session's process group (pgid = pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)
            tail = _log_tail(log_file, offset)
            raise CorralError(
                f"{argv[0]} did not become ready within {timeout:g}s (killed)"
                + (f": {tail}" if tail else ""),
                kind=ErrorKind.ENVIRONMENT,
                argv=list(argv),
                exitcode=None,
                log_tail=tail,
            )
        time.sleep(_POLL)


def _exit_code(child: int) -> int | None:
    """Exit code of our child ``child`` if it has ended (reaping it), else None."""
    try:
        pid, status = os.waitpid(child, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler): judge from /proc
        return None if _alive(child) else -1
    return os.waitstatus_to_exitcode(status) if pid == child else None


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (else nothing happens)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)
        if not _alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)


def stop_daemon(pid_file: str, timeout: float = 30.0, *, name: str | None = None) -> bool:
    """Stop the daemon of ``pid_file``: SIGTERM, wait up to ``timeout`` s, then SIGKILL.

    Only the daemon's own process is signalled, never its process group: processes it left
    running on purpose (QEMU guests) keep running.

    Returns:
        True if a daemon was running and is now gone; False if none was running (a stale pid
        file is removed).

    Raises:
        CorralError: the process survived SIGKILL (kind ENVIRONMENT), or we may not signal
            it (permission denied).
    """
    daemon = name or _daemon_name(pid_file)
    pid = daemon_status(pid_file, name=name)
    if pid is None:
        with contextlib.suppress(OSError):
            remove_file(pid_file)
        return False
    try:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            log.warning("%s (pid %d) did not stop within %gs; killing it", daemon, pid, timeout)
            os.kill(pid, signal.SIGKILL)
            if not _wait_gone(pid, 10.0):
                raise CorralError(
                    f"{daemon} (pid {pid}) survived SIGKILL",
                    kind=ErrorKind.ENVIRONMENT,
                    pid=pid,
                )
    except ProcessLookupError:
        pass  # it went away by itself meanwhile
    except PermissionError as exc:
        raise CorralError(
            f"not allowed to stop {daemon} (pid {pid}): {exc.strerror}",
            kind=ErrorKind.ENVIRONMENT,
            pid=pid,
        ) from exc
    release_pid_file(pid_file, pid)
    log.info("stopped %s (pid %d)", daemon, pid)
    return True

"""Running external programs: the only module of Corral that calls :mod:`subprocess`.

Commands are argument lists, never shell strings. A timeout is mandatory. Failures raise
:class:`~corral.common.errors.CommandError` carrying argv, exit code and stderr, so callers do
not check return codes by hand. Output that will be parsed should be produced with
``c_locale=True``.

Drivers take a :class:`Runner` so tests can inject a replaying fake (tests/unit/fakes.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Protocol

from corral.common.errors import CommandError, CommandTimeout

log = logging.getLogger(__name__)

#: PATH used when a command runs with a cleared environment (OS scripts, hooks).
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclasses.dataclass(frozen=True, slots=True)
class CmdResult:
    """What a finished command produced."""

    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the exit code was 0."""
        return self.rc == 0


class Runner(Protocol):
    """Something that runs commands; :func:`run` is the real one."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        cwd: str | None = None,
        c_locale: bool = False,
    ) -> CmdResult:
        """Run ``argv``; see :func:`run`."""
        ...


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input: str | bytes | None = None,
    cwd: str | None = None,
    c_locale: bool = False,
    clear_env: bool = False,
) -> CmdResult:
    """Run a program and wait for it.

    Args:
        argv: the program and its arguments (no shell is involved).
        timeout: seconds before the program is killed.
        check: raise on a non-zero exit code.
        env: extra environment variables (added to the inherited environment unless
            ``clear_env``, in which case they are the whole environment plus a safe PATH).
        input: data for the program's stdin (stdin is /dev/null otherwise).
        cwd: working directory.
        c_locale: force ``LC_ALL=C`` so the output can be parsed.
        clear_env: start from an empty environment (OS scripts and hooks).

    Returns:
        The :class:`CmdResult`.

    Raises:
        CommandTimeout: the program ran longer than ``timeout`` and was killed.
        CommandError: it could not be started, or exited non-zero while ``check`` is set.
    """
    argv = [str(a) for a in argv]
    full_env = {"PATH": SAFE_PATH} if clear_env else dict(os.environ)
    if env:
        full_env.update(env)
    if c_locale:
        full_env["LC_ALL"] = "C"
        full_env["LANG"] = "C"
    log.debug("run %s", argv)
    data: bytes | None
    data = input.encode() if isinstance(input, str) else input
    try:
        proc = subprocess.run(  # noqa: S603 - argv list, never a shell
            argv,
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandTimeout(argv, timeout, _text(exc.stdout), _text(exc.stderr)) from exc
    except OSError as exc:
        raise CommandError(argv, None, "", str(exc), message=f"cannot run {argv[0]!r}") from exc
    result = CmdResult(tuple(argv), proc.returncode, _text(proc.stdout), _text(proc.stderr))
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, result.stdout, result.stderr)
    return result


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


def run_to_file(
    argv: Sequence[str],
    *,
    output: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    clear_env: bool = False,
    cwd: str | None = None,
    stdin_path: str | None = None,
    kill_grace: float = 5.0,
) -> int:
    """Run a program whose stdout and stderr are appended to the file ``output``.

    For scripts whose output is a log (OS definition scripts, hooks) rather than data to parse.
    The program runs in its own session, so on timeout the whole process group (the script and
    everything it started) is stopped, not just the first process: SIGTERM first, so scripts
    can remove their temporary files, then SIGKILL after ``kill_grace`` seconds.

    Args:
        argv: the program and its arguments (no shell is involved).
        output: file that receives stdout and stderr (created if missing, appended to).
        timeout: seconds before the process group is killed.
        env: extra environment variables; see :func:`run`.
        clear_env: start from an empty environment plus a safe PATH.
        cwd: working directory.
        stdin_path: file to connect to stdin (default ``/dev/null``).
        kill_grace: seconds between SIGTERM and SIGKILL when the timeout expires.

    Returns:
        The exit code (negative: killed by that signal). A non-zero code is not an error here;
        the caller decides.

    Raises:
        CommandTimeout: the program ran longer than ``timeout``; its process group was killed.
        CommandError: it could not be started (or ``output``/``stdin_path`` cannot be opened).
    """
    argv = [str(a) for a in argv]
    full_env = {"PATH": SAFE_PATH} if clear_env else dict(os.environ)
    if env:
        full_env.update(env)
    log.debug("run %s > %s", argv, output)
    try:
        with (
            open(output, "ab") as out,
            open(stdin_path or os.devnull, "rb") as stdin,
        ):
            proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                argv,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
    except OSError as exc:
        raise CommandError(argv, None, "", str(exc), message=f"cannot run {argv[0]!r}") from exc
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _stop_group(proc, kill_grace)
        raise CommandTimeout(argv, timeout) from exc
    except BaseException:
        _stop_group(proc, 0)
        raise


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop the process group led by ``proc`` (TERM, then KILL after ``grace``); reap ``proc``."""
    if grace > 0:
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # NOTE: KILL the group even when the leader exited after TERM: children it started may
    # still run (and hold the log file open).
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except OSError:
        log.warning("cannot signal process group %d", proc.pid, exc_info=True)
        if proc.poll() is None:
            proc.send_signal(sig)

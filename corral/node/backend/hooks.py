"""The hooks runner: Ganeti's hooks interface (HOOKS_VERSION 2) on one node.

For an operation with hooks path ``hpath`` and phase ``pre`` or ``post``, every entry of
``<hooks_dir>/<hpath>-<phase>.d/`` (Corral's ``/etc/corral/hooks``, then Ganeti's
``/etc/ganeti/hooks`` so existing hook scripts keep working) is considered in lexicographic
order:

* hidden entries (``.name``) are ignored entirely;
* entries whose name does not match ``^[a-zA-Z0-9_-]+$`` (so ``x.sh`` or ``x~``), or that are
  not executable regular files, are reported as ``skip``;
* the others run with no arguments, stdin from ``/dev/null``, the working directory ``/``, an
  environment made only of the variables the master sent (``GANETI_*``) plus a fixed PATH, and a
  per-script timeout after which the script and everything it started are killed.

A script's result is ``success`` (exit 0) or ``fail`` (non-zero, killed, timed out, or could
not be executed), with its combined stdout/stderr. The runner never raises for a failing script:
deciding what a failing pre-hook means (abort the operation) is the master's business.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Mapping, Sequence

from corral.common import runcmd
from corral.common.errors import CommandError, CommandTimeout, ParamError
from corral.rpc.calls import HookResult

log = logging.getLogger(__name__)

#: Names of hook scripts that run (Ganeti's ``EXT_PLUGIN_MASK``).
HOOK_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
#: Hooks paths are fixed words such as ``instance-start`` (never a path).
HPATH_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PHASES = ("pre", "post")
#: Seconds one hook script may run before it is killed.
DEFAULT_HOOK_TIMEOUT = 120.0
#: Output kept per script (the end of it).
MAX_OUTPUT = 64 * 1024


class HooksRunner:
    """Runs the hook scripts of Corral's hooks directory and, after it, Ganeti's.

    Ganeti's scripts (``/etc/ganeti/hooks``) run unchanged after Corral's own; a directory
    reached twice (one is a symlink to the other) runs once. Scripts of the extra
    directories are labelled with their directory so results stay unambiguous.
    """

    def __init__(
        self,
        hooks_dir: str,
        *,
        timeout: float = DEFAULT_HOOK_TIMEOUT,
        extra_dirs: Sequence[str] = (),
    ) -> None:
        """Create a runner for ``hooks_dir`` (then ``extra_dirs``) with a per-script timeout."""
        self.hooks_dir = hooks_dir
        self.extra_dirs = tuple(extra_dirs)
        self.timeout = timeout

    def run(self, hpath: str, phase: str, env: Mapping[str, str]) -> list[HookResult]:
        """Run every hook script of ``<hpath>-<phase>.d`` and report each one, in order.

        A missing or unreadable hooks directory means there is nothing to run (empty list).

        Raises:
            ParamError: ``hpath`` or ``phase`` is not a valid word, or ``env`` holds a variable
                name or value that cannot be put in an environment (nothing has run then).
        """
        subdir = self.subdir(hpath, phase)
        script_env = _check_env(env)
        results: list[HookResult] = []
        seen: set[str] = set()
        for base in (self.hooks_dir, *self.extra_dirs):
            directory = os.path.join(base, subdir)
            real = os.path.realpath(directory)
            if real in seen:
                continue
            seen.add(real)
            prefix = subdir if base == self.hooks_dir else directory
            results += self._run_dir(directory, prefix, script_env)
        return results

    def _run_dir(self, directory: str, prefix: str, env: dict[str, str]) -> list[HookResult]:
        try:
            names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot list hooks directory %s: %s", directory, exc)
            return []
        results = []
        for name in names:
            path = os.path.join(directory, name)
            label = f"{prefix}/{name}"
            if not HOOK_NAME_RE.match(name) or not _is_executable_file(path):
                results.append(HookResult(script=label, status="skip"))
                continue
            results.append(self._run_one(path, label, env))
        return results

    @staticmethod
    def subdir(hpath: str, phase: str) -> str:
        """The directory name for ``hpath`` and ``phase`` (``instance-start-pre.d``).

        Raises:
            ParamError: ``hpath`` or ``phase`` is not acceptable.
        """
        problems = {}
        if not HPATH_RE.match(hpath):
            problems["hpath"] = f"not a hooks path: {hpath!r}"
        if phase not in PHASES:
            problems["phase"] = f"must be pre or post, got {phase!r}"
        if problems:
            raise ParamError(problems, context="hooks request")
        return f"{hpath}-{phase}.d"

    def _run_one(self, path: str, label: str, env: dict[str, str]) -> HookResult:
        fd, out_path = tempfile.mkstemp(prefix="corral-hook-", suffix=".out")
        os.close(fd)
        try:
            try:
                rc = runcmd.run_to_file(
                    [path], output=out_path, timeout=self.timeout, env=env, clear_env=True, cwd="/"
                )
            except CommandTimeout:
                output = _read_tail(out_path)
                note = f"hook script timed out after {self.timeout:g}s and was killed"
                log.warning("hook %s: %s", label, note)
                return HookResult(script=label, status="fail", output=_join(output, note))
            except CommandError as exc:
                log.warning("hook %s could not run: %s", label, exc)
                return HookResult(
                    script=label, status="fail", output=f"Hook script execution error: {exc}"
                )
            output = _read_tail(out_path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(out_path)
        if rc != 0:
            log.info("hook %s exited with code %d", label, rc)
            return HookResult(script=label, status="fail", output=output)
        return HookResult(script=label, status="success", output=output)


def _check_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for hook scripts: the given variables, minus PATH (reset by runcmd)."""
    problems = {}
    clean: dict[str, str] = {}
    for key, value in env.items():
        if not _ENV_NAME_RE.match(key):
            problems[f"env.{key}"] = "not a valid environment variable name"
        elif not isinstance(value, str) or "\0" in value:
            problems[f"env.{key}"] = "value must be a string without NUL characters"
        elif key != "PATH":
            clean[key] = value
    if problems:
        raise ParamError(problems, context="hooks environment")
    return clean


def _is_executable_file(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK)


def _read_tail(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - MAX_OUTPUT))
            data = fh.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace").strip()


def _join(output: str, note: str) -> str:
    return f"{output}\n{note}" if output else note

"""Running OS definition scripts: log files, timeouts, qcow2 raw views, the OS call family.

Scripts run with a cleared environment (built by :mod:`corral.node.backend.osdef`), the OS
directory as working directory, stdin from /dev/null, stdout and stderr appended to a log file
``<log_dir>/os/<kind>-<os>-<instance>-<timestamp>.log`` (kind ``add`` or ``rename``, as Ganeti
names them), and a timeout after which the script and everything it started are stopped
(SIGTERM, then SIGKILL). A failing script raises :class:`~corral.common.errors.OsError` quoting
the last lines of its log.

OS scripts see every disk as a raw image. For a qcow2 volume the runner makes a temporary raw
file of the same virtual size in the volume's directory (empty for ``create``, a copy of the
image for ``rename``), passes its path as ``DISK_<n>_PATH``, and after the script succeeded
converts it into the qcow2 image with ``qemu-img convert -n -f raw -O qcow2``. The temporary
file is removed whatever happens; a failed script leaves the qcow2 image untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence

from corral.common import runcmd
from corral.common.errors import CommandError, CommandTimeout, ErrorKind, OsError
from corral.common.paths import Paths
from corral.node.backend.blockdev import Blockdevs
from corral.node.backend.instances import InstanceLocks
from corral.node.backend.osdef import (
    API_V20,
    DiskEnv,
    OsDefinition,
    build_core_env,
    build_env,
    check_osparams,
    diagnose,
    find_os,
    select_variant,
    split_os_name,
)
from corral.rpc.calls import (
    DiskRef,
    OsCreateRequest,
    OsInfo,
    OsRenameRequest,
    OsScriptResponse,
)

log = logging.getLogger(__name__)

#: Seconds a script may run (the RPC timeouts in rpc/calls.py are a little longer).
CREATE_TIMEOUT = 3300.0
RENAME_TIMEOUT = 540.0
VERIFY_TIMEOUT = 100.0
#: Converting a raw view back into a qcow2 image (bounded by disk size, not by the script).
CONVERT_TIMEOUT = 3600.0
#: Lines of a failing script's log quoted in the error.
TAIL_LINES = 20
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._+-]|^\.")


# --- running scripts ---------------------------------------------------------------------------


def log_file_name(paths: Paths, kind: str, os_name: str, instance: str) -> str:
    """A new, unique log file path ``<log_dir>/os/<kind>-<os>-<instance>-<timestamp>.log``.

    The file is created (empty) so concurrent runs never share one.

    Raises:
        OsError: the log directory cannot be created or written.
    """
    directory = os.path.join(paths.log_dir, "os")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H_%M_%S_%f")
    # NOTE: names are checked by the master, but a file name must never carry a path here.
    label = _UNSAFE_FILE_CHARS.sub("_", f"{kind}-{os_name}-{instance}")
    base = os.path.join(directory, f"{label}-{stamp}")
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
        for attempt in range(100):
            path = f"{base}.log" if attempt == 0 else f"{base}-{attempt}.log"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            except FileExistsError:
                continue
            os.close(fd)
            return path
    except OSError as exc:
        raise OsError(f"cannot create OS log file in {directory}: {exc}") from exc
    raise OsError(f"cannot create a unique OS log file {base}.log")


def tail_lines(path: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.rstrip("\n").splitlines()[-lines:])


def run_script(
    osdef: OsDefinition,
    script: str,
    *,
    env: Mapping[str, str],
    log_file: str,
    timeout: float,
    what: str,
) -> str:
    """Run one OS script with output to ``log_file``; return the last lines of its output.

    Raises:
        OsError: the script could not be started, exited non-zero or timed out; the message
            quotes the last lines of its output and ``fields`` carry ``log_file`` and ``rc``.
    """
    argv = [osdef.script(script)]
    try:
        rc = runcmd.run_to_file(
            argv, output=log_file, timeout=timeout, env=env, clear_env=True, cwd=osdef.path
        )
    except CommandTimeout as exc:
        tail = tail_lines(log_file)
        raise OsError(
            f"OS {script} script of {osdef.name!r} for {what} timed out after {timeout:g}s; "
            f"last lines of {log_file}:\n{tail}",
            log_file=log_file,
            output_tail=tail,
        ) from exc
    except CommandError as exc:
        raise OsError(
            f"cannot run the OS {script} script of {osdef.name!r}: {exc}", log_file=log_file
        ) from exc
    tail = tail_lines(log_file)
    if rc != 0:
        reason = f"exit code {rc}" if rc > 0 else f"killed by signal {-rc}"
        raise OsError(
            f"OS {script} script of {osdef.name!r} for {what} failed ({reason}); "
            f"last lines of {log_file}:\n{tail}",
            log_file=log_file,
            rc=rc,
            output_tail=tail,
        )
    return tail


def run_verify(osdef: OsDefinition, env: Mapping[str, str]) -> None:
    """Run ``verify parameters`` (API 20 only; older definitions have nothing to verify).

    Raises:
        OsError: (INVALID) the script rejected the parameters (its stderr in the message), or
            it could not run / timed out (ENVIRONMENT).
    """
    if osdef.api_version < API_V20:
        return
    argv = [osdef.script("verify"), "parameters"]
    try:
        result = runcmd.run(
            argv, timeout=VERIFY_TIMEOUT, env=env, clear_env=True, cwd=osdef.path, check=False
        )
    except CommandError as exc:
        raise OsError(f"cannot run the verify script of OS {osdef.name!r}: {exc}") from exc
    if not result.ok:
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise OsError(
            f"OS {osdef.name!r} rejected its parameters (verify exit code {result.rc}): {output}",
            kind=ErrorKind.INVALID,
            os=osdef.name,
            rc=result.rc,
        )


# --- raw views of qcow2 volumes ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedDisk:
    """A disk found on this node: where its image is and in which format."""

    env: DiskEnv
    format: str  # raw | qcow2
    virtual_bytes: int


@contextlib.contextmanager
def raw_views(
    disks: Sequence[ResolvedDisk],
    *,
    copy_in: bool,
    runner: runcmd.Runner = runcmd.run,
) -> Iterator[tuple[list[DiskEnv], Callable[[], None]]]:
    """Give OS scripts raw images: a temporary raw file per qcow2 disk.

    Yields the disks as scripts see them (qcow2 ones pointing at their raw file) and a
    ``commit`` function; calling it converts every writable raw view back into its qcow2
    image with ``qemu-img convert -n -f raw -O qcow2``. When ``copy_in`` is set the raw file
    starts as a copy of the image (rename, import), else as an empty sparse file (create).
    The temporary files are removed on leaving the block, whatever happened.

    Raises:
        OsError: a raw view could not be made, or converting it back failed (the message
            carries qemu-img's stderr).
    """
    temps: list[str] = []
    views: list[DiskEnv] = []
    pending: list[tuple[str, str]] = []  # (raw temp, qcow2 image)
    try:
        for disk in disks:
            if disk.format != "qcow2":
                views.append(disk.env)
                continue
            image = disk.env.path
            try:
                fd, tmp = tempfile.mkstemp(
                    dir=os.path.dirname(image),
                    prefix=f".{os.path.basename(image)}.",
                    suffix=".raw",
                )
                os.close(fd)
                temps.append(tmp)
                if not copy_in:
                    os.truncate(tmp, disk.virtual_bytes)
            except OSError as exc:
                raise OsError(f"cannot make a raw view of {image}: {exc}") from exc
            if copy_in:
                _convert(runner, ["-f", "qcow2", "-O", "raw", image, tmp], image)
            views.append(dataclasses.replace(disk.env, path=tmp))
            if disk.env.mode == "rw":
                pending.append((tmp, image))

        def commit() -> None:
            for tmp, image in pending:
                _convert(runner, ["-n", "-f", "raw", "-O", "qcow2", tmp, image], image)

        yield views, commit
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _convert(runner: runcmd.Runner, args: list[str], image: str) -> None:
    argv = ["qemu-img", "convert", *args]
    try:
        runner(argv, timeout=CONVERT_TIMEOUT, c_locale=True)
    except CommandError as exc:
        raise OsError(
            f"cannot convert the raw view of {image}: {exc.stderr.strip() or exc.message}",
            argv=argv,
        ) from exc


# --- the OS family of node calls -------------------------------------------------------------


class OsScripts:
    """Runs OS definitions' scripts for instances of this node (create, rename, verify)."""

    def __init__(
        self,
        paths: Paths,
        node_name: str,
        blockdevs: Blockdevs,
        locks: InstanceLocks,
        *,
        runner: runcmd.Runner = runcmd.run,
    ) -> None:
        """Create the family; ``runner`` runs qemu-img for qcow2 raw views."""
        self.paths = paths
        self.node_name = node_name
        self._blockdevs = blockdevs
        self._locks = locks
        self._runner = runner

    def lookup(self, os_name: str, osparams: Mapping[str, str]) -> tuple[OsDefinition, str]:
        """Find ``name[+variant]``, check variant and parameters; return the OS and variant.

        Raises:
            OsError: the OS is unknown (NOT_FOUND) or invalid (ENVIRONMENT), or the variant or
                a parameter is not supported (INVALID).
        """
        name, variant = split_os_name(os_name)
        osdef = find_os(self.paths, name)
        variant = select_variant(osdef, variant)
        check_osparams(osdef, osparams)
        return osdef, variant

    def diagnose(self) -> list[OsInfo]:
        """Every OS definition on the node (see :func:`diagnose`)."""
        return diagnose(self.paths)

    def verify(self, os_name: str, osparams: Mapping[str, str]) -> None:
        """Check the OS exists here with its variant and accepts ``osparams`` (runs ``verify``).

        Raises:
            OsError: as :meth:`lookup`, or the OS's verify script rejected the parameters.
        """
        osdef, variant = self.lookup(os_name, osparams)
        run_verify(osdef, build_core_env(osdef, variant=variant, osparams=osparams, debug=0))

    def create(self, req: OsCreateRequest) -> OsScriptResponse:
        """Run the OS's ``create`` script on the instance's disks (install or reinstall).

        Raises:
            OsError: as :meth:`lookup`; the script failed or timed out (message and fields
                carry the log file and its last lines); a qcow2 raw view failed.
            StorageError: a disk's volume is missing (NOT_FOUND, naming the disk index).
        """
        osdef, variant = self.lookup(req.os, req.osparams)
        log_file = log_file_name(self.paths, "add", req.os, req.instance.name)
        with self._locks.hold(req.instance.name):
            disks = self._resolve(req.disks)
            with raw_views(disks, copy_in=False, runner=self._runner) as (views, commit):
                env = build_env(
                    osdef,
                    instance=req.instance,
                    os_name=req.os,
                    variant=variant,
                    disks=views,
                    osparams=req.osparams,
                    debug=req.debug,
                    node_name=self.node_name,
                    paths=self.paths,
                )
                if req.reinstall:
                    env["INSTANCE_REINSTALL"] = "1"
                tail = run_script(
                    osdef,
                    "create",
                    env=env,
                    log_file=log_file,
                    timeout=CREATE_TIMEOUT,
                    what=f"instance {req.instance.name}",
                )
                commit()
        log.info("OS %s installed on instance %s (log %s)", req.os, req.instance.name, log_file)
        return OsScriptResponse(log_file=log_file, output_tail=tail)

    def rename(self, req: OsRenameRequest) -> OsScriptResponse:
        """Run the OS's ``rename`` script (``OLD_INSTANCE_NAME`` -> ``INSTANCE_NAME``).

        Raises:
            OsError: as :meth:`create`.
            StorageError: a disk's volume is missing.
        """
        osdef, variant = self.lookup(req.os, req.osparams)
        label = f"{req.old_name}-{req.instance.name}"
        log_file = log_file_name(self.paths, "rename", req.os, label)
        with self._locks.hold(req.instance.name):
            disks = self._resolve(req.disks)
            with raw_views(disks, copy_in=True, runner=self._runner) as (views, commit):
                env = build_env(
                    osdef,
                    instance=req.instance,
                    os_name=req.os,
                    variant=variant,
                    disks=views,
                    osparams=req.osparams,
                    debug=req.debug,
                    node_name=self.node_name,
                    paths=self.paths,
                )
                env["OLD_INSTANCE_NAME"] = req.old_name
                tail = run_script(
                    osdef,
                    "rename",
                    env=env,
                    log_file=log_file,
                    timeout=RENAME_TIMEOUT,
                    what=f"instance {req.old_name} -> {req.instance.name}",
                )
                commit()
        return OsScriptResponse(log_file=log_file, output_tail=tail)

    def _resolve(self, refs: Sequence[DiskRef]) -> list[ResolvedDisk]:
        resolved = []
        for ref, info in self._blockdevs.resolve_all(refs):
            resolved.append(
                ResolvedDisk(
                    env=DiskEnv(
                        index=ref.index,
                        path=info.path,
                        size=ref.volume.size,
                        mode=ref.mode,
                        uuid=ref.volume.uuid,
                        name=ref.name,
                        dev_type=ref.volume.dev_type,
                    ),
                    format=info.format,
                    virtual_bytes=info.size * 1024 * 1024,
                )
            )
        return resolved

"""The ``file`` storage driver: raw and qcow2 image files under the cluster's storage dir.

A volume's ``logical_id`` is the absolute path of its image file. It must lie strictly below
the file storage directory (``vol.params["storage_dir"]`` as the master sends it, else
:attr:`Paths.file_storage_dir`): no ``..``, no symlinked file, no redundant separators, and the
resolved parent directory must still be inside the resolved storage directory.

File storage is node-local: the master's paths are re-rooted under the node's root
(:meth:`Paths.host_path`, the identity on a real host), so node daemons sharing one machine in
tests do not share their "local" disks. The ``sharedfile`` driver (``sharedfile.py``) is this
driver without the re-rooting, for a directory every node mounts at the same path.

* raw images are sparse files made with ``ftruncate`` (Ganeti's file disks do the same), so a
  new 10 GiB disk costs no space until the guest writes;
* qcow2 images are made with ``qemu-img create -f qcow2``;
* ``grow`` uses ``qemu-img resize`` and ``find`` uses ``qemu-img info --output=json``, always
  with an explicit ``-f`` so a raw image whose content looks like a qcow2 header is never probed
  as one (that would let a guest make the host open arbitrary backing files).

Creation and growth first check the free space of the filesystem and refuse with
``ErrorKind.NO_RESOURCES``, even for sparse files: a cluster that overcommits its file storage
finds out when a guest's write fails, which is worse than a refused request.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import logging
import os
import stat
import threading

from corral.common import runcmd
from corral.common.errors import CommandError, ErrorKind, StorageError
from corral.common.paths import Paths
from corral.common.revert import Reverter
from corral.storage.base import StorageCapabilities, StorageDriver, VolumeInfo, VolumeSpec

log = logging.getLogger(__name__)

MiB = 1024 * 1024
FORMATS = ("raw", "qcow2")
#: qemu-img finishes create/resize/info in milliseconds; this only bounds a hung filesystem.
QEMU_IMG_TIMEOUT = 120.0


class FileStorage(StorageDriver):
    """Image files (raw or qcow2) in a directory of the node."""

    NAME = "file"
    CAPABILITIES = StorageCapabilities(grow=True, snapshot=False, shared=False, formats=FORMATS)

    def __init__(self, paths: Paths, *, runner: runcmd.Runner = runcmd.run) -> None:
        """Create the driver; ``runner`` runs ``qemu-img`` (tests may inject another)."""
        self.paths = paths
        self._run = runner
        # NOTE: one lock per driver object serialises directory creation/removal with file
        # creation, so removing an instance's (now empty) directory cannot race with creating
        # its next disk in it. Volume data operations themselves do not need it.
        self._dir_lock = threading.Lock()

    # --- path checks ---------------------------------------------------------------------

    def storage_dir(self, vol: VolumeSpec) -> str:
        """The directory this volume must live in, on this host.

        Raises:
            StorageError: the configured directory is not an absolute normalised path (INVALID).
        """
        return self._host(self._cluster_storage_dir(vol))

    def _cluster_storage_dir(self, vol: VolumeSpec) -> str:
        """The storage dir as the master names it (before :meth:`_host`).

        Raises:
            StorageError: not an absolute path (INVALID).
        """
        raw = vol.params.get("storage_dir") or self.paths.file_storage_dir
        if not isinstance(raw, str) or not os.path.isabs(raw) or "\0" in raw:
            raise StorageError(
                f"{self.NAME} storage dir must be an absolute path, got {raw!r}",
                kind=ErrorKind.INVALID,
            )
        return os.path.normpath(raw)

    def _host(self, path: str) -> str:
        """Where a cluster path of this driver lies on this host.

        ``file`` storage is node-local: under the node's root (:meth:`Paths.host_path`).
        """
        return self.paths.host_path(path)

    def check_path(self, vol: VolumeSpec, logical_id: str | None = None) -> str:
        """The volume's image path on this host, checked to stay inside the storage dir.

        Raises:
            StorageError: the path is relative, contains ``..`` or redundant parts, leaves the
                storage dir (also through a symlinked directory), or is a symlink (INVALID).
        """
        path = vol.logical_id if logical_id is None else logical_id
        base = self._cluster_storage_dir(vol)
        problem = _path_problem(path, base)
        host = self._host(path) if problem is None else path
        if problem is None:
            real_base = os.path.realpath(self._host(base))
            real_parent = os.path.realpath(os.path.dirname(host))
            if not _is_within(real_parent, real_base, allow_equal=True):
                problem = f"resolves outside the file storage dir {base}"
            elif os.path.islink(host):
                problem = "is a symbolic link"
        if problem is not None:
            raise StorageError(
                f"refusing {self.NAME} volume path {path!r}: {problem}",
                kind=ErrorKind.INVALID,
                logical_id=path,
                storage_dir=base,
            )
        return host

    @staticmethod
    def _check_format(vol: VolumeSpec) -> str:
        if vol.format not in FORMATS:
            raise StorageError(
                f"unsupported file volume format {vol.format!r} (use raw or qcow2)",
                kind=ErrorKind.INVALID,
                logical_id=vol.logical_id,
            )
        return vol.format

    # --- the driver interface ------------------------------------------------------------

    def create(self, vol: VolumeSpec) -> VolumeInfo:
        """Create a sparse raw file or a qcow2 image of ``vol.size`` MiB.

        Missing directories between the storage dir and the file are created.

        Raises:
            StorageError: bad path or format (INVALID), the file exists (EXISTS), the
                filesystem has less than ``vol.size`` MiB free (NO_RESOURCES), or qemu-img or
                the filesystem failed. Nothing is left behind: no file, no new directory.
        """
        path = self.check_path(vol)
        fmt = self._check_format(vol)
        if vol.size <= 0:
            raise StorageError(
                f"volume size must be positive, got {vol.size} MiB",
                kind=ErrorKind.INVALID,
                logical_id=path,
            )
        with Reverter() as rv:
            with self._dir_lock:
                self._make_parents(path, self.storage_dir(vol), rv)
                self._check_free(path, vol.size, "create")
                try:
                    fd = os.open(
                        path,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600,
                    )
                except FileExistsError as exc:
                    raise StorageError(
                        f"volume {path} already exists", kind=ErrorKind.EXISTS, logical_id=path
                    ) from exc
                except OSError as exc:
                    raise _os_error("cannot create", path, exc) from exc
                rv.add(lambda: _unlink(path), f"remove {path}")
            try:
                if fmt == "raw":
                    os.ftruncate(fd, vol.size * MiB)
            except OSError as exc:
                raise _os_error("cannot size", path, exc) from exc
            finally:
                os.close(fd)
            if fmt == "qcow2":
                self._qemu_img(["create", "-q", "-f", "qcow2", path, f"{vol.size}M"], path)
            info = self._inspect(path, fmt, vol.logical_id)
            rv.success()
        log.info("created %s volume %s (%d MiB)", fmt, path, vol.size)
        return info

    def remove(self, vol: VolumeSpec) -> None:
        """Remove the image file and the directories it leaves empty below the storage dir.

        Raises:
            StorageError: bad path (INVALID), or the file exists but cannot be removed.
        """
        path = self.check_path(vol)
        with self._dir_lock:
            try:
                removed = _unlink(path)
            except OSError as exc:
                raise _os_error("cannot remove", path, exc) from exc
            self._prune_dirs(os.path.dirname(path), self.storage_dir(vol))
        if removed:
            log.info("removed volume %s", path)

    def grow(self, vol: VolumeSpec, amount: int) -> VolumeInfo:
        """Grow the image by ``amount`` MiB with ``qemu-img resize``.

        NOTE: qemu-img takes the image's write lock, so growing the image of a running QEMU
        guest fails (QEMU holds the lock); the hypervisor has to resize such disks itself.

        Raises:
            StorageError: bad path/format or amount (INVALID), the image is missing
                (NOT_FOUND), the filesystem has less than ``amount`` MiB free (NO_RESOURCES),
                or qemu-img failed (the image keeps its old size).
        """
        path = self.check_path(vol)
        fmt = self._check_format(vol)
        if amount <= 0:
            raise StorageError(
                f"grow amount must be positive, got {amount} MiB",
                kind=ErrorKind.INVALID,
                logical_id=path,
            )
        current = self._info_json(path, fmt)
        if current is None:
            raise StorageError(
                f"volume {path} does not exist", kind=ErrorKind.NOT_FOUND, logical_id=path
            )
        self._check_free(path, amount, "grow")
        new_bytes = current.virtual_size + amount * MiB
        self._qemu_img(["resize", "-q", "-f", fmt, path, str(new_bytes)], path)
        info = self._inspect(path, fmt, vol.logical_id)
        log.info("grew volume %s by %d MiB to %d MiB", path, amount, info.size)
        return info

    def check_grow(self, vol: VolumeSpec, amount: int) -> None:
        """See :meth:`StorageDriver.check_grow`: path, amount and free space.

        Raises:
            StorageError: bad path or amount (INVALID), not enough room (NO_RESOURCES).
        """
        path = self.check_path(vol)
        super().check_grow(vol, amount)
        self._check_free(path, amount, "grow")

    def find(self, vol: VolumeSpec) -> VolumeInfo | None:
        """Inspect the image with ``qemu-img info``; None when the file does not exist.

        Raises:
            StorageError: bad path/format (INVALID), or the file exists but is not an image of
                the expected format or cannot be read.
        """
        path = self.check_path(vol)
        fmt = self._check_format(vol)
        data = self._info_json(path, fmt)
        if data is None:
            return None
        return _volume_info(vol.logical_id, path, data)

    def rename(self, vol: VolumeSpec, new_logical_id: str) -> VolumeInfo:
        """Move the image to ``new_logical_id`` (inside the same storage dir).

        Renaming to a name that already holds the volume while the old one is gone succeeds
        (a retried rename). Directories left empty by the move are removed.

        Raises:
            StorageError: a bad path (INVALID), the volume is missing (NOT_FOUND), the new path
                is taken (EXISTS), or the filesystem refused the move.
        """
        src = self.check_path(vol)
        dst = self.check_path(vol, new_logical_id)
        fmt = self._check_format(vol)
        if src == dst:
            found = self.find(vol)
            if found is None:
                raise StorageError(
                    f"volume {src} does not exist", kind=ErrorKind.NOT_FOUND, logical_id=src
                )
            return found
        with self._dir_lock:
            src_exists = os.path.lexists(src)
            dst_exists = os.path.lexists(dst)
            if not src_exists and dst_exists:
                log.info("volume %s was already renamed to %s", src, dst)
            elif not src_exists:
                raise StorageError(
                    f"volume {src} does not exist", kind=ErrorKind.NOT_FOUND, logical_id=src
                )
            elif dst_exists:
                raise StorageError(
                    f"cannot rename {src}: {dst} already exists",
                    kind=ErrorKind.EXISTS,
                    logical_id=src,
                    new_logical_id=dst,
                )
            else:
                with Reverter() as rv:
                    self._make_parents(dst, self.storage_dir(vol), rv)
                    try:
                        os.rename(src, dst)
                    except OSError as exc:
                        raise _os_error("cannot rename", src, exc) from exc
                    rv.success()
                self._prune_dirs(os.path.dirname(src), self.storage_dir(vol))
                log.info("renamed volume %s to %s", src, dst)
        return self._inspect(dst, fmt, new_logical_id)

    def space(self, location: str) -> tuple[int, int]:
        """Total and free MiB of the filesystem that holds (or will hold) ``location``.

        A directory that does not exist yet is measured on its nearest existing parent.

        Raises:
            StorageError: ``location`` is not absolute or the filesystem cannot be queried.
        """
        if not os.path.isabs(location):
            raise StorageError(
                f"storage location must be absolute, got {location!r}", kind=ErrorKind.INVALID
            )
        probe = _existing_ancestor(self._host(location))
        try:
            st = os.statvfs(probe)
        except OSError as exc:
            raise _os_error("cannot measure", location, exc) from exc
        return st.f_blocks * st.f_frsize // MiB, st.f_bavail * st.f_frsize // MiB

    def list_volumes(self, storage_dir: str) -> list[str]:
        """The logical ids (cluster paths) of every image file below ``storage_dir``.

        Used by cluster verify to find orphan volumes. Symbolic links and anything but
        regular files are skipped; a missing directory holds no volumes.

        Raises:
            StorageError: ``storage_dir`` is not absolute (INVALID) or cannot be read.
        """
        if not os.path.isabs(storage_dir):
            raise StorageError(
                f"storage dir must be absolute, got {storage_dir!r}", kind=ErrorKind.INVALID
            )
        base = os.path.normpath(storage_dir)
        host_base = self._host(base)
        found: list[str] = []

        def fail(exc: OSError) -> None:
            raise _os_error("cannot list", host_base, exc) from exc

        if not os.path.isdir(host_base):
            return []
        for dirpath, _dirs, files in os.walk(host_base, onerror=fail):
            for name in files:
                full = os.path.join(dirpath, name)
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                found.append(base + full[len(host_base) :])
        return sorted(found)

    # --- helpers -------------------------------------------------------------------------

    def _make_parents(self, path: str, base: str, rv: Reverter) -> None:
        """Create missing directories down to ``path``'s parent (undone on failure).

        The storage dir itself is created if missing (it is configuration, and is kept).
        """
        try:
            os.makedirs(base, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise _os_error("cannot create the file storage dir", base, exc) from exc
        missing: list[str] = []
        parent = os.path.dirname(path)
        while not os.path.isdir(parent) and _is_within(parent, base, allow_equal=False):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o750)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _os_error("cannot create directory", directory, exc) from exc
            rv.add(functools.partial(os.rmdir, directory), f"rmdir {directory}")

    @staticmethod
    def _prune_dirs(directory: str, base: str) -> None:
        """Remove empty directories from ``directory`` up to (not including) ``base``."""
        while _is_within(directory, base, allow_equal=False):
            try:
                os.rmdir(directory)
            except OSError:
                return  # not empty (or already gone): stop climbing
            directory = os.path.dirname(directory)

    def _check_free(self, path: str, need_mib: int, what: str) -> None:
        _total, free = self.space(os.path.dirname(path))
        if free < need_mib:
            raise StorageError(
                f"not enough space to {what} {path}: need {need_mib} MiB, "
                f"{free} MiB free on its filesystem",
                kind=ErrorKind.NO_RESOURCES,
                logical_id=path,
                needed=need_mib,
                free=free,
            )

    def _qemu_img(self, args: list[str], path: str) -> str:
        argv = ["qemu-img", *args]
        try:
            return self._run(argv, timeout=QEMU_IMG_TIMEOUT, c_locale=True).stdout
        except CommandError as exc:
            raise StorageError(
                f"qemu-img {args[0]} failed for {path}: "
                f"{(exc.stderr.strip() or exc.stdout.strip() or exc.message)[-2000:]}",
                logical_id=path,
                argv=argv,
                stderr=exc.stderr[-4000:],
            ) from exc

    def _info_json(self, path: str, fmt: str) -> ImageInfo | None:
        """``qemu-img info`` as a dict, or None when the file does not exist."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error("cannot inspect", path, exc) from exc
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise StorageError(
                f"volume {path} is not a regular file", kind=ErrorKind.INVALID, logical_id=path
            )
        # -U (force share): read the header even while a running QEMU holds the image lock.
        out = self._qemu_img(["info", "-U", "--output=json", "-f", fmt, path], path)
        return parse_qemu_img_info(out, path)

    def _inspect(self, path: str, fmt: str, logical_id: str) -> VolumeInfo:
        data = self._info_json(path, fmt)
        if data is None:
            raise StorageError(
                f"volume {path} disappeared", kind=ErrorKind.NOT_FOUND, logical_id=path
            )
        return _volume_info(logical_id, path, data)


@dataclasses.dataclass(frozen=True, slots=True)
class ImageInfo:
    """The parts of ``qemu-img info`` the driver uses (sizes in bytes)."""

    virtual_size: int
    actual_size: int
    format: str


def parse_qemu_img_info(text: str, path: str) -> ImageInfo:
    """Parse ``qemu-img info --output=json`` (pure).

    Raises:
        StorageError: the text is not a JSON object with an integer ``virtual-size`` and a
            ``format`` string.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(
            f"cannot parse qemu-img info output for {path}: {exc}", logical_id=path
        ) from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("virtual-size"), int)
        or not isinstance(data.get("format"), str)
    ):
        raise StorageError(
            f"unexpected qemu-img info output for {path}: {text[:200]!r}", logical_id=path
        )
    actual = data.get("actual-size")
    return ImageInfo(
        virtual_size=data["virtual-size"],
        actual_size=actual if isinstance(actual, int) else 0,
        format=data["format"],
    )


def _volume_info(logical_id: str, path: str, data: ImageInfo) -> VolumeInfo:
    return VolumeInfo(
        logical_id=logical_id,
        path=path,
        size=data.virtual_size // MiB,
        format=data.format,
        allocated=-(-data.actual_size // MiB),
    )


def _path_problem(path: object, base: str) -> str | None:
    """Why ``path`` is not an acceptable image path below ``base`` (pure), or None."""
    if not isinstance(path, str) or not path:
        return "empty path"
    if "\0" in path or "\n" in path:
        return "contains NUL or newline characters"
    if not os.path.isabs(path):
        return "not an absolute path"
    if ".." in path.split("/"):
        return "contains '..'"
    if os.path.normpath(path) != path:
        return "not a normalised path"
    if not _is_within(path, base, allow_equal=False):
        return f"not inside the file storage dir {base}"
    return None


def _is_within(path: str, base: str, *, allow_equal: bool) -> bool:
    base = base.rstrip("/") or "/"
    if path == base:
        return allow_equal
    prefix = base if base.endswith("/") else base + "/"
    return path.startswith(prefix)


def _existing_ancestor(path: str) -> str:
    path = os.path.normpath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _os_error(what: str, path: str, exc: OSError) -> StorageError:
    no_room = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    kind = ErrorKind.NO_RESOURCES if no_room else ErrorKind.ENVIRONMENT
    return StorageError(f"{what} {path}: {exc.strerror or exc}", kind=kind, logical_id=path)

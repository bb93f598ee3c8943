"""Running QEMU as an unprivileged user, from a uid pool, optionally chrooted.

``security_model`` (hvparam):

* ``none`` — QEMU stays root (Ganeti's default).
* ``user`` — QEMU switches to the ``security_domain`` user (its uid, primary group and
  supplementary groups) once it has opened everything it needs.
* ``pool`` — QEMU switches to a uid of the node's pool, with gid = uid and no supplementary
  groups. Two running guests never share a uid, so one compromised guest cannot touch another
  guest's process or files.

The pool is a **node-level** setting: the file ``<data_dir>/kvm-uid-pool`` (``var/lib/corral``
under the node's root) lists uids in Ganeti's ``uid_pool`` syntax, ranges and single uids
separated by commas or newlines, ``#`` starting a comment::

    # uids for QEMU guests
    20000-20999, 21500

Pool uids need no ``/etc/passwd`` entry (QEMU accepts ``uid:gid``) and must not be used by
anything else; uid 0 is refused. It is a node file rather than an hvparam because uids are a
property of the host (which uids are free differs between nodes) and an instance-level
override of a pool would make no sense.

Allocation (:class:`UidPool`) runs under a node-wide ``flock`` (``<run_dir>/.uids/.lock``):
a uid is taken by writing ``<run_dir>/.uids/<uid>`` holding the instance name, and the uid is
also recorded in the instance's runtime file (``security``). A uid is handed out only when no
registry file claims it for a guest that still runs (an entry whose guest is gone is reclaimed)
and no process on the host runs with it. Stopping the guest releases it.

How QEMU gets its files: QEMU opens disks, kernel, initrd, firmware, sockets, the serial log
and the pid file as root, *then* drops privileges (``-runas``/``-run-with user=``, "just before
starting the VM"). What it opens later runs as the unprivileged uid: hot-plugged disks, new
sockets in the run directory, migration files. So the driver chowns the per-instance run
directory (mode 0700) and the disk images (while the guest runs; the previous owner is
recorded in the runtime and restored at stop) to the uid. What QEMU creates there (sockets,
pid file) and the serial log are made private (no group/other bits) right after it started:
``-daemonize`` sets QEMU's umask to 027 whatever it was started with.

``use_chroot`` puts QEMU into an empty, root-owned directory (``<chroot_dir>/<instance>``,
default ``<run_dir>/<instance>/chroot``) after it opened its files: nothing of the host is
visible to it afterwards. NOTE: paths given to QEMU later (disk hotplug, ``exec:``
migration) are resolved inside the chroot and therefore fail; use ``use_chroot`` for guests
that do not need them.

QEMU 9.1 replaced ``-runas`` with ``-run-with user=`` and 8.1 ``-chroot`` with
``-run-with chroot=``; :func:`process_args` uses whatever the probed binary offers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import pwd
import re
from collections.abc import Callable, Iterator, Sequence

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.kvm.devices import param_error, qemu_escape
from corral.hypervisor.kvm.probe import QemuCaps

log = logging.getLogger(__name__)

#: The node file listing the uid pool, relative to the node's data directory.
UID_POOL_FILE = "kvm-uid-pool"
#: Largest uid accepted in a pool (Linux uids are 32-bit; (uid_t)-1 is "no uid").
MAX_UID = 2**32 - 2


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunAs:
    """Who QEMU becomes: ``qemu_user`` is what goes on its command line."""

    uid: int
    gid: int
    qemu_user: str  # a user name (security_model=user) or "uid:gid" (pool)


# --- command line (pure) ---------------------------------------------------------------------


def process_args(caps: QemuCaps, run_as: RunAs | None, chroot: str) -> list[str]:
    """The options dropping privileges and chrooting, in the form ``caps`` offers.

    Prefers ``-run-with user=``/``chroot=`` (QEMU 9.1/8.1) and falls back to ``-runas`` and
    ``-chroot``.

    Raises:
        HypervisorError: kind INVALID naming ``security_model`` or ``use_chroot`` when the
            binary offers neither form.
    """
    run_with: list[str] = []
    argv: list[str] = []
    if chroot:
        if "chroot" in caps.run_with:
            run_with.append(f"chroot={qemu_escape(chroot)}")
        elif caps.has_option("-chroot"):
            argv += ["-chroot", chroot]
        else:
            raise param_error(
                f"use_chroot: {caps.binary} (QEMU {caps.version}) has neither "
                "-run-with chroot= nor -chroot",
                "use_chroot",
            )
    if run_as is not None:
        if "user" in caps.run_with:
            run_with.append(f"user={run_as.qemu_user}")
        elif caps.has_option("-runas"):
            argv += ["-runas", run_as.qemu_user]
        else:
            raise param_error(
                f"security_model: {caps.binary} (QEMU {caps.version}) has neither "
                "-run-with user= nor -runas",
                "security_model",
            )
    if run_with:
        argv = ["-run-with", ",".join(run_with), *argv]
    return argv


def user_run_as(name: str) -> RunAs:
    """The :class:`RunAs` of an existing user (``security_model=user``).

    Raises:
        HypervisorError: kind INVALID naming ``security_domain`` when the user does not exist
            or is root.
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise param_error(
            f"security_domain: user {name!r} does not exist on this node", "security_domain"
        ) from None
    if entry.pw_uid == 0:
        raise param_error(
            f"security_domain: {name!r} is root; QEMU would not drop any privilege",
            "security_domain",
        )
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, qemu_user=name)


def pool_run_as(uid: int) -> RunAs:
    """The :class:`RunAs` of a pool uid (gid = uid)."""
    return RunAs(uid=uid, gid=uid, qemu_user=f"{uid}:{uid}")


# --- the uid pool ------------------------------------------------------------------------------


def parse_uid_pool(text: str) -> list[int]:
    """Uids of a pool file, in order, without duplicates.

    Raises:
        ValueError: a bad entry, uid 0, or a backwards range (the message names it).
    """
    uids: dict[int, None] = {}
    for number, line in enumerate(text.splitlines(), 1):
        for item in line.split("#", 1)[0].split(","):
            item = item.strip()
            if not item:
                continue
            m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
            if m is None:
                raise ValueError(f"line {number}: {item!r} is not a uid or a uid range (a-b)")
            low = int(m.group(1))
            high = int(m.group(2)) if m.group(2) else low
            if low > high:
                raise ValueError(f"line {number}: range {item!r} runs backwards")
            if low == 0:
                raise ValueError(f"line {number}: uid 0 (root) cannot be in the pool")
            if high > MAX_UID:
                raise ValueError(f"line {number}: uid {high} is out of range")
            for uid in range(low, high + 1):
                uids[uid] = None
    return list(uids)


def process_uids(proc: str = "/proc") -> set[int]:
    """Real uids of every process on the host (from ``/proc/<pid>/status``)."""
    found: set[int] = set()
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "status"), encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        found.add(int(line.split()[1]))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return found


class UidPool:
    """Hands out pool uids to instances without conflicts (see the module docstring).

    Args:
        pool_file: the node's pool file.
        registry: directory of the claims (``<run_dir>/.uids``).
        owner_alive: ``owner_alive(instance, uid)`` tells whether a claim is still in use
            (the instance's guest runs with that uid, or an operation on it is under way).
        proc: the procfs mount (processes already running with a uid exclude it).
    """

    def __init__(
        self,
        pool_file: str,
        registry: str,
        *,
        owner_alive: Callable[[str, int], bool],
        proc: str = "/proc",
    ) -> None:
        self.pool_file = pool_file
        self.registry = registry
        self.owner_alive = owner_alive
        self.proc = proc

    def uids(self) -> list[int]:
        """The uids of the pool file.

        Raises:
            HypervisorError: kind INVALID naming ``security_model`` when the file is missing,
                unreadable, malformed or empty.
        """
        try:
            with open(self.pool_file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise param_error(
                f"security_model=pool needs a uid pool in {self.pool_file} "
                f"(e.g. '20000-20999'): {exc.strerror}",
                "security_model",
            ) from exc
        try:
            uids = parse_uid_pool(text)
        except ValueError as exc:
            raise param_error(
                f"security_model=pool: bad uid pool {self.pool_file}: {exc}", "security_model"
            ) from exc
        if not uids:
            raise param_error(
                f"security_model=pool: the uid pool {self.pool_file} is empty", "security_model"
            )
        return uids

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            os.makedirs(self.registry, mode=0o700, exist_ok=True)
            fd = os.open(
                os.path.join(self.registry, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise HypervisorError(
                f"cannot open the uid pool lock in {self.registry}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _claim_path(self, uid: int) -> str:
        return os.path.join(self.registry, str(uid))

    def owner(self, uid: int) -> str | None:
        """The instance claiming ``uid``, or None."""
        try:
            with open(self._claim_path(uid), encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError:
            return None

    def _write_claim(self, uid: int, instance: str) -> None:
        path = self._claim_path(uid)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(instance + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise HypervisorError(f"cannot record uid {uid}: {exc.strerror}") from exc

    def _free_for(self, uid: int, instance: str, busy: set[int]) -> bool:
        owner = self.owner(uid)
        if owner == instance:
            return True
        if owner is not None and self.owner_alive(owner, uid):
            return False
        if uid in busy:  # a process runs with it: someone else's, or an untracked guest
            return False
        if owner is not None:
            log.info("uid pool: reclaiming uid %d from %s (its guest is gone)", uid, owner)
        return True

    def allocate(self, instance: str, *, prefer: int | None = None) -> int:
        """A uid for ``instance`` (``prefer`` when it is still free for it), now claimed.

        Asking again for the same instance returns its current claim.

        Raises:
            HypervisorError: kind INVALID for a missing/bad pool file (naming
                ``security_model``); kind TEMP_NO_RESOURCES when every uid is in use.
        """
        uids = self.uids()
        with self._locked():
            busy = process_uids(self.proc)
            candidates: Sequence[int] = uids
            if prefer is not None and prefer in uids:
                candidates = [prefer, *uids]
            else:
                held = [u for u in uids if self.owner(u) == instance]
                candidates = [*held, *uids]
            for uid in candidates:
                if self._free_for(uid, instance, busy):
                    self._write_claim(uid, instance)
                    return uid
        raise HypervisorError(
            f"no free uid in the pool {self.pool_file} for {instance}: all {len(uids)} are "
            "used by running guests or other processes",
            kind=ErrorKind.TEMP_NO_RESOURCES,
            param="security_model",
        )

    def release(self, instance: str, uid: int) -> None:
        """Give ``uid`` back (only if ``instance`` still holds it); never raises."""
        try:
            with self._locked():
                if self.owner(uid) == instance:
                    os.unlink(self._claim_path(uid))
        except (OSError, HypervisorError) as exc:
            log.warning("uid pool: cannot release uid %d of %s: %s", uid, instance, exc)


# --- files QEMU must reach -------------------------------------------------------------------


def grant(path: str, uid: int, gid: int) -> tuple[int, int]:
    """Make ``path`` owned by ``uid:gid``; return its previous ``(uid, gid)``.

    Raises:
        HypervisorError: the path cannot be changed (kind ENVIRONMENT).
    """
    try:
        st = os.stat(path)
        os.chown(path, uid, gid)
    except OSError as exc:
        raise HypervisorError(
            f"cannot give {path} to uid {uid}: {exc.strerror}",
            kind=ErrorKind.ENVIRONMENT,
            path=path,
        ) from exc
    return st.st_uid, st.st_gid


def restore(owned: Sequence[Sequence[object]]) -> None:
    """Give paths back to their previous owners (``[path, uid, gid]`` rows); never raises."""
    for row in owned:
        path, uid, gid = str(row[0]), int(str(row[1])), int(str(row[2]))
        try:
            os.chown(path, uid, gid)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot give %s back to %d:%d: %s", path, uid, gid, exc.strerror)


def make_chroot(path: str) -> None:
    """Create the empty, root-owned chroot directory (mode 0755).

    Raises:
        HypervisorError: kind INVALID naming ``chroot_dir`` when it exists and is not empty
            (a chroot must show QEMU nothing), or it cannot be created.
    """
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
        entries = os.listdir(path)
    except OSError as exc:
        raise HypervisorError(
            f"cannot create the chroot directory {path}: {exc.strerror}",
            kind=ErrorKind.ENVIRONMENT,
            param="chroot_dir",
        ) from exc
    if entries:
        raise param_error(
            f"chroot_dir: the chroot directory {path} is not empty "
            f"({', '.join(sorted(entries)[:5])}); empty or remove it",
            "chroot_dir",
        )


def remove_chroot(path: str) -> None:
    """Remove an (empty) chroot directory; never raises."""
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT,):
            log.warning("cannot remove chroot directory %s: %s", path, exc.strerror)

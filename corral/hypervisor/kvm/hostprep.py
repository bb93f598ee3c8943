"""What the node prepares around a QEMU start: probed facts, uid, chroot, secrets, UEFI store.

The pure builder (:mod:`cmdline`) gets everything host-specific from a
:class:`~corral.hypervisor.kvm.cmdline.HostFacts` made here by :meth:`KvmHostPrep._host_facts`
(probed capabilities, the uid QEMU runs as, the chroot and UEFI store paths). Right before
QEMU runs, :meth:`KvmHostPrep._prepare_host` (called by the driver's ``_launch`` with the
instance lock held) makes those real: it claims the uid again (a soft reboot or a migration
destination replays the runtime), creates the chroot and the UEFI variables store, writes the
password secret files (mode 0600) and hands the run directory and the disks to QEMU's uid.
Everything is recorded in the runtime's ``security`` field and undone by
:meth:`KvmHostPrep._cleanup_files` when the guest is gone (owners restored, uid released,
chroot removed). See :mod:`security` and :mod:`firmware` for the policies.

For other feature modules: a disk attached to a running guest (hotplug) must be made
accessible with :meth:`KvmHostPrep._grant_disk` when QEMU runs unprivileged; a migration
destination that rebuilds its command line gets its host facts from :meth:`_host_facts`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Mapping
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.common.fileio import write_atomic
from corral.common.revert import Reverter
from corral.hypervisor.base import InstanceSpec
from corral.hypervisor.kvm import firmware, security
from corral.hypervisor.kvm.accel import AccelChoice
from corral.hypervisor.kvm.cmdline import HostFacts
from corral.hypervisor.kvm.core import KvmCore
from corral.hypervisor.kvm.devices import qemu_escape, secret_file
from corral.hypervisor.kvm.pci import split_options
from corral.hypervisor.kvm.probe import QemuCaps, check_supported
from corral.hypervisor.kvm.process import QemuProcess
from corral.hypervisor.kvm.runtime import InstanceLayout, KvmRuntime

log = logging.getLogger(__name__)

#: hvparam of the password file, hvparam that enables the console, per secret kind.
_SECRETS = {
    "vnc": ("vnc_password_file", "vnc_bind_address"),
    "spice": ("spice_password_file", "spice_bind"),
}


def read_password(path: str, key: str) -> str:
    """The first line of a password file (without the line end).

    Raises:
        HypervisorError: kind INVALID naming ``key`` when it cannot be read or is empty.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise HypervisorError(
            f"{key}: cannot read {path}: {reason}", kind=ErrorKind.INVALID, param=key
        ) from exc
    if not first:
        raise HypervisorError(
            f"{key}: the first line of {path} (the password) is empty",
            kind=ErrorKind.INVALID,
            param=key,
        )
    return first


def private_files(directory: str) -> None:
    """Remove group and other permissions from every entry of ``directory``; never raises."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                os.chmod(entry.path, stat.S_IMODE(mode) & 0o700)
        except OSError as exc:
            log.warning("cannot tighten the permissions of %s: %s", entry.path, exc.strerror)


def _replace_user(argv: list[str], old: str, new: str) -> list[str]:
    """``argv`` with QEMU's run-as user ``old`` replaced by ``new`` (either option form)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "-runas" and out[i + 1] == old:
            out[i + 1] = new
        elif arg == "-run-with":
            parts = [f"user={new}" if p == f"user={old}" else p for p in out[i + 1].split(",")]
            out[i + 1] = ",".join(parts)
    return out


class KvmHostPrep(KvmCore):
    """Host preparation around QEMU starts (see the module docstring)."""

    # --- facts ---------------------------------------------------------------------------

    def qemu_caps(self, binary: str) -> QemuCaps:
        """The probed capabilities of a QEMU binary, refusing versions too old.

        Raises:
            HypervisorError: kind ENVIRONMENT: missing binary, failed probe, QEMU < 4.2.
        """
        caps = self.facts.caps(binary)
        check_supported(caps)
        return caps

    def uid_pool(self) -> security.UidPool:
        """The node's uid pool (``<data_dir>/kvm-uid-pool``, claims in ``<run_dir>/.uids``)."""
        return security.UidPool(
            os.path.join(self.data_dir, security.UID_POOL_FILE),
            os.path.join(self.run_dir, ".uids"),
            owner_alive=self._uid_in_use,
            proc=self.proc,
        )

    def _uid_in_use(self, name: str, uid: int) -> bool:
        """Whether instance ``name`` still uses pool ``uid`` (an operation on it counts)."""
        try:
            layout = self._layout(name)
        except HypervisorError:
            return False
        with self._lock(layout, wait=False) as locked:
            if not locked:  # it is being started/stopped right now: keep its uid
                return True
            runtime = self._load(layout)
            if runtime is None or runtime.security.get("uid") != uid:
                return False
            return self._process(layout, runtime) is not None

    def _chroot_path(self, layout: InstanceLayout, hv: Mapping[str, Any]) -> str:
        base = str(hv["chroot_dir"])
        return os.path.join(base, layout.name) if base else os.path.join(layout.dir, "chroot")

    def _host_facts(
        self,
        spec: InstanceSpec,
        hv: Mapping[str, Any],
        layout: InstanceLayout,
        choice: AccelChoice,
    ) -> tuple[HostFacts, dict[str, Any]]:
        """The host facts for ``build_plan`` and the runtime's ``security`` record.

        With ``security_model=pool`` a uid is claimed for the instance here; the caller
        releases it with :meth:`_release_security` if the start fails before ``_launch``.

        Raises:
            HypervisorError: the probe failed or QEMU is too old (ENVIRONMENT), the security
                domain user does not exist or the pool is missing (INVALID), no free uid
                (TEMP_NO_RESOURCES).
        """
        caps = self.qemu_caps(hv["kvm_path"])
        record: dict[str, Any] = {"model": hv["security_model"]}
        run_as: security.RunAs | None = None
        if hv["security_model"] == "user":
            run_as = security.user_run_as(str(hv["security_domain"]))
        elif hv["security_model"] == "pool":
            run_as = security.pool_run_as(self.uid_pool().allocate(spec.name))
        if run_as is not None:
            record.update(uid=run_as.uid, gid=run_as.gid, user=run_as.qemu_user)
        chroot = self._chroot_path(layout, hv) if hv["use_chroot"] else ""
        nvram = firmware.nvram_path(self.data_dir, spec.uuid) if hv["firmware"] == "uefi" else ""
        if chroot:
            record["chroot"] = chroot
        if nvram:
            record["nvram"] = nvram
        host = HostFacts(
            qemu_binary=hv["kvm_path"],
            qemu_version=caps.version,
            accel=choice.accel,
            caps=caps,
            run_as=run_as,
            chroot=chroot,
            nvram=nvram,
        )
        return host, record

    def _release_security(self, name: str, record: Mapping[str, Any]) -> None:
        """Give back what :meth:`_host_facts` claimed (the pool uid); never raises."""
        if record.get("model") == "pool" and "uid" in record:
            self.uid_pool().release(name, int(record["uid"]))

    # --- right before QEMU runs -----------------------------------------------------------

    def _prepare_host(self, layout: InstanceLayout, runtime: KvmRuntime, rv: Reverter) -> None:
        """Make the runtime's host state real (the run directory exists, lock held).

        Every step registers its undo in ``rv``.

        Raises:
            HypervisorError: a password file is unreadable (INVALID), the pool has no free
                uid (TEMP_NO_RESOURCES), the chroot is not empty (INVALID), a file cannot be
                created or handed over (ENVIRONMENT).
        """
        hv = runtime.hvparams
        record = runtime.security
        for kind, (key, enabled) in _SECRETS.items():
            if hv.get(key) and hv.get(enabled):
                password = read_password(str(hv[key]), key)
                try:
                    write_atomic(secret_file(layout.dir, kind), password, mode=0o600)
                except OSError as exc:
                    raise HypervisorError(
                        f"cannot write the {kind} secret file: {exc.strerror}",
                        kind=ErrorKind.ENVIRONMENT,
                    ) from exc
        self._rebase_paths(layout, runtime)
        nvram = str(record.get("nvram", ""))
        if nvram and firmware.ensure_nvram(str(hv["ovmf_vars_template"]), nvram):
            log.info("%s: created UEFI variables store %s", runtime.name, record["nvram"])
        if record.get("model") == "pool" and "uid" in record:
            old = int(record["uid"])
            uid = self.uid_pool().allocate(runtime.name, prefer=old)
            rv.add(lambda: self.uid_pool().release(runtime.name, uid), "release uid")
            if uid != old:  # taken meanwhile (or another node's uid after a migration)
                new_user = security.pool_run_as(uid).qemu_user
                runtime.argv = _replace_user(runtime.argv, str(record["user"]), new_user)
                record.update(uid=uid, gid=uid, user=new_user)
                log.info("%s: runs as uid %d now (%d was taken)", runtime.name, uid, old)
        if record.get("chroot"):
            chroot = str(record["chroot"])
            security.make_chroot(chroot)
            rv.add(lambda: security.remove_chroot(chroot), "remove chroot")
        if "uid" in record:
            uid, gid = int(record["uid"]), int(record["gid"])
            security.grant(layout.dir, uid, gid)
            owned: list[list[Any]] = []
            record["owned"] = owned
            rv.add(lambda: security.restore(owned), "restore disk owners")
            for disk in runtime.disks:
                self._grant_disk(runtime, disk.path, owned)

    def _rebase_paths(self, layout: InstanceLayout, runtime: KvmRuntime) -> None:
        """Point a replayed runtime's UEFI store and chroot at this node's paths.

        A migration destination or a restore replays another node's (or root's) argv: the
        variables store lives under *this* node's data directory, and a chroot under this
        instance directory.
        """
        record = runtime.security
        options: dict[str, str] = {}  # "key=old" -> "key=new" inside option strings
        chroot_move: tuple[str, str] | None = None
        if record.get("nvram"):
            want = firmware.nvram_path(self.data_dir, runtime.uuid)
            if record["nvram"] != want:
                options[f"filename={record['nvram']}"] = f"filename={want}"
                record["nvram"] = want
        if record.get("chroot"):
            want = self._chroot_path(layout, runtime.hvparams)
            if record["chroot"] != want:
                options[f"chroot={record['chroot']}"] = f"chroot={want}"
                chroot_move = (str(record["chroot"]), want)
                record["chroot"] = want
        argv: list[str] = []
        for arg in runtime.argv:
            if chroot_move and argv and argv[-1] == "-chroot" and arg == chroot_move[0]:
                arg = chroot_move[1]
            elif options and "=" in arg:
                parts = split_options(arg)
                if any(p in options for p in parts):
                    arg = ",".join(qemu_escape(options.get(p, p)) for p in parts)
            argv.append(arg)
        runtime.argv = argv

    def _grant_disk(
        self, runtime: KvmRuntime, path: str, owned: list[list[Any]] | None = None
    ) -> None:
        """Hand a disk to the uid QEMU runs as (no-op when it runs as root).

        The previous owner is recorded in ``runtime.security["owned"]`` and restored when the
        guest is cleaned up. Hotplug calls this before ``blockdev-add`` (then saves the
        runtime).

        Raises:
            HypervisorError: kind ENVIRONMENT when the disk cannot be chowned.
        """
        record = runtime.security
        if "uid" not in record:
            return
        rows = owned if owned is not None else record.setdefault("owned", [])
        if any(row[0] == path for row in rows):
            return
        before = security.grant(path, int(record["uid"]), int(record["gid"]))
        rows.append([path, *before])

    def _after_launch(
        self, layout: InstanceLayout, runtime: KvmRuntime, proc: QemuProcess, *, incoming: bool
    ) -> None:
        """Make what QEMU created private (sockets, pid file, serial log), then the rest.

        NOTE: ``-daemonize`` makes QEMU set its umask to 027 (``os_daemonize``), overriding the
        077 it was started with, so its sockets come out 0750 and files 0640 (group root).
        They are tightened here, before anyone else may connect.
        """
        private_files(layout.dir)
        with contextlib.suppress(OSError):
            os.chmod(layout.serial_log, 0o600)
        super()._after_launch(layout, runtime, proc, incoming=incoming)

    # --- after the guest is gone ------------------------------------------------------------

    def _cleanup_files(self, layout: InstanceLayout, runtime: KvmRuntime | None) -> None:
        """Undo :meth:`_prepare_host` (owners, uid, chroot), then remove the run files."""
        record = runtime.security if runtime is not None else {}
        if record.get("owned"):
            security.restore(record["owned"])
            record["owned"] = []
        if record.get("chroot"):
            security.remove_chroot(str(record["chroot"]))
        if record.get("model") == "pool" and "uid" in record:
            self.uid_pool().release(layout.name, int(record["uid"]))
        super()._cleanup_files(layout, runtime)

"""The container's root filesystem on the host: loop devices, the mount and its sub-mounts.

Disk 0 of an LXC instance holds the root filesystem. A regular file (the ``file`` and
``sharedfile`` templates) is attached to a loop device with ``losetup``; a block device is
mounted directly. The mount point is under the driver's run directory. Unmounting also
removes whatever got mounted below it (a container that mounted things on its rootfs from the
host side, a ``lxc.mount.entry``), deepest first.

Everything goes through :mod:`corral.common.runcmd`; mount tables are parsed from
``/proc/self/mountinfo`` text (pure functions, tested with captured text).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat

from corral.common.errors import CommandError, ErrorKind, HypervisorError
from corral.common.runcmd import Runner

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
TOOL_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of ``/proc/<pid>/mountinfo``."""

    mount_point: str
    root: str
    fstype: str
    source: str
    options: str
    super_options: str


def _unescape(text: str) -> str:
    # NOTE: the kernel escapes space, tab, newline and backslash as \\ooo octal in mountinfo.
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text (malformed lines are skipped)."""
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rest = right.split()
        if len(fields) < 6 or len(rest) < 2:
            continue
        entries.append(
            MountEntry(
                mount_point=_unescape(fields[4]),
                root=_unescape(fields[3]),
                fstype=rest[0],
                source=_unescape(rest[1]),
                options=fields[5],
                super_options=rest[2] if len(rest) > 2 else "",
            )
        )
    return entries


def read_mountinfo(path: str = MOUNTINFO) -> list[MountEntry]:
    """The current mount table.

    Raises:
        HypervisorError: it cannot be read.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return parse_mountinfo(fh.read())
    except OSError as exc:
        raise HypervisorError(f"cannot read {path}: {exc.strerror}") from exc


def mounts_under(entries: list[MountEntry], target: str) -> list[str]:
    """Mount points at or below ``target``, deepest (and latest) first: the unmount order."""
    target = os.path.normpath(target)
    found = [
        (i, e.mount_point)
        for i, e in enumerate(entries)
        if e.mount_point == target or e.mount_point.startswith(target + "/")
    ]
    # Later mounts stack on earlier ones; deeper paths must go before their parents.
    found.sort(key=lambda item: (item[1].count("/"), item[0]), reverse=True)
    return [mp for _, mp in found]


def is_mounted(target: str, entries: list[MountEntry] | None = None) -> bool:
    """Whether something is mounted exactly at ``target``."""
    table = read_mountinfo() if entries is None else entries
    target = os.path.normpath(target)
    return any(e.mount_point == target for e in table)


# --- loop devices --------------------------------------------------------------------------


def parse_losetup_json(text: str) -> dict[str, str]:
    """``losetup --list --json`` output as loop device -> backing file."""
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    out: dict[str, str] = {}
    for dev in data.get("loopdevices", []) if isinstance(data, dict) else []:
        name, back = dev.get("name"), dev.get("back-file")
        if isinstance(name, str) and isinstance(back, str):
            # NOTE: util-linux appends " (deleted)" when the backing file was removed.
            out[name] = back.removesuffix(" (deleted)").strip()
    return out


def loops_backing(runner: Runner, path: str) -> list[str]:
    """Loop devices attached to the file ``path`` (none when losetup is missing).

    Raises:
        HypervisorError: losetup failed.
    """
    try:
        res = runner(["losetup", "--list", "--json"], timeout=TOOL_TIMEOUT, c_locale=True)
    except CommandError as exc:
        raise HypervisorError(f"cannot list loop devices: {exc}") from exc
    real = os.path.realpath(path)
    return sorted(
        dev
        for dev, back in parse_losetup_json(res.stdout).items()
        if os.path.realpath(back) == real
    )


def attach_loop(runner: Runner, path: str, *, read_only: bool = False) -> str:
    """Attach ``path`` to a free loop device and return the device.

    Raises:
        HypervisorError: losetup failed (its message is included).
    """
    argv = ["losetup", "--find", "--show"]
    if read_only:
        argv.append("--read-only")
    argv.append(path)
    try:
        res = runner(argv, timeout=TOOL_TIMEOUT, c_locale=True)
    except CommandError as exc:
        raise HypervisorError(f"cannot attach {path} to a loop device: {exc}", path=path) from exc
    dev = res.stdout.strip()
    if not dev.startswith("/dev/"):
        raise HypervisorError(f"losetup printed no loop device for {path}: {res.stdout!r}")
    return dev


def detach_loop(runner: Runner, dev: str) -> None:
    """Detach a loop device; one already gone is fine.

    Raises:
        HypervisorError: losetup refused (e.g. the device is still mounted).
    """
    try:
        res = runner(["losetup", "--detach", dev], timeout=TOOL_TIMEOUT, check=False)
    except CommandError as exc:
        raise HypervisorError(f"cannot detach {dev}: {exc}") from exc
    if res.rc != 0 and "No such device" not in res.stderr and os.path.exists(dev):
        raise HypervisorError(f"cannot detach {dev}: {res.stderr.strip()}", device=dev)


# --- mounting ------------------------------------------------------------------------------


def is_block_device(path: str) -> bool:
    """Whether ``path`` is a block device (mounted directly, without a loop device)."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def mount(runner: Runner, device: str, target: str, *, read_only: bool = False) -> None:
    """Mount ``device`` on ``target`` (the filesystem type is detected).

    Raises:
        HypervisorError: kind INVALID when mount fails (no filesystem, unknown type...), with
            mount's message.
    """
    argv = ["mount", "-o", "ro" if read_only else "rw", device, target]
    try:
        runner(argv, timeout=TOOL_TIMEOUT, c_locale=True)
    except CommandError as exc:
        raise HypervisorError(
            f"cannot mount the root disk {device} on {target} (no filesystem? was the OS "
            f"installed?): {exc.stderr.strip() or exc}",
            kind=ErrorKind.INVALID,
            device=device,
        ) from exc


def unmount_tree(runner: Runner, target: str, *, mountinfo: str = MOUNTINFO) -> None:
    """Unmount ``target`` and every mount below it, deepest first.

    A mount that refuses (busy) is detached lazily (``umount -l``) so the tree is gone from
    the namespace either way; nothing mounted is fine.

    Raises:
        HypervisorError: a mount is still there even after the lazy unmount.
    """
    for mp in mounts_under(read_mountinfo(mountinfo), target):
        res = runner(["umount", mp], timeout=TOOL_TIMEOUT, check=False, c_locale=True)
        if res.rc != 0:
            log.warning("umount %s failed (%s); detaching it lazily", mp, res.stderr.strip())
            runner(["umount", "-l", mp], timeout=TOOL_TIMEOUT, check=False)
    left = mounts_under(read_mountinfo(mountinfo), target)
    if left:
        raise HypervisorError(f"cannot unmount {', '.join(left)}", mounts=left)

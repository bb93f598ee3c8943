"""UEFI firmware (OVMF) for KVM guests: the pflash command line and the variables store.

``firmware=uefi`` boots the guest with OVMF (Debian package ``ovmf``): the firmware code is
mapped read-only as the first flash chip (``ovmf_code_path``), and the second chip holds the
guest's UEFI variables (boot entries, Secure Boot keys) in a file of its own, copied once from
``ovmf_vars_template``::

    -blockdev driver=file,node-name=pflash0-file,filename=<code>,read-only=on
    -blockdev driver=raw,node-name=pflash0,file=pflash0-file,read-only=on
    -blockdev driver=file,node-name=pflash1-file,filename=<vars>,read-only=off
    -blockdev driver=raw,node-name=pflash1,file=pflash1-file,read-only=off
    -machine <type>,pflash0=pflash0,pflash1=pflash1,...

Where the variables live: ``<data_dir>/kvm-nvram/<instance uuid>.fd`` on the node (mode
0600). Not in the run directory, which is removed at every stop: a guest's boot entries must
survive a stop. Named by the instance's *uuid* so a rename keeps them. It is created at the
first start with ``firmware=uefi`` and then kept; NOTE: the node backend has no "instance
removed" call yet, so the file stays after the instance is removed (a later issue adds the
hook; deleting it by hand is safe once the instance is gone). After a migration or failover
the destination node starts from its own copy (a fresh one the first time).

OVMF needs memory: instances with less than :data:`UEFI_MIN_MEMORY` MiB are refused
(naming ``firmware``) instead of crashing in the firmware. Plain OVMF works with both ``pc``
and ``q35``; Secure Boot (the ``.secboot`` code with SMM)
needs q35 and is not offered yet. Direct kernel boot (``kernel_path``) works through OVMF's
loader too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from typing import Any

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.kvm.devices import qemu_escape

#: Directory of the per-instance variable stores, under the node's data directory.
NVRAM_DIR = "kvm-nvram"
#: Memory (MiB) below which OVMF is refused. Measured with Debian 12's OVMF 2022.11 under
#: TCG: with 128 MiB it stops with "X64 Exception Type - 06(#UD - Invalid Opcode)" before the
#: kernel runs (pc and q35 alike); 160 MiB boots. 192 leaves room for newer firmware.
UEFI_MIN_MEMORY = 192


def nvram_path(data_dir: str, uuid: str) -> str:
    """The variables store of the instance ``uuid``.

    Raises:
        HypervisorError: kind INVALID for a uuid that is not a plain file name.
    """
    if not uuid or "/" in uuid or uuid.startswith("."):
        raise HypervisorError(f"invalid instance uuid {uuid!r}", kind=ErrorKind.INVALID)
    return os.path.join(data_dir, NVRAM_DIR, f"{uuid}.fd")


def firmware_args(hv: Mapping[str, Any], nvram: str) -> tuple[list[str], list[str]]:
    """``(machine properties, argv)`` for ``firmware=uefi``; empty lists for ``bios``."""
    if hv["firmware"] != "uefi":
        return [], []
    code = qemu_escape(str(hv["ovmf_code_path"]))
    argv = [
        "-blockdev",
        f"driver=file,node-name=pflash0-file,filename={code},read-only=on",
        "-blockdev",
        "driver=raw,node-name=pflash0,file=pflash0-file,read-only=on",
        "-blockdev",
        f"driver=file,node-name=pflash1-file,filename={qemu_escape(nvram)},read-only=off",
        "-blockdev",
        "driver=raw,node-name=pflash1,file=pflash1-file,read-only=off",
    ]
    return ["pflash0=pflash0", "pflash1=pflash1"], argv


def ensure_nvram(template: str, path: str) -> bool:
    """Create the instance's variables store from ``template`` unless it exists.

    The copy is written to a temporary name and renamed, mode 0600. An existing store is
    kept (it holds the guest's boot entries) unless its size differs from the template's,
    which QEMU would refuse; then the message says so and nothing is changed.

    Returns:
        Whether the store was created now.

    Raises:
        HypervisorError: the template cannot be read or the store cannot be written (kind
            ENVIRONMENT), or the existing store does not fit the template (kind INVALID,
            naming ``ovmf_vars_template``).
    """
    try:
        size = os.stat(template).st_size
    except OSError as exc:
        raise HypervisorError(
            f"cannot read the OVMF variables template {template}: {exc.strerror}",
            kind=ErrorKind.ENVIRONMENT,
            param="ovmf_vars_template",
        ) from exc
    try:
        existing = os.stat(path).st_size
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise HypervisorError(
            f"cannot read the variables store {path}: {exc.strerror}", kind=ErrorKind.ENVIRONMENT
        ) from exc
    if existing is not None:
        if existing != size:
            raise HypervisorError(
                f"ovmf_vars_template: the instance's variables store {path} has "
                f"{existing} bytes but the template {template} has {size} (2M vs 4M OVMF?); "
                "use a matching ovmf_code_path/ovmf_vars_template or remove the store",
                kind=ErrorKind.INVALID,
                param="ovmf_vars_template",
            )
        return False
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out, open(template, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise HypervisorError(
            f"cannot create the variables store {path}: {exc.strerror}",
            kind=ErrorKind.ENVIRONMENT,
        ) from exc
    return True

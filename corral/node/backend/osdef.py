"""Ganeti OS definitions (API 20, 15 and 10): discovery, validation and the environment.

An OS definition is a directory named after the OS (man ganeti-os-interface). Corral looks for
it in :attr:`Paths.os_search_path` in order, then among the OSes shipped in the package
directory ``corral/osdefs/``; the first directory with the name wins.

A definition is valid when ``ganeti_api_version`` lists a version Corral speaks (20, 15, 10) and
its scripts are executable regular files: ``create``, ``export``, ``import``, ``rename`` always,
plus ``verify`` and ``parameters.list`` for API 20. ``variants.list`` is optional (API 15+).

Scripts get the environment built by :func:`build_env` (COMPAT.md §3, Ganeti's
``OSEnvironment``) and nothing else. Corral adds two variables of its own, ``CORRAL_CACHE_DIR``
and ``CORRAL_KERNELS_DIR``, which Ganeti OS definitions simply ignore. Running the scripts
(log files, timeouts, raw views of qcow2 disks) is :mod:`corral.node.backend.osrun`'s job.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Mapping, Sequence
from typing import Any

import corral
from corral.common import runcmd
from corral.common.errors import ErrorKind, OsError
from corral.common.paths import Paths
from corral.hypervisor.base import InstanceSpec
from corral.rpc.calls import OsInfo

log = logging.getLogger(__name__)

#: OS API versions Corral speaks, newest first.
SUPPORTED_API_VERSIONS = (20, 15, 10)
API_V15 = 15
API_V20 = 20
#: Scripts every definition must have; API 20 adds ``verify``.
BASE_SCRIPTS = ("create", "export", "import", "rename")
#: The OS definitions shipped inside the package (after the search path).
BUILTIN_OS_DIR = os.path.join(os.path.dirname(os.path.abspath(corral.__file__)), "osdefs")
#: OS names: a directory name, never a path.
OS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PARAM_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OsDefinition:
    """A valid OS definition found on this node."""

    name: str
    path: str
    api_versions: tuple[int, ...]
    variants: tuple[str, ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()
    builtin: bool = False

    @property
    def api_version(self) -> int:
        """The newest API version both this OS and Corral speak (what the scripts get)."""
        return max(set(self.api_versions) & set(SUPPORTED_API_VERSIONS))

    def script(self, name: str) -> str:
        """Absolute path of one of the definition's scripts."""
        return os.path.join(self.path, name)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DiskEnv:
    """One instance disk as an OS script sees it (already resolved on this node)."""

    index: int
    path: str
    size: int  # MiB
    mode: str = "rw"
    uuid: str = ""
    name: str = ""
    dev_type: str = "file"


# --- discovery -------------------------------------------------------------------------------


def search_dirs(paths: Paths) -> list[tuple[str, bool]]:
    """The directories searched for OS definitions, in order, with a "built-in" flag."""
    return [(d, False) for d in paths.os_search_path] + [(BUILTIN_OS_DIR, True)]


def split_os_name(os_name: str) -> tuple[str, str]:
    """Split ``name+variant`` into its parts (variant empty when absent).

    Raises:
        OsError: the name is not a valid OS name (INVALID).
    """
    name, _, variant = os_name.partition("+")
    if not OS_NAME_RE.match(name) or (variant and not OS_NAME_RE.match(variant)):
        raise OsError(f"invalid OS name {os_name!r}", kind=ErrorKind.INVALID, os=os_name)
    return name, variant


def find_os(paths: Paths, name: str) -> OsDefinition:
    """Find and load the OS definition ``name`` (without variant).

    Raises:
        OsError: no directory of that name exists in the search path (NOT_FOUND), or the one
            found first is not a valid definition (ENVIRONMENT, with the reason).
    """
    split_os_name(name)
    for base, builtin in search_dirs(paths):
        path = os.path.join(base, name)
        if os.path.isdir(path):
            return load_os(path, name=name, builtin=builtin)
    searched = ", ".join(base for base, _ in search_dirs(paths))
    raise OsError(
        f"OS {name!r} not found in the OS search path ({searched})",
        kind=ErrorKind.NOT_FOUND,
        os=name,
    )


def diagnose(paths: Paths) -> list[OsInfo]:
    """Every OS definition of the node, valid or not (the first of each name only).

    A definition hidden by one of the same name earlier in the search path is not listed,
    since it is never used. Unreadable search directories are skipped.
    """
    seen: set[str] = set()
    found: list[OsInfo] = []
    for base, builtin in search_dirs(paths):
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            path = os.path.join(base, name)
            if name in seen or not OS_NAME_RE.match(name) or not os.path.isdir(path):
                continue
            seen.add(name)
            try:
                osdef = load_os(path, name=name, builtin=builtin)
            except OsError as exc:
                found.append(
                    OsInfo(name=name, path=path, valid=False, error=str(exc), builtin=builtin)
                )
                continue
            found.append(
                OsInfo(
                    name=name,
                    path=path,
                    valid=True,
                    api_versions=list(osdef.api_versions),
                    variants=list(osdef.variants),
                    parameters=list(osdef.parameters),
                    builtin=builtin,
                )
            )
    return found


def load_os(path: str, *, name: str, builtin: bool = False) -> OsDefinition:
    """Read and validate the OS definition in directory ``path``.

    Raises:
        OsError: (ENVIRONMENT) the API version file is missing or unreadable, lists no
            version Corral speaks, a required script is missing, not a regular file or not
            executable, or a list file cannot be read.
    """
    api_versions = _read_api_versions(path, name)
    newest = max(set(api_versions) & set(SUPPORTED_API_VERSIONS))
    scripts = [*BASE_SCRIPTS, "verify"] if newest >= API_V20 else list(BASE_SCRIPTS)
    for script in scripts:
        _check_file(path, name, script, executable=True)
    parameters: list[tuple[str, str]] = []
    if newest >= API_V20:
        _check_file(path, name, "parameters.list", executable=False)
        for line in _read_lines(path, name, "parameters.list"):
            pname, *doc = line.split(None, 1)
            parameters.append((pname, doc[0].strip() if doc else ""))
    variants: list[str] = []
    if newest >= API_V15 and os.path.exists(os.path.join(path, "variants.list")):
        variants = _read_lines(path, name, "variants.list")
    return OsDefinition(
        name=name,
        path=path,
        api_versions=tuple(api_versions),
        variants=tuple(variants),
        parameters=tuple(parameters),
        builtin=builtin,
    )


def _read_api_versions(path: str, name: str) -> list[int]:
    fname = os.path.join(path, "ganeti_api_version")
    try:
        with open(fname, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise OsError(
            f"OS {name!r} in {path}: cannot read ganeti_api_version: {exc.strerror or exc}",
            os=name,
            path=path,
        ) from exc
    versions: list[int] = []
    for line in text.split():
        try:
            versions.append(int(line))
        except ValueError as exc:
            raise OsError(
                f"OS {name!r} in {path}: ganeti_api_version holds {line!r}, not a number",
                os=name,
                path=path,
            ) from exc
    if not set(versions) & set(SUPPORTED_API_VERSIONS):
        want = ", ".join(str(v) for v in SUPPORTED_API_VERSIONS)
        raise OsError(
            f"OS {name!r} in {path}: API version mismatch: found {versions or 'none'}, "
            f"want one of {want}",
            os=name,
            path=path,
        )
    return versions


def _check_file(path: str, name: str, fname: str, *, executable: bool) -> None:
    full = os.path.join(path, fname)
    try:
        st = os.stat(full)
    except OSError as exc:
        raise OsError(
            f"OS {name!r} in {path}: file {fname!r} is missing ({exc.strerror or exc})",
            os=name,
            path=path,
        ) from exc
    if not stat.S_ISREG(st.st_mode):
        raise OsError(f"OS {name!r} in {path}: {fname!r} is not a regular file", os=name, path=path)
    if executable and not st.st_mode & stat.S_IXUSR:
        raise OsError(f"OS {name!r} in {path}: {fname!r} is not executable", os=name, path=path)


def _read_lines(path: str, name: str, fname: str) -> list[str]:
    """Non-empty lines of a list file, without ``#`` comments."""
    try:
        with open(os.path.join(path, fname), encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise OsError(
            f"OS {name!r} in {path}: cannot read {fname}: {exc.strerror or exc}",
            os=name,
            path=path,
        ) from exc
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


# --- validation ------------------------------------------------------------------------------


def select_variant(osdef: OsDefinition, variant: str) -> str:
    """The variant the scripts get: the requested one, else the OS's first (Ganeti).

    Raises:
        OsError: (INVALID) a variant was given for an OS without variants, or the OS does
            not list it.
    """
    if osdef.api_version < API_V15 or not osdef.variants:
        if variant:
            raise OsError(
                f"OS {osdef.name!r} does not support variants ({variant!r} given)",
                kind=ErrorKind.INVALID,
                os=osdef.name,
            )
        return ""
    if not variant:
        return osdef.variants[0]
    if variant not in osdef.variants:
        raise OsError(
            f"unsupported variant {variant!r} of OS {osdef.name!r} "
            f"(supported: {', '.join(osdef.variants)})",
            kind=ErrorKind.INVALID,
            os=osdef.name,
            variant=variant,
        )
    return variant


def check_osparams(osdef: OsDefinition, osparams: Mapping[str, str]) -> None:
    """Check the OS parameters are ones the OS declares (API 20; older OSes take none).

    Raises:
        OsError: (INVALID) a parameter is not in ``parameters.list``, or a name or value
            cannot be passed in an environment variable.
    """
    declared = {p for p, _ in osdef.parameters}
    bad = sorted(p for p in osparams if p not in declared)
    if bad:
        raise OsError(
            f"OS {osdef.name!r} does not support the parameters: {', '.join(bad)}",
            kind=ErrorKind.INVALID,
            os=osdef.name,
            parameters=bad,
        )
    for pname, value in osparams.items():
        if not _PARAM_NAME_RE.match(pname) or not isinstance(value, str) or "\0" in value:
            raise OsError(
                f"OS parameter {pname!r} cannot be passed to the OS scripts",
                kind=ErrorKind.INVALID,
                os=osdef.name,
            )


# --- the environment (pure) ------------------------------------------------------------------


def build_core_env(
    osdef: OsDefinition, *, variant: str, osparams: Mapping[str, str], debug: int
) -> dict[str, str]:
    """The variables every script gets, with or without an instance (Ganeti ``OSCoreEnv``)."""
    env = {
        "PATH": runcmd.SAFE_PATH,
        "OS_API_VERSION": str(osdef.api_version),
        "OS_NAME": osdef.name,
        "OS_VARIANT": variant,
        "DEBUG_LEVEL": str(debug),
    }
    for pname, value in osparams.items():
        env["OSP_" + pname.upper().replace("-", "_")] = value
    return env


def build_env(
    osdef: OsDefinition,
    *,
    instance: InstanceSpec,
    os_name: str,
    variant: str,
    disks: Sequence[DiskEnv],
    osparams: Mapping[str, str],
    debug: int,
    node_name: str,
    paths: Paths,
) -> dict[str, str]:
    """The OS API environment for a script acting on ``instance`` (pure).

    Variables, as COMPAT.md §3 lists them: ``OS_API_VERSION``, ``OS_NAME``, ``OS_VARIANT``,
    ``DEBUG_LEVEL``, ``OSP_<PARAM>``, ``INSTANCE_NAME``, ``INSTANCE_OS``, ``HYPERVISOR``,
    ``DISK_COUNT``, ``DISK_<n>_{PATH,SIZE,ACCESS,UUID,NAME,FRONTEND_TYPE,BACKEND_TYPE}``,
    ``NIC_COUNT``, ``NIC_<n>_{MAC,UUID,NAME,IP,MODE,BRIDGE,LINK,FRONTEND_TYPE}``; like Ganeti
    also ``INSTANCE_UUID``, ``INSTANCE_PRIMARY_NODE``, ``INSTANCE_HV_<key>`` and
    ``INSTANCE_BE_{maxmem,minmem,vcpus}``; Corral's own ``CORRAL_CACHE_DIR`` and
    ``CORRAL_KERNELS_DIR``; and a fixed ``PATH``. Optional values (names, IP, bridge) are left
    out when empty, as Ganeti does.
    """
    env = build_core_env(osdef, variant=variant, osparams=osparams, debug=debug)
    env.update(
        {
            "INSTANCE_NAME": instance.name,
            "INSTANCE_OS": os_name,
            "INSTANCE_UUID": instance.uuid,
            "INSTANCE_PRIMARY_NODE": node_name,
            "HYPERVISOR": instance.hypervisor,
            "DISK_COUNT": str(len(disks)),
            "NIC_COUNT": str(len(instance.nics)),
            "CORRAL_CACHE_DIR": paths.cache_dir,
            "CORRAL_KERNELS_DIR": paths.kernels_dir,
        }
    )
    hv = instance.hvparams
    for disk in disks:
        prefix = f"DISK_{disk.index}_"
        env[prefix + "PATH"] = disk.path
        env[prefix + "SIZE"] = str(disk.size)
        env[prefix + "ACCESS"] = disk.mode
        env[prefix + "UUID"] = disk.uuid
        if disk.name:
            env[prefix + "NAME"] = disk.name
        if "disk_type" in hv:
            env[prefix + "FRONTEND_TYPE"] = str(hv["disk_type"])
        # NOTE: QEMU opens file disks itself; Ganeti's nearest backend type for a file disk
        # is file:loop (file:<driver>), and every other kind reaches the guest as a block device.
        env[prefix + "BACKEND_TYPE"] = (
            "file:loop" if disk.dev_type in ("file", "sharedfile") else "block"
        )
    for nic in instance.nics:
        prefix = f"NIC_{nic.index}_"
        env[prefix + "MAC"] = nic.mac
        env[prefix + "UUID"] = nic.uuid
        if nic.name:
            env[prefix + "NAME"] = nic.name
        if nic.ip:
            env[prefix + "IP"] = nic.ip
        env[prefix + "MODE"] = nic.mode
        if nic.mode == "bridged" and nic.link:
            env[prefix + "BRIDGE"] = nic.link
        if nic.link:
            env[prefix + "LINK"] = nic.link
        if "nic_type" in hv:
            env[prefix + "FRONTEND_TYPE"] = str(hv["nic_type"])
    for key, value in sorted(hv.items()):
        env[f"INSTANCE_HV_{key}"] = _ganeti_str(value)
    env["INSTANCE_BE_maxmem"] = str(instance.memory)
    env["INSTANCE_BE_minmem"] = str(instance.min_memory)
    env["INSTANCE_BE_vcpus"] = str(instance.vcpus)
    return env


def _ganeti_str(value: Any) -> str:
    """Format a parameter value the way Ganeti's ``str()`` does (``True``, ``False``, ``None``)."""
    return str(value)

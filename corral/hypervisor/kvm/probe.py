"""What the installed QEMU binary can do: version, options, machine types, devices, SPICE.

The KVM driver generates only options the binary supports, so it asks the binary itself:

=============================  ===========================================================
``qemu --version``             the version (``7.2.22``); older than :data:`MIN_VERSION` is
                               refused
``qemu --help``                the command-line options (``-run-with``, ``-runas``,
                               ``-chroot``, ``-display``, ``-msg``, ...) and the keys of
                               ``-run-with``
``qemu -machine help``         machine types, their aliases (``pc`` -> ``pc-i440fx-7.2``) and
                               the default machine
``qemu -device help``          device models (``virtio-scsi-pci``, ``e1000e``, ``qxl-vga``...)
``qemu -spice help``           SPICE options; only asked when ``--help`` lists ``-spice``
=============================  ===========================================================

Each binary is asked once per node daemon: answers are cached by the binary's real path,
mtime and size, so an upgraded QEMU is asked again. Commands run with ``LC_ALL=C``.
Two facts are only known by trying, and are asked lazily (also cached): whether a block
driver is really loadable (Debian ships ``http``/``https`` in the optional
``qemu-block-extra`` package although ``-drive format=help`` always lists them) and whether
``aio=io_uring`` was compiled in.

Parsers are pure functions fed with captured outputs in tests (``tests/data/qemu/<version>/``).

Why 4.2 is the oldest QEMU accepted (:data:`MIN_VERSION`): the command line relies on the
``pflash0``/``pflash1`` machine properties for ``-blockdev`` firmware and on ``-audiodev``
(both 4.0), ``query-cpus-fast`` (2.12) and ``-runas uid:gid``; 4.2 is also the oldest QEMU of
a distribution release still in use (Ubuntu 20.04 LTS, RHEL 8.2), so nothing older needs
support.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Mapping

from corral.common.errors import CommandError, ErrorKind, HypervisorError
from corral.common.runcmd import Runner

#: Seconds each probe command may take.
QUERY_TIMEOUT = 30.0
#: The oldest QEMU the driver accepts (see the module docstring).
MIN_VERSION = (4, 2)


# --- parsers -----------------------------------------------------------------------------------


def parse_version(text: str) -> str:
    """``7.2.22`` from ``qemu-system-x86_64 --version`` output ("" when not found)."""
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else ""


def version_tuple(version: str) -> tuple[int, int, int]:
    """``(7, 2, 22)`` from ``"7.2.22"``; missing parts are 0, garbage gives ``(0, 0, 0)``."""
    parts = re.findall(r"\d+", version)[:3]
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return nums[0], nums[1], nums[2]


def parse_help(text: str) -> dict[str, str]:
    """Option name -> its usage text, from ``qemu --help``.

    An option line starts in column 0 with ``-``; indented lines that follow belong to it.
    Options listed more than once (``-audiodev``, ``-display``) have their texts joined.
    """
    options: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("-"):
            current = line.split()[0]
            options[current] = (options.get(current, "") + "\n" + line).strip("\n")
        elif current is not None and line.startswith((" ", "\t")) and line.strip():
            options[current] += "\n" + line
        elif not line.strip():
            current = None
    return options


def parse_run_with(usage: str) -> frozenset[str]:
    """The keys of ``-run-with`` (``async-teardown``, ``chroot``, ``user``, ...)."""
    first = usage.split("\n", 1)[0]
    usage_lines = [first] + [
        line for line in usage.splitlines()[1:] if line.strip().startswith(("[", ","))
    ]
    return frozenset(re.findall(r"[\[,]([a-z][a-z-]*)=", " ".join(usage_lines)))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MachineList:
    """Machine types of a QEMU binary."""

    names: frozenset[str]  # every name, aliases included
    default: str  # the machine marked "(default)", "" if none is
    aliases: Mapping[str, str]  # alias -> the machine it stands for (pc -> pc-i440fx-7.2)


def parse_machines(text: str) -> MachineList:
    """Machine names, aliases and the default from ``qemu -machine help``."""
    names: set[str] = set()
    aliases: dict[str, str] = {}
    default = ""
    for line in text.splitlines():
        if not line.strip() or not line[0].isalnum() or line.startswith("Supported machines"):
            continue
        name = line.split()[0]
        names.add(name)
        m = re.search(r"\(alias of (\S+?)\)", line)
        if m:
            aliases[name] = m.group(1)
            names.add(m.group(1))
        if "(default)" in line:
            default = name
    return MachineList(names=frozenset(names), default=default, aliases=aliases)


def parse_devices(text: str) -> frozenset[str]:
    """Device model names and their aliases from ``qemu -device help``."""
    found: set[str] = set()
    for line in text.splitlines():
        m = re.match(r'name "([^"]+)"', line)
        if m:
            found.add(m.group(1))
            alias = re.search(r'alias "([^"]+)"', line)
            if alias:
                found.add(alias.group(1))
    return frozenset(found)


def parse_spice(text: str) -> frozenset[str]:
    """SPICE option names from ``qemu -spice help`` (empty when there is no SPICE)."""
    if "spice options" not in text:
        return frozenset()
    return frozenset(re.findall(r"^\s+([a-z0-9-]+)=", text, re.M))


# --- capabilities ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QemuCaps:
    """Everything the command-line builder needs to know about one QEMU binary.

    ``devices`` empty means "not known": the builder then does not check device names
    (see :meth:`baseline`).
    """

    binary: str
    version: str
    options: frozenset[str]
    run_with: frozenset[str] = frozenset()
    machines: MachineList = MachineList(names=frozenset(), default="", aliases={})
    devices: frozenset[str] = frozenset()
    spice: frozenset[str] = frozenset()

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        """The version as ``(major, minor, micro)``."""
        return version_tuple(self.version)

    def has_option(self, option: str) -> bool:
        """Whether ``--help`` lists ``option`` (e.g. ``-run-with``)."""
        return option in self.options

    def has_device(self, model: str) -> bool:
        """Whether ``-device help`` lists ``model`` (True when devices are not known)."""
        return not self.devices or model in self.devices

    @property
    def has_spice(self) -> bool:
        """Whether this binary was built with (and can load) SPICE."""
        return "-spice" in self.options and bool(self.spice)

    @property
    def secret_passwords(self) -> bool:
        """Whether VNC and SPICE take ``password-secret=`` (QEMU 7.0+)."""
        return self.version_tuple >= (7, 0, 0)

    def resolve_machine(self, machine: str) -> str:
        """The concrete machine type: "" means the default, an alias its target.

        The runtime records the concrete name so a migration destination with a newer QEMU
        starts the same versioned machine.
        """
        name = machine or self.machines.default or "pc"
        return self.machines.aliases.get(name, name)

    @classmethod
    def baseline(cls, binary: str, version: str) -> QemuCaps:
        """Capabilities assumed when a binary was not probed (pure callers and old tests).

        Only options every supported QEMU (>= :data:`MIN_VERSION`, < 9.0) has.
        """
        return cls(
            binary=binary,
            version=version,
            options=frozenset(
                {"-machine", "-accel", "-display", "-msg", "-no-user-config", "-runas", "-chroot"}
            ),
        )


def check_supported(caps: QemuCaps) -> None:
    """Refuse a QEMU older than :data:`MIN_VERSION` (or one whose version is unreadable).

    Raises:
        HypervisorError: kind ENVIRONMENT, naming the binary, its version and the minimum.
    """
    if not caps.version:
        raise HypervisorError(
            f"cannot tell the version of {caps.binary} (no 'version X.Y' in --version)",
            kind=ErrorKind.ENVIRONMENT,
            binary=caps.binary,
        )
    if caps.version_tuple[:2] < MIN_VERSION:
        minimum = ".".join(str(n) for n in MIN_VERSION)
        raise HypervisorError(
            f"{caps.binary} is QEMU {caps.version}, older than {minimum}, the oldest version "
            "Corral supports; install a newer QEMU",
            kind=ErrorKind.ENVIRONMENT,
            binary=caps.binary,
            version=caps.version,
        )


def caps_from_outputs(
    binary: str,
    *,
    version: str,
    help_text: str,
    machine_help: str,
    device_help: str,
    spice_help: str = "",
) -> QemuCaps:
    """Build :class:`QemuCaps` from the captured outputs of the probe commands."""
    options = parse_help(help_text)
    return QemuCaps(
        binary=binary,
        version=parse_version(version),
        options=frozenset(options),
        run_with=parse_run_with(options.get("-run-with", "")),
        machines=parse_machines(machine_help),
        devices=parse_devices(device_help),
        spice=parse_spice(spice_help) if "-spice" in options else frozenset(),
    )


#: Probe of a block option: QEMU parses ``-blockdev`` before it opens anything, so an unknown
#: driver or enum value fails with this message while a known one fails to open the file.
_REJECTED = re.compile(r"Unknown driver|does not accept value|Invalid parameter")


class QemuProber:
    """Cached answers of QEMU binaries (one prober per driver, i.e. per node daemon).

    Args:
        runner: runs the probe commands (tests inject a fake replaying captured output).
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._caps: dict[tuple[str, int, int], QemuCaps] = {}
        self._tried: dict[tuple[str, int, int, str], bool] = {}
        self._lock = threading.Lock()

    def _key(self, binary: str) -> tuple[str, int, int]:
        try:
            real = os.path.realpath(binary)
            st = os.stat(real)
        except OSError as exc:
            raise HypervisorError(
                f"QEMU binary {binary!r} not found: {exc.strerror}",
                kind=ErrorKind.ENVIRONMENT,
                binary=binary,
            ) from exc
        return real, st.st_mtime_ns, st.st_size

    def _ask(self, binary: str, option: list[str], *, check: bool = True) -> str:
        try:
            result = self.runner(
                [binary, *option], timeout=QUERY_TIMEOUT, c_locale=True, check=check
            )
        except CommandError as exc:
            raise HypervisorError(
                f"cannot query QEMU ({binary} {' '.join(option)}): {exc}",
                kind=ErrorKind.ENVIRONMENT,
                binary=binary,
            ) from exc
        # NOTE: ``-spice help`` prints its options and exits with 1 (QEMU 7.2).
        return result.stdout

    def caps(self, binary: str) -> QemuCaps:
        """The capabilities of ``binary`` (probed on first use, then cached).

        Raises:
            HypervisorError: kind ENVIRONMENT when the binary is missing or a probe fails.
        """
        key = self._key(binary)
        with self._lock:
            cached = self._caps.get(key)
        if cached is not None:
            return cached
        help_text = self._ask(binary, ["--help"])
        spice_help = ""
        if re.search(r"^-spice\b", help_text, re.M):
            spice_help = self._ask(binary, ["-spice", "help"], check=False)
        caps = caps_from_outputs(
            binary,
            version=self._ask(binary, ["--version"]),
            help_text=help_text,
            machine_help=self._ask(binary, ["-machine", "help"]),
            device_help=self._ask(binary, ["-device", "help"]),
            spice_help=spice_help,
        )
        with self._lock:
            self._caps[key] = caps
        return caps

    def version(self, binary: str) -> str:
        """The version of a QEMU binary (``7.2.22``).

        Raises:
            HypervisorError: the binary is missing or cannot be run.
        """
        return self.caps(binary).version

    def machines(self, binary: str) -> set[str]:
        """Machine types (and aliases) a QEMU binary supports.

        Raises:
            HypervisorError: the binary is missing or cannot be run.
        """
        return set(self.caps(binary).machines.names)

    def blockdev_accepted(self, binary: str, options: str) -> bool:
        """Whether QEMU accepts ``-blockdev <options>`` up to opening it (cached).

        ``options`` must name a file or URL that cannot be opened (a missing file,
        ``http://127.0.0.1:0/``) so QEMU exits right after parsing; the answer is whether it
        complained about the option itself (unknown driver, unknown value) or only about
        opening.

        Raises:
            HypervisorError: the binary is missing.
        """
        real, mtime, size = self._key(binary)
        key = (real, mtime, size, options)
        with self._lock:
            cached = self._tried.get(key)
        if cached is not None:
            return cached
        argv = [binary, "-machine", "none", "-nodefaults", "-display", "none"]
        argv += ["-blockdev", options]
        try:
            result = self.runner(argv, timeout=QUERY_TIMEOUT, c_locale=True, check=False)
        except CommandError as exc:  # a timeout: QEMU did not exit, so it accepted it
            raise HypervisorError(
                f"cannot probe QEMU ({' '.join(argv)}): {exc}", kind=ErrorKind.ENVIRONMENT
            ) from exc
        accepted = result.ok or not _REJECTED.search(result.stderr)
        with self._lock:
            self._tried[key] = accepted
        return accepted

    def has_block_driver(self, binary: str, driver: str) -> bool:
        """Whether a URL block driver (``http``, ``https``) can be loaded by ``binary``."""
        return self.blockdev_accepted(
            binary, f"driver={driver},node-name=probe,url={driver}://127.0.0.1:0/probe"
        )

    def has_io_uring(self, binary: str) -> bool:
        """Whether ``binary`` was built with ``aio=io_uring``."""
        return self.blockdev_accepted(
            binary, "driver=file,node-name=probe,filename=/nonexistent/corral-probe,aio=io_uring"
        )

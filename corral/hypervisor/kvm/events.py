"""QEMU's own record of why it exited: a second QMP monitor that writes events to a file.

QMP sends events (``SHUTDOWN``, ``STOP``, ``RESUME``, ...) only to connected clients, and the
driver's QMP connections are short-lived, so a guest that powers itself off between two
connections would go unnoticed. Instead of a watcher daemon per guest, every QEMU gets a
second monitor on a ``pipe`` chardev (QEMU 7.2 has no ``input-path`` for ``file``
chardevs)::

    -chardev pipe,id=events,path=<dir>/qmp-events -mon chardev=events,mode=control

QEMU opens ``qmp-events.in`` (a FIFO, opened read-write by QEMU so it never sees EOF) and
``qmp-events.out`` (a regular file). Right after the launch the driver writes
``qmp_capabilities`` into the FIFO — QMP sends no events before the capability negotiation —
and from then on QEMU appends every event to ``qmp-events.out`` by itself, one JSON object per
line. When QEMU exits on its own, the last ``SHUTDOWN`` event says why:

==================================  ======================================================
``guest: true, guest-shutdown``     the guest powered itself off (ACPI/poweroff): "user down"
``guest: true, guest-reset``        a guest reboot under ``-no-reboot`` (reboot_behavior=exit)
``guest: true, guest-panic``        a guest panic (with a pvpanic device)
``guest: false, host-qmp-quit``     someone sent ``quit`` (Corral's stop, or by hand)
``guest: false, host-signal``       SIGTERM/SIGINT/SIGHUP
no event                            SIGKILL or a QEMU crash
==================================  ======================================================

Corral's own stops (stop, soft reboot, suspend, the source side of a migration) first create
the ``stopping`` marker in the run directory: a guest that Corral powered off through ACPI
also reports ``guest-shutdown``, and must not be taken for a user shutdown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import stat

from corral.common.errors import HypervisorError
from corral.hypervisor.kvm.cmdline import qemu_escape
from corral.hypervisor.kvm.runtime import InstanceLayout

log = logging.getLogger(__name__)

EVENTS_CHARDEV = "events"
#: What the driver writes into the FIFO once QEMU runs.
CAPABILITIES_LINE = b'{"execute": "qmp_capabilities"}\n'
#: Only the end of a long event log is read (the SHUTDOWN event is the last thing QEMU writes).
TAIL_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ShutdownEvent:
    """QEMU's ``SHUTDOWN`` event: who asked, and why."""

    guest: bool
    reason: str
    timestamp: float  # seconds since the epoch (QEMU's host clock)

    @property
    def guest_poweroff(self) -> bool:
        """The guest powered itself off (not a reset, not a panic, not the host)."""
        return self.guest and self.reason == "guest-shutdown"


def event_monitor_argv(layout: InstanceLayout) -> list[str]:
    """The options adding the event monitor (appended at launch, like ``-S``)."""
    return [
        "-chardev",
        f"pipe,id={EVENTS_CHARDEV},path={qemu_escape(layout.events_pipe)}",
        "-mon",
        f"chardev={EVENTS_CHARDEV},mode=control",
    ]


def prepare(layout: InstanceLayout) -> None:
    """Create the FIFO and the empty log QEMU opens at start (in the existing run dir).

    Raises:
        HypervisorError: they cannot be created.
    """
    fifo = layout.events_pipe + ".in"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fifo)
        os.mkfifo(fifo, 0o600)
        fd = os.open(layout.events_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
    except OSError as exc:
        raise HypervisorError(
            f"cannot create the event monitor files in {layout.dir}: {exc.strerror}"
        ) from exc


def enable(layout: InstanceLayout) -> bool:
    """Negotiate the event monitor's capabilities (QEMU must be running).

    Returns:
        False when QEMU has no reader on the FIFO (it exited); the event log then stays
        empty, which only costs the user-shutdown detection of this start.
    """
    fifo = layout.events_pipe + ".in"
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ENXIO, errno.ENOENT):
            log.warning("%s: cannot open the event monitor FIFO: %s", layout.name, exc)
        return False
    try:
        os.write(fd, CAPABILITIES_LINE)
    except OSError as exc:
        log.warning("%s: cannot enable the event monitor: %s", layout.name, exc)
        return False
    finally:
        os.close(fd)
    return True


def parse_events(text: str) -> list[dict[str, object]]:
    """The events of an event log (greeting, replies and broken lines are skipped)."""
    events: list[dict[str, object]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("event"), str):
            events.append(obj)
    return events


def _timestamp(event: dict[str, object]) -> float:
    ts = event.get("timestamp")
    if isinstance(ts, dict):
        sec, usec = ts.get("seconds", 0), ts.get("microseconds", 0)
        if isinstance(sec, int) and isinstance(usec, int):
            return sec + usec / 1e6
    return 0.0


def last_shutdown(text: str) -> ShutdownEvent | None:
    """The last ``SHUTDOWN`` event of an event log, or None."""
    for event in reversed(parse_events(text)):
        if event.get("event") != "SHUTDOWN":
            continue
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        return ShutdownEvent(
            guest=bool(data.get("guest", False)),
            reason=str(data.get("reason", "")),
            timestamp=_timestamp(event),
        )
    return None


def event_times(text: str, name: str) -> list[float]:
    """Timestamps of every event called ``name`` (e.g. ``STOP``, ``RESUME``)."""
    return [_timestamp(e) for e in parse_events(text) if e.get("event") == name]


def read_log(layout: InstanceLayout) -> str:
    """The end of the event log ("" when there is none)."""
    try:
        with open(layout.events_log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def mark_stopping(layout: InstanceLayout) -> None:
    """Record that Corral is stopping the guest (best effort: the run dir may be gone)."""
    with contextlib.suppress(OSError):
        fd = os.open(layout.stop_marker, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)


def clear_stopping(layout: InstanceLayout) -> None:
    """Forget the stop marker (a stop that did not happen after all)."""
    with contextlib.suppress(OSError):
        os.unlink(layout.stop_marker)


def powered_off(layout: InstanceLayout) -> ShutdownEvent | None:
    """The guest's own power-off, if that is how its (no longer running) QEMU ended.

    Only meaningful once the process is gone. None when Corral stopped it, when QEMU ended
    for another reason (quit, signal, crash, guest reset or panic), or when there is no run
    directory at all.
    """
    try:
        if not stat.S_ISDIR(os.lstat(layout.dir).st_mode):
            return None
    except OSError:
        return None
    if os.path.exists(layout.stop_marker):
        return None
    event = last_shutdown(read_log(layout))
    return event if event is not None and event.guest_poweroff else None

"""Typed QMP access to a guest, over ``qemu.qmp``'s asyncio :class:`QMPClient`.

Connections are short-lived: each driver action opens the instance's QMP socket, runs its
commands and closes it (QEMU's monitor chardev serves one client at a time, and a connection
kept open by a crashed node daemon must never block the next one)::

    async with Monitor(layout.qmp_socket, name=inst).connect() as qmp:
        status = await qmp.query_status()

Synchronous callers (driver methods run in the node daemon's worker threads) use
:meth:`Monitor.call`, which runs one session under :func:`asyncio.run` in the calling thread::

    status = Monitor(path).call(lambda qmp: qmp.query_status())

Every step has a timeout: connecting (including QEMU's greeting and capability negotiation)
and each command. A socket that accepts but never answers gives a :class:`HypervisorError`
after the timeout, never a hang. Failures are translated once, here, into
:class:`HypervisorError` whose ``fields`` say what failed:

* ``qmp_failure="connect"``: the socket is missing, refused, or the greeting/negotiation failed;
* ``qmp_failure="timeout"``: no answer in time (``fields["timeout"]``);
* ``qmp_failure="command"``: QEMU answered with an error (``fields["error_class"]``);
* ``qmp_failure="disconnected"``: the connection dropped before the answer.

Raw ``execute`` stays private; replies are checked before they are turned into dataclasses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError

from corral.common.errors import ErrorKind, HypervisorError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Default seconds for connecting and for each command.
DEFAULT_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class VmStatus:
    """The answer of ``query-status``."""

    status: str  # running, paused, prelaunch, shutdown, inmigrate, postmigrate, ...
    running: bool


@dataclasses.dataclass(frozen=True, slots=True)
class CpuInfo:
    """One vCPU from ``query-cpus-fast`` (thread ids are used for pinning)."""

    cpu_index: int
    thread_id: int
    qom_path: str


@dataclasses.dataclass(frozen=True, slots=True)
class PciDevice:
    """One PCI function from ``query-pci`` (devices behind bridges included)."""

    bus: int
    slot: int
    function: int
    qdev_id: str  # "" for built-in devices (host bridge, ISA bridge, ...)
    desc: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class VncInfo:
    """The answer of ``query-vnc``."""

    enabled: bool
    host: str = ""
    port: int | None = None


def _qmp_error(message: str, *, failure: str, **fields: Any) -> HypervisorError:
    return HypervisorError(message, kind=ErrorKind.ENVIRONMENT, qmp_failure=failure, **fields)


def _expect_dict(reply: object, command: str) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise _qmp_error(
            f"QMP {command} returned {type(reply).__name__}, expected an object",
            failure="command",
            command=command,
        )
    return reply


class QmpSession:
    """An open QMP connection with typed commands; obtained from :meth:`Monitor.connect`."""

    def __init__(self, client: QMPClient, *, name: str, timeout: float) -> None:
        self._client = client
        self._name = name
        self._timeout = timeout

    async def _execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        """Run one command with the session's timeout.

        Raises:
            HypervisorError: see the module docstring for ``qmp_failure``.
        """
        log.debug("qmp %s --> %s %s", self._name, command, arguments or "")
        try:
            reply = await asyncio.wait_for(
                self._client.execute(command, arguments), timeout=self._timeout
            )
        except TimeoutError as exc:
            raise _qmp_error(
                f"QMP {command} on {self._name}: no answer within {self._timeout:g}s",
                failure="timeout",
                command=command,
                timeout=self._timeout,
            ) from exc
        except ExecuteError as exc:
            raise _qmp_error(
                f"QMP {command} on {self._name} failed: {exc}",
                failure="command",
                command=command,
                error_class=exc.error_class,
            ) from exc
        except (ExecInterruptedError, EOFError, OSError, QMPError) as exc:
            raise _qmp_error(
                f"QMP {command} on {self._name}: connection lost ({exc})",
                failure="disconnected",
                command=command,
            ) from exc
        log.debug("qmp %s <-- %s", self._name, reply)
        return reply

    async def query_status(self) -> VmStatus:
        """The VM's run state.

        Raises:
            HypervisorError: QMP failed or the reply is malformed.
        """
        reply = _expect_dict(await self._execute("query-status"), "query-status")
        status = reply.get("status")
        if not isinstance(status, str):
            raise _qmp_error("QMP query-status reply has no status", failure="command")
        return VmStatus(status=status, running=bool(reply.get("running", False)))

    async def system_powerdown(self) -> None:
        """Press the ACPI power button (the guest decides what to do with it).

        Raises:
            HypervisorError: QMP failed.
        """
        await self._execute("system_powerdown")

    async def system_reset(self) -> None:
        """Reset the machine (a hard reboot; QEMU exits instead under ``-no-reboot``).

        Raises:
            HypervisorError: QMP failed.
        """
        await self._execute("system_reset")

    async def quit(self) -> None:
        """Make QEMU exit at once.

        A connection that drops before the answer counts as success: QEMU may exit faster
        than it replies.

        Raises:
            HypervisorError: QMP failed otherwise (timeout, refused command).
        """
        try:
            await self._execute("quit")
        except HypervisorError as exc:
            if exc.fields.get("qmp_failure") != "disconnected":
                raise

    async def stop(self) -> None:
        """Pause the vCPUs.

        Raises:
            HypervisorError: QMP failed.
        """
        await self._execute("stop")

    async def cont(self) -> None:
        """Resume the vCPUs (also starts a guest launched with ``-S``).

        Raises:
            HypervisorError: QMP failed.
        """
        await self._execute("cont")

    async def block_resize(self, node_name: str, size_bytes: int) -> None:
        """Resize the image behind block node ``node_name`` to ``size_bytes`` (grows the file).

        Raises:
            HypervisorError: QMP failed (unknown node, shrinking refused by QEMU, I/O error).
        """
        await self._execute("block_resize", {"node-name": node_name, "size": int(size_bytes)})

    async def balloon(self, target_bytes: int) -> None:
        """Ask the balloon driver to bring guest memory to ``target_bytes`` (returns at once).

        Raises:
            HypervisorError: QMP failed (e.g. no balloon device: ``DeviceNotActive``).
        """
        await self._execute("balloon", {"value": int(target_bytes)})

    async def query_balloon(self) -> int:
        """The guest's current memory as the balloon driver reports it, in bytes.

        Raises:
            HypervisorError: QMP failed or the reply is malformed.
        """
        reply = _expect_dict(await self._execute("query-balloon"), "query-balloon")
        actual = reply.get("actual")
        if not isinstance(actual, int) or isinstance(actual, bool):
            raise _qmp_error("QMP query-balloon reply has no actual size", failure="command")
        return actual

    async def query_cpus_fast(self) -> list[CpuInfo]:
        """The vCPUs and their host thread ids.

        Raises:
            HypervisorError: QMP failed or the reply is malformed.
        """
        reply = await self._execute("query-cpus-fast")
        if not isinstance(reply, list):
            raise _qmp_error("QMP query-cpus-fast did not return a list", failure="command")
        cpus = []
        for item in reply:
            if not isinstance(item, dict):
                continue
            index, thread = item.get("cpu-index"), item.get("thread-id")
            if isinstance(index, int) and isinstance(thread, int):
                cpus.append(CpuInfo(index, thread, str(item.get("qom-path", ""))))
        return cpus

    async def query_vnc(self) -> VncInfo:
        """Where the VNC server listens.

        Raises:
            HypervisorError: QMP failed or the reply is malformed.
        """
        reply = _expect_dict(await self._execute("query-vnc"), "query-vnc")
        if not reply.get("enabled"):
            return VncInfo(enabled=False)
        service = reply.get("service")
        port = int(service) if isinstance(service, str) and service.isdigit() else None
        return VncInfo(enabled=True, host=str(reply.get("host", "")), port=port)

    async def query_version(self) -> str:
        """QEMU's version as ``major.minor.micro``.

        Raises:
            HypervisorError: QMP failed or the reply is malformed.
        """
        reply = _expect_dict(await self._execute("query-version"), "query-version")
        q = reply.get("qemu")
        if not isinstance(q, dict):
            raise _qmp_error("QMP query-version reply has no qemu member", failure="command")
        return f"{q.get('major')}.{q.get('minor')}.{q.get('micro')}"

    # --- hotplug (used by kvm/hotplug.py) ------------------------------------------------

    async def blockdev_add(self, options: Mapping[str, object]) -> None:
        """Add a block node (QMP ``blockdev-add``; typed values: booleans are JSON booleans).

        Raises:
            HypervisorError: QEMU refused (e.g. the image does not exist, a duplicate
                node-name), with QEMU's message.
        """
        await self._execute("blockdev-add", dict(options))

    async def blockdev_del(self, node_name: str) -> None:
        """Remove a block node no device uses any more.

        Raises:
            HypervisorError: QEMU refused (unknown node, still in use).
        """
        await self._execute("blockdev-del", {"node-name": node_name})

    async def device_add(self, options: Mapping[str, object]) -> None:
        """Create a device (``driver``, ``id`` and its properties; values may be strings).

        Raises:
            HypervisorError: QEMU refused (duplicate id, slot in use, bus without hotplug).
        """
        await self._execute("device_add", dict(options))

    async def device_del(self, device_id: str, *, timeout: float) -> None:
        """Unplug a device and wait until the guest released it (``DEVICE_DELETED``).

        ``device_del`` only asks the guest (ACPI / PCIe eject): the listener for the event is
        registered *before* the command so the event cannot be missed.

        Raises:
            HypervisorError: the command failed (``error_class`` DeviceNotFound for an
                unknown id), or qmp_failure ``unplug_timeout`` when the guest did not release
                the device within ``timeout`` seconds (it is then still attached).
        """
        loop = asyncio.get_running_loop()
        with self._client.listener(("DEVICE_DELETED",)) as listener:
            await self._execute("device_del", {"id": device_id})
            deadline = loop.time() + timeout
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise _qmp_error(
                        f"{self._name}: the guest did not release device {device_id} within "
                        f"{timeout:g}s (no hotplug support in the guest, or it is paused)",
                        failure="unplug_timeout",
                        device=device_id,
                        timeout=timeout,
                    )
                try:
                    event = await asyncio.wait_for(listener.get(), timeout=left)
                except TimeoutError:
                    continue
                data = event.get("data") or {}
                # NOTE: virtio devices also report their internal backend object (a "path"
                # without "device"); only the event naming our id means the device is gone.
                if isinstance(data, dict) and data.get("device") == device_id:
                    log.debug("qmp %s <-- DEVICE_DELETED %s", self._name, device_id)
                    return

    async def closefd(self, fdname: str) -> None:
        """Close a descriptor passed with :meth:`getfd` that was not used.

        Raises:
            HypervisorError: QEMU refused (unknown name).
        """
        await self._execute("closefd", {"fdname": fdname})

    async def netdev_add(self, options: Mapping[str, object]) -> None:
        """Create a network backend (``type``, ``id`` and its options).

        Raises:
            HypervisorError: QEMU refused (duplicate id, tap missing or busy).
        """
        await self._execute("netdev_add", dict(options))

    async def netdev_del(self, netdev_id: str) -> None:
        """Remove a network backend.

        Raises:
            HypervisorError: QEMU refused (unknown id).
        """
        await self._execute("netdev_del", {"id": netdev_id})

    async def set_link(self, name: str, up: bool) -> None:
        """Set the carrier of a NIC (device id) or network backend (netdev id).

        Raises:
            HypervisorError: QEMU refused (unknown name).
        """
        await self._execute("set_link", {"name": name, "up": bool(up)})

    async def query_pci(self) -> list[PciDevice]:
        """Every PCI function, devices behind bridges included.

        A bridge the firmware has not numbered yet (guest not booted) shows nothing behind it.

        Raises:
            HypervisorError: QMP failed or the reply is malformed.
        """
        reply = await self._execute("query-pci")
        if not isinstance(reply, list):
            raise _qmp_error("QMP query-pci did not return a list", failure="command")
        out: list[PciDevice] = []

        def walk(devices: object) -> None:
            for dev in devices if isinstance(devices, list) else []:
                if not isinstance(dev, dict):
                    continue
                info = dev.get("class_info")
                out.append(
                    PciDevice(
                        bus=int(dev.get("bus", 0)),
                        slot=int(dev.get("slot", 0)),
                        function=int(dev.get("function", 0)),
                        qdev_id=str(dev.get("qdev_id") or ""),
                        desc=str(info.get("desc") or "") if isinstance(info, dict) else "",
                    )
                )
                bridge = dev.get("pci_bridge")
                if isinstance(bridge, dict):
                    walk(bridge.get("devices"))

        for bus in reply:
            if isinstance(bus, dict):
                walk(bus.get("devices"))
        return out

    async def query_named_block_nodes(self) -> list[str]:
        """The node names of every named block node.

        Raises:
            HypervisorError: QMP failed or the reply is malformed.
        """
        reply = await self._execute("query-named-block-nodes", {"flat": True})
        if not isinstance(reply, list):
            raise _qmp_error("QMP query-named-block-nodes did not return a list", failure="command")
        return [str(n["node-name"]) for n in reply if isinstance(n, dict) and "node-name" in n]

    async def peripheral_ids(self) -> set[str]:
        """Ids of the devices created with an id (``-device``/``device_add``), from QOM.

        Raises:
            HypervisorError: QMP failed or the reply is malformed.
        """
        reply = await self._execute("qom-list", {"path": "/machine/peripheral"})
        if not isinstance(reply, list):
            raise _qmp_error("QMP qom-list did not return a list", failure="command")
        return {
            str(p["name"])
            for p in reply
            if isinstance(p, dict) and str(p.get("type", "")).startswith("child<")
        }

    # --- migration and save/restore (kvm/migration.py, kvm/lifecycle.py) -------------------

    async def getfd(self, fdname: str, fd: int) -> None:
        """Hand QEMU an open file descriptor (SCM_RIGHTS) under ``fdname``, for ``fd:`` URIs.

        Raises:
            HypervisorError: the descriptor could not be sent or QEMU refused it.
        """
        try:
            self._client.send_fd_scm(fd)
        except (OSError, QMPError, ValueError) as exc:
            raise _qmp_error(
                f"cannot pass a file descriptor to {self._name}: {exc}",
                failure="command",
                command="getfd",
            ) from exc
        await self._execute("getfd", {"fdname": fdname})

    async def migrate_set_parameters(self, parameters: Mapping[str, object]) -> None:
        """Set migration parameters (``max-bandwidth`` in bytes/s, ``downtime-limit`` in ms).

        Raises:
            HypervisorError: QMP failed (unknown parameter, value out of range).
        """
        await self._execute("migrate-set-parameters", dict(parameters))

    async def migrate(self, uri: str) -> None:
        """Start an outgoing migration to ``uri`` (returns at once; see :meth:`query_migrate`).

        Raises:
            HypervisorError: QMP refused to start it (e.g. one is already running).
        """
        await self._execute("migrate", {"uri": uri})

    async def migrate_incoming(self, uri: str) -> None:
        """Start listening for an incoming migration (QEMU started with ``-incoming defer``).

        Raises:
            HypervisorError: QMP refused (not started with ``-incoming defer``, address in use).
        """
        await self._execute("migrate-incoming", {"uri": uri})

    async def migrate_cancel(self) -> None:
        """Cancel the outgoing migration (a no-op when none runs).

        Raises:
            HypervisorError: QMP failed.
        """
        await self._execute("migrate_cancel")

    async def migrate_set_capabilities(self, capabilities: Mapping[str, bool]) -> None:
        """Turn migration capabilities on or off (e.g. ``events``: MIGRATION events).

        Raises:
            HypervisorError: QMP failed (unknown capability, or a migration is running).
        """
        caps = [{"capability": name, "state": bool(on)} for name, on in capabilities.items()]
        await self._execute("migrate-set-capabilities", {"capabilities": caps})

    async def wait_migration(self, timeout: float, *, poll: float = 0.01) -> dict[str, Any]:
        """``query-migrate`` once the migration is final (or after ``timeout`` seconds).

        Wakes up on QEMU's ``MIGRATION`` events (capability ``events``) and polls every
        ``poll`` seconds besides, so it also works without the capability.

        Raises:
            HypervisorError: QMP failed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        with self._client.listener(("MIGRATION",)) as listener:
            while True:
                reply = await self.query_migrate()
                status = reply.get("status") or "none"
                left = deadline - loop.time()
                # NOTE: QEMU 7.2 reports "completed" (and sends the event) a moment, up to
                # tens of ms, before it fills in total-time and downtime. The caller resumes
                # the guest on the destination next, so it gets the answer at once; the
                # figures are in later query-migrate answers.
                if status in ("completed", "failed", "cancelled", "none") or left <= 0:
                    return reply
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.get(), timeout=min(poll, left))

    async def query_migrate(self) -> dict[str, Any]:
        """The raw ``query-migrate`` answer (parsed by ``kvm/migration.parse_query_migrate``).

        Raises:
            HypervisorError: QMP failed or the reply is not an object.
        """
        return _expect_dict(await self._execute("query-migrate"), "query-migrate")


class Monitor:
    """The QMP endpoint of one instance (a UNIX socket path).

    Args:
        socket_path: the QMP socket.
        name: the instance name, for messages and logs.
        timeout: seconds allowed for connecting and for each command.
    """

    def __init__(self, socket_path: str, *, name: str = "", timeout: float = DEFAULT_TIMEOUT):
        self.socket_path = socket_path
        self.name = name or socket_path
        self.timeout = timeout

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[QmpSession]:
        """Open a session; it is closed when the block ends.

        Raises:
            HypervisorError: qmp_failure ``connect`` (no socket, refused, bad greeting) or
                ``timeout`` (nothing answered within the timeout).
        """
        client = QMPClient(self.name)
        try:
            await asyncio.wait_for(client.connect(self.socket_path), timeout=self.timeout)
        except TimeoutError as exc:
            raise _qmp_error(
                f"QMP of {self.name} at {self.socket_path} did not answer within {self.timeout:g}s",
                failure="timeout",
                timeout=self.timeout,
                socket=self.socket_path,
            ) from exc
        except (ConnectError, OSError, EOFError) as exc:
            cause = exc.exc if isinstance(exc, ConnectError) else exc
            raise _qmp_error(
                f"cannot connect to QMP of {self.name} at {self.socket_path}: {cause}",
                failure="connect",
                socket=self.socket_path,
            ) from exc
        try:
            yield QmpSession(client, name=self.name, timeout=self.timeout)
        finally:
            # NOTE: disconnect() re-raises whatever ended the reader task (EOFError after
            # `quit`); the session is over either way.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=self.timeout)

    async def run(self, action: Callable[[QmpSession], Awaitable[T]]) -> T:
        """Open a session, run ``action`` in it, close it.

        Raises:
            HypervisorError: as :meth:`connect` and the commands ``action`` runs.
        """
        async with self.connect() as session:
            return await action(session)

    def call(self, action: Callable[[QmpSession], Awaitable[T]]) -> T:
        """Synchronous :meth:`run`, for driver methods (uses :func:`asyncio.run`).

        Must not be called from a thread that runs an event loop.

        Raises:
            HypervisorError: as :meth:`run`.
        """
        return asyncio.run(self.run(action))

"""Migration of Xen domains between nodes: ``xl migrate`` over Corral's mutual-TLS tunnel.

The node-level steps, in the order a cluster migration calls them (see
``master/ops/mobility_steps.py``)::

    source: migration_info(name)        a one-time token, the source domain's id and run state
    target: accept_migration(spec, ...) NAME.cfg written; a TunnelListener on listen_host:port
                                        that runs ``xl migrate-receive -p`` for the one
                                        connection presenting the token
    source: migrate(name, host, port)   ``xl pause`` first when not live; then, in a thread,
                                        ``xl migrate -s <tunnel sender> -p -C NAME.cfg NAME HOST``
                                        with the token in CORRAL_XEN_TUNNEL_TOKEN
    source: migration_status(name)      none / active / completed / failed (xl's message)
    target: finalize_migration_target   success: unpause the arrived domain (unless the source
                                        was paused); failure: close the tunnel and destroy the
                                        incoming copy only
    source: finalize_migration_source   success: xl already destroyed the source, remove its
                                        files; failure: wait for xl migrate to end, then make
                                        sure the source runs as before

xl's ``-s`` option names the command xl runs instead of ssh (``sh -c "exec <cmd> <host> xl
migrate-receive ..."``); Corral's command (:func:`corral.hypervisor.xen.tunnel.sender_command`)
connects to the target's listener with the node's cluster certificate, so the stream never
travels unauthenticated and no ssh keys are needed between nodes. ``-p`` on both sides keeps
the arrived domain paused until the target is finalized, as the KVM driver's ``-S`` does.

**A migration to the same node** (``localhost``) has source and target in one driver: xl
renames the source ``NAME--migratedaway`` and creates the target as ``NAME--incoming``, renamed
``NAME`` once it runs; both sides share ``NAME.cfg``. The steps therefore tell the copies apart
by domain id (the source's is in the migration info) and never remove the config while a
domain called NAME exists.

Xen 4.17's ``xl migrate`` has no bandwidth or downtime options (it is always live: a
non-live migration pauses the domain first) and cannot be cancelled once it runs:
:meth:`XenMigration.abort_migration` refuses then, and the rollback closes the target's tunnel
instead (``finalize_migration_target(success=False)``), which makes the sender fail and xl
resume the source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from corral.common.errors import CorralError, ErrorKind, HypervisorError
from corral.common.paths import Paths
from corral.hypervisor.base import AttachedDisk, InstanceSpec, MigrationStatus
from corral.hypervisor.xen.lifecycle import INCOMING_SUFFIX, MIGRATEDAWAY_SUFFIX, XenCore
from corral.hypervisor.xen.tunnel import TOKEN_ENV, TunnelListener, sender_command
from corral.hypervisor.xen.xl import Xl

log = logging.getLogger(__name__)

#: Layout of the dict returned by :meth:`XenMigration.migration_info`.
MIGRATION_INFO_VERSION = 1
#: Seconds the finalize steps wait for ``xl migrate``/``migrate-receive`` to end.
FINISH_TIMEOUT = 90.0


@dataclasses.dataclass(slots=True)
class Outgoing:
    """An outgoing migration started by :meth:`XenMigration.migrate`."""

    name: str
    target_host: str
    live: bool
    source_domid: int
    was_paused: bool
    paused_by_us: bool
    started: float
    status: str = "active"
    error: str = ""
    finished: float | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


@dataclasses.dataclass(slots=True)
class Incoming:
    """An accepted incoming migration (its tunnel listener)."""

    name: str
    listener: TunnelListener
    source_running: bool
    source_domid: int | None
    local: bool
    wrote_config: bool


def failure_text(exc: HypervisorError, lines: int = 6) -> str:
    """The message of xl plus the last lines it printed (the tunnel's and the target's words).

    ``xl migrate`` ends with a generic line ("Migration failed", or libxl's view of a broken
    stream); the cause is usually a few lines up (the tunnel sender's error, "migration
    target: ..."). Progress lines are left out.
    """
    output = str(exc.fields.get("stderr", ""))
    tail = [
        line.strip()
        for line in output.splitlines()
        if line.strip() and "progress:" not in line and line.strip() not in exc.message
    ][-lines:]
    return exc.message + (f" (xl printed: {' | '.join(tail)})" if tail else "")


def migrate_timeout(memory_mib: int) -> float:
    """Seconds ``xl migrate`` may take: 11-86 s for 128 MiB under TCG, ~1 s/GiB on hardware."""
    return max(900.0, memory_mib / 2)


class XenMigration(XenCore):
    """The migration steps of the Xen drivers; see the module docstring."""

    def __init__(self, run_dir: str, **kwargs: Any) -> None:
        """See :class:`XenCore` for the arguments; adds the migrations in progress."""
        super().__init__(run_dir, **kwargs)
        self._outgoing: dict[str, Outgoing] = {}
        self._incoming: dict[str, Incoming] = {}
        self._tokens: dict[str, str] = {}
        #: tells a migration within this driver (same node daemon) from one between nodes
        self.driver_id = secrets.token_hex(8)

    def _need_paths(self) -> Paths:
        if self.paths is None:
            raise HypervisorError(
                "this driver was created without the node's paths; migration needs the "
                "cluster certificates",
                kind=ErrorKind.ENVIRONMENT,
            )
        return self.paths

    # --- source ------------------------------------------------------------------------------

    def migration_info(self, name: str) -> dict[str, Any]:
        """A one-time tunnel token plus what the target checks (domain id, run state).

        Raises:
            HypervisorError: WRONG_STATE when the domain does not run, is not this driver's,
                or is migrating already.
        """
        outgoing, tokens = self._outgoing, self._tokens
        dom = self._running(name)
        if not self._owned(name):
            raise HypervisorError(
                f"domain {name} was not started by Corral's {self.NAME} driver",
                kind=ErrorKind.WRONG_STATE,
            )
        current = outgoing.get(name)
        if current is not None and not current.done.is_set():
            raise HypervisorError(f"{name} is already migrating", kind=ErrorKind.WRONG_STATE)
        token = secrets.token_urlsafe(32)
        tokens[name] = token
        return {
            "version": MIGRATION_INFO_VERSION,
            "hypervisor": self.NAME,
            "token": token,
            "domid": dom.domid,
            "running": "p" not in dom.flags,
            "memory": dom.memory,
            "driver_id": self.driver_id,
        }

    def _server_name(self, target_host: str) -> str:
        """The TLS name the sender checks on the target's listener.

        A target on this node (a loopback address or one of this node's certificate
        addresses) is checked against this node's own certificate name; another node against
        its address, which its certificate lists (``tls.issue_node_cert``).
        """
        from corral.rpc import tls

        paths = self._need_paths()
        local = False
        with contextlib.suppress(ValueError):
            local = ipaddress.ip_address(target_host).is_loopback
        try:
            if local or target_host in tls.cert_addresses(paths.node_cert):
                return tls.cert_common_name(paths.node_cert)
        except CorralError as exc:
            raise HypervisorError(
                f"cannot read this node's certificate: {exc}", kind=ErrorKind.ENVIRONMENT
            ) from exc
        return target_host

    def migrate(
        self,
        name: str,
        *,
        target_host: str,
        port: int,
        live: bool,
        bandwidth_mib: int | None = None,
        downtime_ms: int | None = None,
    ) -> None:
        """Start ``xl migrate`` towards an accepting target in a thread (returns at once).

        Bandwidth and downtime are not supported by xl and are ignored (logged).

        Raises:
            HypervisorError: WRONG_STATE when not running, already migrating, or without a
                token from :meth:`migration_info`; INVALID for a bad port; xl pause failed.
        """
        outgoing, tokens = self._outgoing, self._tokens
        dom = self._running(name)
        if not 0 < port < 65536 or not target_host:
            raise HypervisorError(
                f"invalid migration address {target_host!r}:{port}", kind=ErrorKind.INVALID
            )
        current = outgoing.get(name)
        if current is not None and not current.done.is_set():
            raise HypervisorError(f"{name} is already migrating", kind=ErrorKind.WRONG_STATE)
        token = tokens.pop(name, None)
        if token is None:
            raise HypervisorError(
                f"no migration of {name} was prepared here (migration_info first)",
                kind=ErrorKind.WRONG_STATE,
            )
        if bandwidth_mib or downtime_ms:
            log.info("%s: xl migrate has no bandwidth/downtime settings; ignored", name)
        command = sender_command(
            self._need_paths(), port=port, server_name=self._server_name(target_host)
        )
        was_paused = "p" in dom.flags
        paused_by_us = False
        if not live and not was_paused:
            self.xl.run("pause", name, timeout=30)
            paused_by_us = True
        out = Outgoing(
            name=name,
            target_host=target_host,
            live=live,
            source_domid=dom.domid,
            was_paused=was_paused,
            paused_by_us=paused_by_us,
            started=time.monotonic(),
        )
        runtime = self._load_runtime(name)
        timeout = migrate_timeout(runtime.spec.memory if runtime else dom.memory)
        xl = Xl(self.xl_command, runner=functools.partial(self.runner, env={TOKEN_ENV: token}))
        argv = ["migrate", "-s", command, "-p", "-C", self.cfg_path(name), name, target_host]
        outgoing[name] = out
        thread = threading.Thread(
            target=self._send, args=(out, xl, argv, timeout), name=f"xl-migrate-{name}"
        )
        thread.daemon = True
        thread.start()
        log.info(
            "%s: %s migration to %s:%d started",
            name,
            "live" if live else "non-live",
            target_host,
            port,
        )

    @staticmethod
    def _send(out: Outgoing, xl: Xl, argv: Sequence[str], timeout: float) -> None:
        try:
            xl.run(*argv, timeout=timeout)
        except HypervisorError as exc:
            out.status, out.error = "failed", failure_text(exc)
            log.warning(
                "xl migrate of %s failed; xl printed:\n%s",
                out.name,
                str(exc.fields.get("stderr", "")).strip(),
            )
        except Exception as exc:  # a thread has nobody to raise to: keep it in the status
            log.exception("xl migrate of %s crashed", out.name)
            out.status, out.error = "failed", f"internal error: {exc}"
        else:
            out.status = "completed"
        finally:
            out.finished = time.monotonic()
            out.done.set()
        log.info(
            "migration of %s %s%s", out.name, out.status, f": {out.error}" if out.error else ""
        )

    def migration_status(self, name: str, *, wait: float = 0.0) -> MigrationStatus:
        """The state: none (no migration known), active, completed or failed (xl's message).

        With ``wait`` the answer comes as soon as the migration ended, or after ``wait`` s.
        """
        outgoing = self._outgoing
        self._check_name(name)
        out = outgoing.get(name)
        if out is None:
            return MigrationStatus(status="none")
        if wait > 0:
            out.done.wait(wait)
        end = out.finished if out.finished is not None else time.monotonic()
        return MigrationStatus(
            status=out.status,
            error=out.error,
            total_time_ms=int((end - out.started) * 1000) if out.finished is not None else None,
        )

    def _domain_with_id(self, domid: int) -> str | None:
        for dom in self.xl.domains():
            if dom.domid == domid:
                return dom.name
        return None

    def finalize_migration_source(self, name: str, *, success: bool) -> None:
        """Success: the source is gone (xl destroyed it), remove its files. Failure: resume.

        Raises:
            HypervisorError: (success) the migration has not completed — WRONG_STATE, the
                source is kept; (failure) the migration completed (WRONG_STATE: the guest
                lives on the target only), or no source domain is left to resume.
        """
        outgoing, tokens = self._outgoing, self._tokens
        self._check_name(name)
        out = outgoing.get(name)
        if success:
            if out is None or out.status != "completed":
                state = out.status if out else "none"
                raise HypervisorError(
                    f"the migration of {name} has not completed ({state}); the source is kept",
                    kind=ErrorKind.WRONG_STATE,
                    status=state,
                )
            deadline = time.monotonic() + self.gone_timeout
            while self._domain_with_id(out.source_domid) is not None:
                if time.monotonic() > deadline:
                    raise HypervisorError(
                        f"the source domain {out.source_domid} of {name} is still there",
                        kind=ErrorKind.ENVIRONMENT,
                    )
                time.sleep(self.poll)
            # NOTE: on a migration within this node the arrived domain is NAME and uses the
            # same config file: keep it then.
            if self._domain(name) is None:
                self._remove_files(name)
            del outgoing[name]
            log.info("%s: migrated away; source files removed", name)
            return
        tokens.pop(name, None)
        if out is not None and not out.done.wait(FINISH_TIMEOUT):
            raise HypervisorError(
                f"xl migrate of {name} is still running after {FINISH_TIMEOUT:g}s; finalize "
                "the target with failure first (it closes the tunnel)",
                kind=ErrorKind.WRONG_STATE,
            )
        if out is not None and out.status == "completed":
            raise HypervisorError(
                f"the migration of {name} completed: the guest runs on the target only",
                kind=ErrorKind.WRONG_STATE,
            )
        self._resume_source(name, out)
        outgoing.pop(name, None)
        log.info("%s: migration failed; the source runs on", name)

    def _resume_source(self, name: str, out: Outgoing | None) -> None:
        dom = self._domain(name)
        if dom is None or (out is not None and dom.domid != out.source_domid):
            # NOTE: xl renames the source back itself when the transfer fails; if it could
            # not (it was killed), the source still carries the temporary name.
            away = self._domain(name + MIGRATEDAWAY_SUFFIX)
            if away is not None:
                self.xl.run("rename", name + MIGRATEDAWAY_SUFFIX, name, timeout=30)
                dom = self._domain(name)
        if dom is None:
            raise HypervisorError(
                f"no source domain of {name} is left to resume", kind=ErrorKind.WRONG_STATE
            )
        if out is not None and out.paused_by_us:
            self._unpause_all(name)

    def abort_migration(self, name: str) -> None:
        """Forget a prepared migration; a running ``xl migrate`` cannot be cancelled.

        Raises:
            HypervisorError: WRONG_STATE when the migration is running (finalize the target
                with failure, which ends it) or has completed.
        """
        outgoing, tokens = self._outgoing, self._tokens
        out = outgoing.get(name)
        tokens.pop(name, None)
        if out is None:
            return
        if not out.done.is_set():
            raise HypervisorError(
                f"xl migrate of {name} cannot be cancelled while it runs; finalizing the "
                "target with failure closes its tunnel and ends it",
                kind=ErrorKind.WRONG_STATE,
            )
        if out.status == "completed":
            raise HypervisorError(
                f"the migration of {name} has already completed", kind=ErrorKind.WRONG_STATE
            )

    # --- target ------------------------------------------------------------------------------

    def accept_migration(
        self,
        spec: InstanceSpec,
        disks: Sequence[AttachedDisk],
        info: Mapping[str, Any],
        *,
        listen_host: str,
        port: int,
    ) -> None:
        """Write the config and listen on ``listen_host:port`` for the source's ``xl migrate``.

        Raises:
            HypervisorError: INVALID for info of another kind or version; WRONG_STATE when a
                domain of that name runs here (other than the source of a migration within
                this node) or a migration is being accepted already; the listener could not
                start (e.g. port in use). Nothing is left behind.
        """
        incoming = self._incoming
        name = self._check_name(spec.name)
        token = info.get("token")
        if (
            info.get("version") != MIGRATION_INFO_VERSION
            or info.get("hypervisor") != self.NAME
            or not isinstance(token, str)
            or not token
        ):
            raise HypervisorError(
                f"migration info for {name} is not {self.NAME} info of version "
                f"{MIGRATION_INFO_VERSION}",
                kind=ErrorKind.INVALID,
            )
        paths = self._need_paths()
        local = info.get("driver_id") == self.driver_id
        source_domid = info.get("domid")
        dom = self._domain(name)
        if dom is not None and not (local and dom.domid == source_domid):
            raise HypervisorError(
                f"instance {name} is already running here (domain {dom.domid})",
                kind=ErrorKind.WRONG_STATE,
            )
        if name in incoming:
            raise HypervisorError(
                f"a migration of {name} is already being accepted here",
                kind=ErrorKind.WRONG_STATE,
            )
        # NOTE: xl sends the source's config with the stream (-C); this node's copy is what
        # later stops, reboots and lists use. Within one node the source's file is it.
        wrote = not local
        if wrote:
            self._write_instance(spec, disks)
        listener = TunnelListener(
            paths,
            host=listen_host,
            port=port,
            token=token,
            receive_argv=[self.xl_command, "migrate-receive", "-p"],
        )
        try:
            listener.start()
        except BaseException:
            listener.close()
            if wrote:
                self._remove_files(name)
            raise
        incoming[name] = Incoming(
            name=name,
            listener=listener,
            source_running=bool(info.get("running", True)),
            source_domid=source_domid if isinstance(source_domid, int) else None,
            local=local,
            wrote_config=wrote,
        )
        log.info("%s: accepting a migration on %s:%d", name, listen_host, port)

    def finalize_migration_target(self, spec: InstanceSpec, *, success: bool) -> None:
        """Success: unpause the arrived domain. Failure: destroy the incoming copy only.

        Raises:
            HypervisorError: (success) the domain did not arrive (WRONG_STATE, with what
                ``xl migrate-receive`` printed); (failure) the receive completed and the
                arrived domain is the only copy (WRONG_STATE: it is kept).
        """
        incoming = self._incoming
        name = self._check_name(spec.name)
        inc = incoming.get(name)
        if success:
            self._finish_incoming(name, inc)
            return
        received = False
        if inc is not None:
            with contextlib.suppress(CorralError):
                result = inc.listener.wait(0.0)
                received = result is not None and result.rc == 0
            inc.listener.close()
        self._destroy(name + INCOMING_SUFFIX)
        dom = self._domain(name)
        if dom is not None and inc is not None and dom.domid != inc.source_domid and received:
            raise HypervisorError(
                f"{name} arrived here completely and its source is gone; it is kept "
                "(finalize with success, or stop it)",
                kind=ErrorKind.WRONG_STATE,
            )
        # NOTE: without the record (the node daemon restarted) a domain called NAME may be
        # the source of a migration within this node: only the incoming copy is touched then.
        if dom is not None and inc is not None and dom.domid != inc.source_domid:
            self._destroy(name)
            dom = None
        incoming.pop(name, None)
        if dom is None and (inc is None or inc.wrote_config or not inc.local):
            self._remove_files(name)
        log.info("%s: incoming migration abandoned", name)

    def _finish_incoming(self, name: str, inc: Incoming | None) -> None:
        output = ""
        if inc is not None:
            result = inc.listener.wait(FINISH_TIMEOUT)
            output = result.output or result.error
        dom = self._domain(name)
        if dom is None or (inc is not None and dom.domid == inc.source_domid):
            raise HypervisorError(
                f"{name} has not arrived here"
                + (f": {output.strip().splitlines()[-1]}" if output.strip() else ""),
                kind=ErrorKind.WRONG_STATE,
                output=output[-2000:],
            )
        if inc is None or inc.source_running:
            self._unpause_all(name)
        if inc is not None:
            inc.listener.close()
            self._incoming.pop(name, None)
        log.info("%s: incoming migration finished (domain %d)", name, dom.domid)

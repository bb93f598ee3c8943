"""Running Xen's ``xl`` toolstack: one method per query, errors that carry xl's own words.

Every command goes through :mod:`corral.common.runcmd` (argv lists, C locale, a timeout);
tests inject a replaying runner. A failed command becomes a :class:`HypervisorError`:

* its message is ``xl <subcommand> failed: <the most useful line xl printed>``
  (:func:`~corral.hypervisor.xen.xlparse.error_message`);
* its kind comes from :func:`~corral.hypervisor.xen.xlparse.error_kind` (NOT_FOUND for an
  unknown domain, EXISTS for a name in use, ENVIRONMENT otherwise), TEMP_NO_RESOURCES when
  xl did not finish in time, ENVIRONMENT when xl cannot be run at all;
* its fields are ``cmd`` (the argv), ``rc`` (``None`` when xl did not run or was killed)
  and ``stderr`` (the end of what xl printed).

``xl list`` is retried until a deadline when it fails transiently (Ganeti's
``_GetAllInstanceList``): xenstored or libxl can be briefly unavailable, e.g. while a domain
is being created or destroyed. A missing ``xl`` binary or an unknown domain is not
transient and is raised at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from corral.common import runcmd
from corral.common.errors import CommandError, CommandTimeout, ErrorKind, HypervisorError
from corral.common.runcmd import CmdResult, Runner
from corral.hypervisor.base import HvNodeInfo
from corral.hypervisor.xen import xlparse
from corral.hypervisor.xen.xlparse import XlDomain, XlDomainConfig, XlVcpu

log = logging.getLogger(__name__)

#: Seconds an ordinary xl query may take (``xl list -l`` takes ~1 s on a busy TCG dom0).
QUERY_TIMEOUT = 60.0
#: Ganeti's retry delays for ``xl list``: first delay, growth factor, longest delay.
RETRY_DELAYS = (0.3, 1.5, 1.0)


class Xl:
    """The ``xl`` command of one node.

    Args:
        command: the program (``xl`` looked up in PATH, or an absolute path; the ``xen_cmd``
            hvparam).
        runner: runs commands; :func:`corral.common.runcmd.run` unless a test injects one.
        clock: monotonic seconds (tests inject a fake one for the retry deadline).
        sleep: waits between retries (tests inject a fake one).
    """

    def __init__(
        self,
        command: str = "xl",
        *,
        runner: Runner = runcmd.run,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.command = command
        self._runner = runner
        self._clock = clock
        self._sleep = sleep

    def argv(self, *args: str) -> list[str]:
        """The full command line of ``xl <args>``."""
        return [self.command, *args]

    def run(self, *args: str, timeout: float = QUERY_TIMEOUT) -> CmdResult:
        """Run ``xl <args>`` (C locale) and return its result when it exits 0.

        Raises:
            HypervisorError: xl exited non-zero (kind from its message, fields ``cmd``,
                ``rc``, ``stderr``), timed out (TEMP_NO_RESOURCES, ``rc`` None), or could not
                be started (ENVIRONMENT, ``rc`` None, ``missing`` True).
        """
        argv = self.argv(*args)
        what = f"xl {args[0]}" if args else "xl"
        try:
            result = self._runner(argv, timeout=timeout, check=False, c_locale=True)
        except CommandTimeout as exc:
            raise HypervisorError(
                f"{what} did not finish within {timeout:g}s",
                kind=ErrorKind.TEMP_NO_RESOURCES,
                cmd=argv,
                rc=None,
                stderr=exc.stderr[-4000:],
                timeout=timeout,
            ) from exc
        except CommandError as exc:
            raise HypervisorError(
                f"cannot run {self.command!r}: {exc.stderr.strip() or exc}"
                " (is the Xen toolstack installed?)",
                kind=ErrorKind.ENVIRONMENT,
                cmd=argv,
                rc=None,
                stderr=exc.stderr[-4000:],
                missing=True,
            ) from exc
        if result.rc != 0:
            output = result.stderr if result.stderr.strip() else result.stdout
            message = xlparse.error_message(output) or f"exit code {result.rc}"
            raise HypervisorError(
                f"{what} failed: {message}",
                kind=xlparse.error_kind(output),
                cmd=argv,
                rc=result.rc,
                stderr=output[-4000:],
            )
        return result

    def _run_retrying(self, args: Sequence[str], deadline: float) -> CmdResult:
        """:meth:`run`, repeated on transient failures for up to ``deadline`` seconds.

        Transient: xl ran and failed with an ENVIRONMENT error, or timed out. The last
        error is raised (with the number of attempts) when the deadline has passed.
        """
        end = self._clock() + deadline
        delay, factor, longest = RETRY_DELAYS
        attempts = 0
        while True:
            attempts += 1
            try:
                return self.run(*args, timeout=max(1.0, min(QUERY_TIMEOUT, deadline)))
            except HypervisorError as exc:
                transient = not exc.fields.get("missing") and exc.kind in (
                    ErrorKind.ENVIRONMENT,
                    ErrorKind.TEMP_NO_RESOURCES,
                )
                if not transient or self._clock() + delay > end:
                    exc.fields["attempts"] = attempts
                    raise
                log.warning("xl %s failed (attempt %d), retrying: %s", args[0], attempts, exc)
            self._sleep(delay)
            delay = min(delay * factor, longest)

    def domains(self, *, include_dom0: bool = False, deadline: float = 10.0) -> list[XlDomain]:
        """All domains (``xl list``), running or shut down; Domain-0 only when asked.

        Args:
            include_dom0: keep Domain-0 in the list.
            deadline: seconds during which transient failures are retried.

        Raises:
            HypervisorError: xl is missing (ENVIRONMENT, at once), kept failing until the
                deadline (its last error, field ``attempts``), or printed something that is
                not a domain list (FAULT).
        """
        result = self._run_retrying(["list"], deadline)
        return xlparse.parse_list(result.stdout, include_dom0=include_dom0)

    def domain(self, name: str, *, deadline: float = 10.0) -> XlDomain | None:
        """The domain called ``name`` (``xl list <name>``), or None when there is none.

        Raises:
            HypervisorError: as :meth:`domains`.
        """
        try:
            result = self._run_retrying(["list", name], deadline)
        except HypervisorError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        found = [d for d in xlparse.parse_list(result.stdout, include_dom0=True) if d.name == name]
        return found[0] if found else None

    def info(self) -> dict[str, str]:
        """``xl info`` as ``{key: value}``.

        Raises:
            HypervisorError: xl failed, or printed no ``key : value`` line (FAULT).
        """
        return xlparse.parse_info(self.run("info").stdout)

    def node_info(self, hypervisor: str) -> HvNodeInfo:
        """Node facts from ``xl info`` and ``xl list`` (see :func:`xlparse.node_info`).

        Raises:
            HypervisorError: xl failed, or a needed ``xl info`` key is missing (FAULT).
        """
        info = self.info()
        return xlparse.node_info(info, self.domains(include_dom0=True), hypervisor)

    def config(self, name: str) -> XlDomainConfig | None:
        """The configuration of domain ``name`` (``xl list -l <name>``), None if unknown.

        Raises:
            HypervisorError: xl failed for another reason, or its JSON is not libxl's (FAULT).
        """
        try:
            result = self.run("list", "-l", name)
        except HypervisorError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        found = [c for c in xlparse.parse_list_long(result.stdout) if c.name == name]
        return found[0] if found else None

    def vcpus(self, name: str) -> list[XlVcpu]:
        """The vCPUs of domain ``name`` (``xl vcpu-list <name>``), with their affinities.

        Raises:
            HypervisorError: unknown domain (NOT_FOUND), xl failed, or its output is not a
                vCPU list (FAULT).
        """
        return xlparse.parse_vcpu_list(self.run("vcpu-list", name).stdout)

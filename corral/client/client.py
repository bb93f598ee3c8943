"""``CorralClient``: the Python client of the master's API (used by the CLI).

It talks HTTP to the Ganeti-compatible RAPI v2 of ``corral-master``:

* by default over the master's root-only UNIX socket (``paths.master_socket``), where no
  credentials are needed (the socket's file mode is the authentication);
* or to a RAPI URL (``https://host:5080``) with HTTP Basic credentials of a RAPI user.

Errors: every failure is a :class:`~corral.common.errors.CorralError`. An error answer of the
API is rebuilt from its body (``kind``, ``type``, ``explain``, ``fields``) with
:func:`~corral.common.errors.error_from_wire`, so callers can test ``err.kind``; the HTTP
status is kept in ``err.fields["http_status"]``. Transport problems (socket missing, connection
refused, TLS, timeout) are ``ENVIRONMENT`` errors whose message says what to do.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import httpx

from corral.common.errors import (
    HTTP_STATUS_KIND,
    CorralError,
    ErrorKind,
    error_from_result,
    error_from_wire,
)
from corral.common.paths import Paths
from corral.objects.job import JobStatus

#: Job statuses after which a job never changes.
FINAL_STATUSES = frozenset(s.value for s in JobStatus if s.finalized)


#: Seconds to wait for an answer; the server holds ``/2/jobs/[id]/wait`` for up to 10 s.
DEFAULT_TIMEOUT = 60.0


def job_params(dry_run: bool = False, reason: str | None = None) -> list[tuple[str, Any]]:
    """The query parameters every job-submitting RAPI resource takes.

    ``dry-run=1`` makes the master run only the opcode's checks (the job then succeeds or
    fails without changing anything); ``reason`` goes into the opcodes' reason trail.
    """
    params: list[tuple[str, Any]] = []
    if dry_run:
        params.append(("dry-run", True))
    if reason:
        params.append(("reason", reason))
    return params


def job_error(job: Mapping[str, Any]) -> CorralError | None:
    """The error of a finished job (from ``/2/jobs/[id]``), or None if it succeeded."""
    status = job.get("status")
    if status == "success":
        return None
    if status == "canceled":
        return CorralError(f"job {job.get('id')} was canceled", kind=ErrorKind.WRONG_STATE)
    for op_status, result in zip(
        job.get("opstatus") or [], job.get("opresult") or [], strict=False
    ):
        if op_status == "error":
            return error_from_result(result)
    return CorralError(f"job {job.get('id')} ended with status {status}")


def _missing(path: str) -> bool:
    """Whether ``path`` does not exist (False when we may not look: not ours to judge)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


class CorralClient:
    """HTTP client of the master's API.

    Args:
        socket_path: the master's UNIX socket (used when ``url`` is not given).
        url: a RAPI base URL such as ``https://master:5080``.
        user: RAPI user for ``url`` (HTTP Basic).
        password: that user's password.
        verify: TLS verification for ``url``: True (system CAs), False, or a CA file path.
        timeout: seconds to wait for any answer.
        transport: an httpx transport to use instead (tests).
    """

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        url: str | None = None,
        user: str | None = None,
        password: str | None = None,
        verify: bool | str = True,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if url is None and socket_path is None and transport is None:
            raise ValueError("CorralClient needs a socket_path, a url or a transport")
        self.socket_path = socket_path
        self.url = url
        auth = httpx.BasicAuth(user, password or "") if url and user else None
        if transport is None and url is None:
            transport = httpx.HTTPTransport(uds=socket_path)
        self.where = url or f"the master at {socket_path}"
        #: Set by :meth:`for_paths`: lets a connection failure say "no cluster here".
        self.paths: Paths | None = None
        self._http = httpx.Client(
            base_url=url or "http://localhost",
            transport=transport,
            auth=auth,
            verify=verify,
            timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": "corral-client"},
        )

    @classmethod
    def for_paths(cls, paths: Paths, **kw: Any) -> CorralClient:
        """A client of the local master (its UNIX socket under ``paths``)."""
        client = cls(socket_path=paths.master_socket, **kw)
        client.paths = paths
        return client

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, Any]] | None = None,
        body: Any = None,
        has_body: bool = False,
    ) -> Any:
        """Send one request and return the decoded JSON answer.

        Args:
            method: HTTP method.
            path: the resource (``/2/instances``).
            params: query parameters; booleans are sent as 0/1, None values are dropped.
            body: the JSON body (sent when not None or ``has_body``).
            has_body: send ``body`` even when it is None (``null``).

        Raises:
            CorralError: the API's error (rebuilt with its kind) or a transport problem.
        """
        if self.url is None and self.socket_path and not os.path.exists(self.socket_path):
            # NOTE: checked here because httpcore leaks the socket of a failed UNIX connect.
            raise self._connect_error(FileNotFoundError(self.socket_path))
        query = [
            (k, int(v) if isinstance(v, bool) else v) for k, v in params or [] if v is not None
        ]
        headers = {}
        content = None
        if body is not None or has_body:
            content = json.dumps(body, sort_keys=True).encode()
            headers["Content-Type"] = "application/json"
        try:
            resp = self._http.request(method, path, params=query, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            raise CorralError(
                f"timed out waiting for {self.where}; the request may still be processed",
                kind=ErrorKind.TEMP_NO_RESOURCES,
            ) from exc
        except (httpx.TransportError, OSError) as exc:
            raise self._connect_error(exc) from exc
        return self._decode(resp)

    def _connect_error(self, exc: Exception) -> CorralError:
        text = str(exc)
        if self.url is None and self.paths is not None and _missing(self.paths.cluster_conf):
            return CorralError(
                f"no cluster is initialised under {self.paths.root} (run 'corral cluster "
                "init' first, or point --root / $CORRAL_ROOT at the cluster's root)",
                kind=ErrorKind.WRONG_STATE,
                cause=text,
            )
        if self.url is None:
            if "Permission denied" in text or isinstance(exc, PermissionError):
                msg = (
                    f"permission denied on the master socket {self.socket_path}: "
                    "run this command as root"
                )
            else:
                msg = (
                    f"cannot connect to the master at {self.socket_path}: is corral-master "
                    "running? (corral daemons status)"
                )
        else:
            msg = f"cannot connect to the Corral API at {self.url}: {text or type(exc).__name__}"
        return CorralError(msg, kind=ErrorKind.ENVIRONMENT, cause=text)

    def _decode(self, resp: httpx.Response) -> Any:
        try:
            data = resp.json() if resp.content.strip() else None
        except ValueError:
            data = None
            if resp.status_code == 200:
                raise CorralError(
                    f"{self.where} sent an answer that is not JSON", kind=ErrorKind.FAULT
                ) from None
        if resp.status_code == 200:
            return data
        if isinstance(data, dict) and ("explain" in data or "message" in data):
            kind = data.get("kind") or HTTP_STATUS_KIND.get(resp.status_code, ErrorKind.FAULT).value
            message = str(data.get("explain") or data.get("message") or resp.reason_phrase)
            if resp.status_code == 401:
                message = f"authentication failed at {self.where}: wrong user or password"
                if self.url is None or not self._http.auth:
                    message += " (give --user and set CORRAL_PASSWORD)"
            elif resp.status_code == 403:
                message = f"permission denied: {message}"
            err = error_from_wire(
                {
                    "type": data.get("type", "CorralError"),
                    "kind": kind,
                    "message": message,
                    "fields": data.get("fields") or {},
                }
            )
        else:
            kind = HTTP_STATUS_KIND.get(resp.status_code, ErrorKind.FAULT)
            err = CorralError(
                f"{resp.status_code} {resp.reason_phrase}: {resp.text[:500]}", kind=kind
            )
        err.fields["http_status"] = resp.status_code
        raise err

    # --- cluster -------------------------------------------------------------------------------
    def version(self) -> int:
        """The RAPI version (2)."""
        return int(self.request("GET", "/version"))

    def info(self) -> dict[str, Any]:
        """Cluster information (``/2/info``)."""
        result: dict[str, Any] = self.request("GET", "/2/info")
        return result

    def features(self) -> list[str]:
        """Optional RAPI features."""
        return list(self.request("GET", "/2/features"))

    def os_names(self) -> list[str]:
        """Valid OS names (with variants)."""
        return list(self.request("GET", "/2/os"))

    # --- queries -------------------------------------------------------------------------------
    def query(
        self, resource: str, fields: Sequence[str], names: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Ganeti ``/2/query``: ``{"fields": [...], "data": [[[status, value], ...], ...]}``.

        Raises:
            CorralError: NOT_FOUND when one of ``names`` does not exist.
        """
        qfilter: Any = None
        if names:
            key = "id" if resource == "job" else "name"
            qfilter = ["|", *[["=", key, n] for n in names]]
        body = {"fields": list(fields), "qfilter": qfilter}
        result: dict[str, Any] = self.request("PUT", f"/2/query/{resource}", body=body)
        return result

    def query_fields(self, resource: str) -> list[dict[str, str]]:
        """Field definitions of a query resource."""
        return list(self.request("GET", f"/2/query/{resource}/fields")["fields"])

    # --- instances -----------------------------------------------------------------------------
    def instance_names(self) -> list[str]:
        """Names of all instances."""
        return [i["id"] for i in self.request("GET", "/2/instances")]

    def instance(self, name: str) -> dict[str, Any]:
        """One instance's RAPI fields."""
        result: dict[str, Any] = self.request("GET", f"/2/instances/{name}")
        return result

    # Every method that submits a job takes ``dry_run`` (the master only runs the checks)
    # and ``reason`` (added to the opcodes' reason trail); see :func:`job_params`.

    def create_instance(
        self, spec: Mapping[str, Any], *, dry_run: bool = False, reason: str | None = None
    ) -> int:
        """Submit an instance creation (``spec`` in RAPI v1 form: name, os, disks, ...)."""
        body = {"__version__": 1, **spec}
        return int(
            self.request("POST", "/2/instances", params=job_params(dry_run, reason), body=body)
        )

    def remove_instance(
        self, name: str, *, dry_run: bool = False, reason: str | None = None, **body: Any
    ) -> int:
        """Submit an instance removal (body: ``shutdown_timeout``, ``ignore_failures``)."""
        return int(
            self.request(
                "DELETE",
                f"/2/instances/{name}",
                params=job_params(dry_run, reason),
                body=body or None,
            )
        )

    def startup_instance(
        self,
        name: str,
        *,
        force: bool = False,
        no_remember: bool = False,
        dry_run: bool = False,
        reason: str | None = None,
        **body: Any,
    ) -> int:
        """Submit an instance start."""
        params = [("force", force), ("no_remember", no_remember), *job_params(dry_run, reason)]
        return int(
            self.request("PUT", f"/2/instances/{name}/startup", params=params, body=body or None)
        )

    def shutdown_instance(
        self,
        name: str,
        *,
        no_remember: bool = False,
        dry_run: bool = False,
        reason: str | None = None,
        **body: Any,
    ) -> int:
        """Submit an instance stop (body: ``timeout``, ``force``)."""
        params = [("no_remember", no_remember), *job_params(dry_run, reason)]
        return int(
            self.request("PUT", f"/2/instances/{name}/shutdown", params=params, body=body or None)
        )

    def power_instance(
        self, name: str, action: str, *, dry_run: bool = False, reason: str | None = None
    ) -> int:
        """Submit a Corral pause, resume, suspend or unsuspend (``action``).

        Raises:
            ValueError: an unknown action.
        """
        if action not in ("pause", "resume", "suspend", "unsuspend"):
            raise ValueError(f"unknown instance action {action!r}")
        return int(
            self.request("PUT", f"/2/instances/{name}/{action}", params=job_params(dry_run, reason))
        )

    def reboot_instance(
        self,
        name: str,
        *,
        reboot_type: str = "hard",
        ignore_secondaries: bool = False,
        dry_run: bool = False,
        reason: str | None = None,
        **body: Any,
    ) -> int:
        """Submit a reboot (``soft``, ``hard`` or ``full``)."""
        params = [
            ("type", reboot_type),
            ("ignore_secondaries", ignore_secondaries),
            *job_params(dry_run, reason),
        ]
        return int(
            self.request("POST", f"/2/instances/{name}/reboot", params=params, body=body or None)
        )

    def modify_instance(
        self, name: str, *, dry_run: bool = False, reason: str | None = None, **body: Any
    ) -> int:
        """Submit a parameter change (``beparams``, ``hvparams``, ``osparams``, ``runtime_mem``)."""
        return int(
            self.request(
                "PUT",
                f"/2/instances/{name}/modify",
                params=job_params(dry_run, reason),
                body=body,
            )
        )

    def rename_instance(
        self,
        name: str,
        new_name: str,
        *,
        dry_run: bool = False,
        reason: str | None = None,
        **body: Any,
    ) -> int:
        """Submit a rename."""
        return int(
            self.request(
                "PUT",
                f"/2/instances/{name}/rename",
                params=job_params(dry_run, reason),
                body={"new_name": new_name, **body},
            )
        )

    def reinstall_instance(
        self,
        name: str,
        *,
        os: str | None = None,
        osparams: Mapping[str, Any] | None = None,
        start: bool = False,
        dry_run: bool = False,
        reason: str | None = None,
    ) -> int:
        """Submit a reinstall (shutdown, reinstall, and start if ``start``)."""
        body: dict[str, Any] = {"start": start}
        if os is not None:
            body["os"] = os
        if osparams is not None:
            body["osparams"] = dict(osparams)
        return int(
            self.request(
                "POST",
                f"/2/instances/{name}/reinstall",
                params=job_params(dry_run, reason),
                body=body,
            )
        )

    def grow_disk(
        self,
        name: str,
        disk: int,
        amount: int,
        *,
        absolute: bool = False,
        wait_for_sync: bool = True,
        dry_run: bool = False,
        reason: str | None = None,
    ) -> int:
        """Submit a disk grow (``amount`` MiB; the final size if ``absolute``)."""
        body = {"amount": amount, "absolute": absolute, "wait_for_sync": wait_for_sync}
        return int(
            self.request(
                "POST",
                f"/2/instances/{name}/disk/{disk}/grow",
                params=job_params(dry_run, reason),
                body=body,
            )
        )

    def console(self, name: str) -> dict[str, Any]:
        """The console dict of a running instance."""
        result: dict[str, Any] = self.request("GET", f"/2/instances/{name}/console")
        return result

    def instance_tags(self, name: str) -> list[str]:
        """An instance's tags."""
        return list(self.request("GET", f"/2/instances/{name}/tags"))

    def add_instance_tags(
        self,
        name: str,
        tags: Sequence[str],
        *,
        dry_run: bool = False,
        reason: str | None = None,
    ) -> int:
        """Submit adding tags."""
        params = [*(("tag", t) for t in tags), *job_params(dry_run, reason)]
        return int(self.request("PUT", f"/2/instances/{name}/tags", params=params))

    def remove_instance_tags(
        self,
        name: str,
        tags: Sequence[str],
        *,
        dry_run: bool = False,
        reason: str | None = None,
    ) -> int:
        """Submit removing tags."""
        params = [*(("tag", t) for t in tags), *job_params(dry_run, reason)]
        return int(self.request("DELETE", f"/2/instances/{name}/tags", params=params))

    def instance_info_job(self, name: str, *, static: bool = False) -> int:
        """Submit a detailed-info job; its result is ``{name: info}``."""
        return int(self.request("GET", f"/2/instances/{name}/info", params=[("static", static)]))

    # --- nodes ---------------------------------------------------------------------------------
    def node_names(self) -> list[str]:
        """Names of all nodes."""
        return [n["id"] for n in self.request("GET", "/2/nodes")]

    def node(self, name: str) -> dict[str, Any]:
        """One node's RAPI fields."""
        result: dict[str, Any] = self.request("GET", f"/2/nodes/{name}")
        return result

    # --- jobs ----------------------------------------------------------------------------------
    def job_ids(self) -> list[int]:
        """Ids of all jobs."""
        return [int(j["id"]) for j in self.request("GET", "/2/jobs")]

    def job(self, job_id: int) -> dict[str, Any]:
        """One job (id, status, ops, opstatus, opresult, oplog, summary, timestamps)."""
        result: dict[str, Any] = self.request("GET", f"/2/jobs/{job_id}")
        return result

    def cancel_job(self, job_id: int) -> tuple[bool, str]:
        """Cancel a job that has not started: ``(success, message)``."""
        ok, msg = self.request("DELETE", f"/2/jobs/{job_id}")
        return bool(ok), str(msg)

    def wait_for_job_change(
        self,
        job_id: int,
        fields: Sequence[str],
        prev_job_info: list[Any] | None,
        prev_log_serial: int | None,
    ) -> dict[str, Any] | None:
        """One long poll (the server waits up to ~10 s): None if nothing changed."""
        body = {
            "fields": list(fields),
            "previous_job_info": prev_job_info,
            "previous_log_serial": prev_log_serial,
        }
        result: dict[str, Any] | None = self.request("GET", f"/2/jobs/{job_id}/wait", body=body)
        return result

    def follow_job(
        self,
        job_id: int,
        on_log: Callable[[list[Any]], None] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Wait until a job ends, passing each new log entry to ``on_log``.

        Returns:
            The finished job (as :meth:`job`).

        Raises:
            CorralError: the API failed, or ``timeout`` seconds passed (TEMP_NO_RESOURCES).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        prev_info: list[Any] | None = None
        prev_serial: int | None = None
        while True:
            change = self.wait_for_job_change(job_id, ["status"], prev_info, prev_serial)
            if change is not None:
                prev_info = change["job_info"]
                for entry in change["log_entries"]:
                    prev_serial = max(prev_serial or 0, int(entry[0]))
                    if on_log is not None:
                        on_log(entry)
                if prev_info and prev_info[0] in FINAL_STATUSES:
                    return self.job(job_id)
            if deadline is not None and time.monotonic() > deadline:
                raise CorralError(
                    f"job {job_id} did not finish within {timeout:g}s; it keeps running "
                    f"(corral job watch {job_id})",
                    kind=ErrorKind.TEMP_NO_RESOURCES,
                )

"""The master IP: an address that follows the leader master (Ganeti's master IP).

Cluster parameters (Ganeti's names, on :class:`~corral.objects.cluster.Cluster`):
``master_ip`` ("" = the cluster has none: nothing is done), ``master_netdev``,
``master_netmask`` (prefix length) and ``use_external_mip_script``.

When a master becomes the leader it *turns up* the IP on its node; when it stops leading (it
was deposed, handed the role over, or is stopped) it *turns it down*. Each change runs, on this
node, through the local hooks runner (``node/backend/hooks.py``), as Ganeti does:

1. the ``master-ip-turnup`` (or ``-turndown``) **pre** hooks; a failing pre hook aborts a
   turnup (:class:`HookError`) — but never a turndown: a master that no longer leads must not
   keep the address, so the failure is only logged;
2. the change itself: by default ``ip address add|del IP/NETMASK dev NETDEV`` (an address
   already present, or already gone, is fine); with ``use_external_mip_script`` the
   administrator's script ``<root>/etc/ganeti/scripts/master-ip-setup start|stop``, run with a
   clean environment holding only ``MASTER_NETDEV``, ``MASTER_IP``, ``MASTER_NETMASK`` and
   ``CLUSTER_IP_VERSION`` (plus a safe PATH), as Ganeti runs it;
3. the **post** hooks (failures logged).

Hook scripts get Ganeti's environment: ``GANETI_HOOKS_VERSION=2``, ``GANETI_HOOKS_PHASE``,
``GANETI_HOOKS_PATH``, ``GANETI_OP_CODE`` (``OP_CLUSTER_IP_TURNUP``/``OP_CLUSTER_IP_TURNDOWN``),
``GANETI_OBJECT_TYPE=CLUSTER``, ``GANETI_CLUSTER``, ``GANETI_MASTER``, ``GANETI_DATA_DIR`` and
the four variables above prefixed with ``GANETI_``.

Everything here is blocking (commands); the master service calls it in a worker thread.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
from collections.abc import Mapping

from corral.common import runcmd
from corral.common.errors import CommandError, CorralError, ErrorKind, HookError
from corral.common.paths import Paths
from corral.node.backend.hooks import HooksRunner

log = logging.getLogger(__name__)

TURNUP_HPATH = "master-ip-turnup"
TURNDOWN_HPATH = "master-ip-turndown"
_OP_CODES = {TURNUP_HPATH: "OP_CLUSTER_IP_TURNUP", TURNDOWN_HPATH: "OP_CLUSTER_IP_TURNDOWN"}
#: Seconds the setup command or script may run.
SETUP_TIMEOUT = 30.0
#: Seconds one hook script may run (shorter than operation hooks: a failover waits on it).
HOOK_TIMEOUT = 30.0
_EXISTS_MARKERS = ("File exists", "already assigned")
_GONE_MARKERS = ("Cannot assign requested address", "not found", "No such")


@dataclasses.dataclass(frozen=True, slots=True)
class MasterIpParams:
    """The master IP settings of a cluster."""

    cluster_name: str
    master_node: str
    ip: str
    netdev: str
    netmask: int
    use_external_script: bool

    @property
    def version(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.ip).version

    def env(self) -> dict[str, str]:
        """The setup script's variables (Ganeti's ``_BuildMasterIpEnv``)."""
        return {
            "MASTER_NETDEV": self.netdev,
            "MASTER_IP": self.ip,
            "MASTER_NETMASK": str(self.netmask),
            "CLUSTER_IP_VERSION": str(self.version),
        }


def params_from_cluster(cluster: object, master_node: str) -> MasterIpParams | None:
    """The cluster's master IP settings with ``master_node`` as master; None when unset.

    Raises:
        CorralError: the settings are invalid (kind INVALID: bad address, netmask or no
            netdev).
    """
    ip = str(getattr(cluster, "master_ip", "") or "")
    if not ip:
        return None
    netdev = str(getattr(cluster, "master_netdev", "") or "")
    netmask = int(getattr(cluster, "master_netmask", 32))
    try:
        version = ipaddress.ip_address(ip).version
    except ValueError as exc:
        raise CorralError(f"master_ip {ip!r} is not an IP address", kind=ErrorKind.INVALID) from exc
    if not 0 <= netmask <= (32 if version == 4 else 128):
        raise CorralError(f"master_netmask {netmask} is out of range", kind=ErrorKind.INVALID)
    if not netdev:
        raise CorralError("master_ip is set but master_netdev is not", kind=ErrorKind.INVALID)
    return MasterIpParams(
        cluster_name=str(getattr(cluster, "name", "")),
        master_node=master_node,
        ip=ip,
        netdev=netdev,
        netmask=netmask,
        use_external_script=bool(getattr(cluster, "use_external_mip_script", False)),
    )


def external_script(paths: Paths) -> str:
    """Ganeti's external master IP setup script under ``paths``' root."""
    return os.path.join(paths.root, "etc/ganeti/scripts/master-ip-setup")


def default_argv(params: MasterIpParams, action: str) -> list[str]:
    """The ``ip`` command of the default setup (``start`` adds, ``stop`` deletes)."""
    verb = "add" if action == "start" else "del"
    family = "-4" if params.version == 4 else "-6"
    return ["ip", family, "address", verb, f"{params.ip}/{params.netmask}", "dev", params.netdev]


def hooks_env(params: MasterIpParams, paths: Paths, hpath: str, phase: str) -> dict[str, str]:
    """The complete environment of the master IP hooks (see the module docstring)."""
    env = {f"GANETI_{k}": v for k, v in params.env().items()}
    env.update(
        {
            "GANETI_HOOKS_VERSION": "2",
            "GANETI_HOOKS_PHASE": phase.upper(),
            "GANETI_HOOKS_PATH": hpath,
            "GANETI_OP_CODE": _OP_CODES[hpath],
            "GANETI_OBJECT_TYPE": "CLUSTER",
            "GANETI_CLUSTER": params.cluster_name,
            "GANETI_MASTER": params.master_node,
            "GANETI_DATA_DIR": paths.data_dir,
        }
    )
    return env


class MasterIp:
    """Turns the master IP up and down on this node (see the module docstring).

    Args:
        paths: this node's paths (hooks directories, external script).
    """

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.hooks = HooksRunner(
            paths.hooks_dir, timeout=HOOK_TIMEOUT, extra_dirs=[paths.ganeti_hooks_dir]
        )

    def turnup(self, params: MasterIpParams) -> None:
        """Add the master IP here (pre hooks, setup ``start``, post hooks).

        Raises:
            HookError: a pre hook failed (the IP was not added).
            CommandError: the setup command or script failed.
        """
        self._change(params, TURNUP_HPATH, "start")

    def turndown(self, params: MasterIpParams) -> None:
        """Remove the master IP here (pre hooks, setup ``stop``, post hooks).

        A failing pre hook is logged and does not stop the removal.

        Raises:
            CommandError: the setup command or script failed.
        """
        self._change(params, TURNDOWN_HPATH, "stop")

    def _change(self, params: MasterIpParams, hpath: str, action: str) -> None:
        failed = self._hooks(params, hpath, "pre")
        if failed:
            text = "; ".join(failed)
            if action == "start":
                raise HookError(f"{hpath} pre hook refused: {text}", hpath=hpath)
            log.error("%s pre hook failed (the IP is removed anyway): %s", hpath, text)
        self._setup(params, action)
        log.info(
            "master IP %s/%d %s on %s",
            params.ip,
            params.netmask,
            "up" if action == "start" else "down",
            params.netdev,
        )
        for text in self._hooks(params, hpath, "post"):
            log.warning("%s post hook failed: %s", hpath, text)

    def _setup(self, params: MasterIpParams, action: str) -> None:
        if params.use_external_script:
            script = external_script(self.paths)
            runcmd.run(
                [script, action], timeout=SETUP_TIMEOUT, env=params.env(), clear_env=True, cwd="/"
            )
            return
        try:
            runcmd.run(default_argv(params, action), timeout=SETUP_TIMEOUT, c_locale=True)
        except CommandError as exc:
            stderr = str(exc.fields.get("stderr", ""))
            markers = _EXISTS_MARKERS if action == "start" else _GONE_MARKERS
            if exc.fields.get("rc") is not None and any(m in stderr for m in markers):
                log.debug("master IP already %s: %s", "up" if action == "start" else "down", stderr)
                return
            raise

    def _hooks(self, params: MasterIpParams, hpath: str, phase: str) -> list[str]:
        env: Mapping[str, str] = hooks_env(params, self.paths, hpath, phase)
        try:
            results = self.hooks.run(hpath, phase, env)
        except CorralError as exc:
            return [f"(runner): {exc}"]
        return [
            f"{r.script}" + (f": {r.output}" if r.output else "")
            for r in results
            if r.status == "fail"
        ]

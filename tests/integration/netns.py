"""A node daemon inside a network namespace, to partition it from the master (``test_partition``).

:class:`NetNs` creates a namespace and a veth pair: the host end ``10.X.Y.1/30`` stays in the
host's namespace (where the master runs), the other end ``10.X.Y.2/30`` goes into the
namespace, where the node daemon binds. ``cut()`` sets the host end down (the route goes away:
the master's calls fail at once with "network unreachable", and nothing crosses), ``heal()``
sets it up again. ``close()`` kills what still runs in the namespace (only processes this test
started can be there), deletes the veth pair and the namespace — also after a failed test.

:func:`add_netns_node` is the harness's ``add_node`` for such a node: the real
``corral-noded --join`` started with ``ip netns exec``, then the real ``corral node add``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from corral.common.paths import Paths
from tests.integration.harness import LocalCluster, NodeHandle, _prepare_root, free_port


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


class NetNs:
    """A network namespace joined to the host by a veth pair (see the module docstring)."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{random.randint(0, 999):03d}"
        self.name = f"corral-cv{tag}"
        self.host_if = f"cvh{tag}"[:15]
        self.ns_if = f"cvn{tag}"[:15]
        used = _ip("-o", "-4", "addr", "show").stdout
        while True:
            net = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
            base = random.randrange(0, 256, 4)
            self.host_addr = f"{net}.{base + 1}"
            self.ns_addr = f"{net}.{base + 2}"
            if f"{net}." not in used:
                break
        self.created = False

    def create(self) -> None:
        """Make the namespace and the link, both ends up.

        Raises:
            AssertionError: an ``ip`` command failed (what was made is removed).
        """
        _ip("netns", "add", self.name)
        self.created = True
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
            _ip("-n", self.name, "link", "set", self.ns_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def cut(self) -> None:
        """Partition: the host end of the link goes down."""
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        """Reconnect: the host end comes up again (and its address route with it)."""
        _ip("link", "set", self.host_if, "up")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "UP" in _ip("-o", "link", "show", self.host_if).stdout.split("state")[-1][:8]:
                return
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """Processes running in the namespace."""
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        """Kill what runs inside, delete the link and the namespace (never raises)."""
        if not self.created:
            return
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.name, check=False)
        self.created = False


class NetnsNodeHandle(NodeHandle):
    """A :class:`NodeHandle` whose daemon runs inside a network namespace."""

    netns: str = ""

    def start_noded(self, *, join: bool = False) -> str:
        """Start the node daemon inside the namespace (see :meth:`NodeHandle.start_noded`)."""
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "corral.node.daemon"]
        argv += ["--root", self.paths.root, "--bind", self.host, "--port", str(self.port)]
        argv += ["--log-file", self.log_file]
        if join or not os.path.exists(self.paths.node_cert):
            argv.append("--join")
        proc = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout


def add_netns_node(cluster: LocalCluster, name: str, ns: NetNs) -> NetnsNodeHandle:
    """Add node ``name`` whose daemon runs in ``ns`` at its inner address (real join + add).

    The handle joins ``cluster.nodes``, so ``cluster.close()`` stops its daemon.

    Raises:
        AssertionError: a command failed (with its output).
    """
    root = Path(cluster.paths.root).parent / name
    paths = Paths(str(root))
    _prepare_root(paths)
    handle = NetnsNodeHandle(
        name=name,
        paths=paths,
        host=ns.ns_addr,
        port=free_port("127.0.0.1"),
        env={**cluster.env, "CORRAL_ROOT": str(root)},
    )
    handle.netns = ns.name
    cluster.nodes[name] = handle
    out = handle.start_noded(join=True)
    match = re.search(r"join token: (\S+)", out)
    if match is None:
        raise AssertionError(f"corral-noded --join printed no token: {out!r}")
    cluster.corral(
        "node",
        "add",
        name,
        "--address",
        handle.host,
        "--port",
        str(handle.port),
        "--join-token",
        match.group(1),
        "--master-candidate",
        "no",
    )
    return handle

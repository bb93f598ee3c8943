"""Fixtures shared by the integration tests that boot real guests.

``guest_kernel`` builds (once, cached under ``.cache/``) the busybox OS kernel and initrd;
``guest_reaper`` is a watchdog process that SIGKILLs every registered guest pid if pytest
itself dies, so a crashed test run never leaves QEMU guests behind (TESTING.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.integration.etcd_cluster import EtcdCluster
from tests.integration.xen_appliance import xen_appliance  # noqa: F401  (session fixture)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def guest_kernel() -> Path:
    """Kernel + initrd of the busybox guest, built once and cached under .cache/ (gitignored)."""
    require_tool("qemu-system-x86_64", "socat", "dpkg-deb", "cpio")
    out = Path(os.environ.get("CORRAL_TEST_KERNEL_DIR") or REPO / ".cache" / "busybox" / "out")
    if not ((out / "vmlinuz").is_file() and (out / "initrd.img").is_file()):
        cache = out.parent if out.name == "out" else REPO / ".cache" / "busybox"
        subprocess.run(
            [
                str(REPO / "corral/osdefs/busybox/prepare-kernel"),
                "--cache",
                str(cache.resolve()),
                "--out",
                str(out.resolve()),
            ],
            check=True,
            timeout=600,
            capture_output=True,
        )
    return out


WATCHDOG = r"""
import os, sys, time, signal
parent, listfile = int(sys.argv[1]), sys.argv[2]
while os.getppid() == parent:
    time.sleep(0.5)
# pytest is gone: kill every guest it registered that is still a QEMU
try:
    pids = [int(x) for x in open(listfile).read().split()]
except OSError:
    pids = []
for pid in pids:
    try:
        if b"qemu" in open(f"/proc/{pid}/cmdline", "rb").read():
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
try:
    os.unlink(listfile)
except OSError:
    pass
"""


@pytest.fixture(scope="session")
def guest_reaper() -> Iterator[Path]:
    """A watchdog that SIGKILLs registered guest pids if the pytest process dies."""
    fd, listfile = tempfile.mkstemp(prefix="crl-guests-", dir="/tmp")
    os.close(fd)
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpid()), listfile], start_new_session=True
    )
    yield Path(listfile)
    watchdog.kill()
    watchdog.wait()
    if os.path.exists(listfile):
        os.unlink(listfile)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Expose each phase's report as ``item.rep_<phase>`` so fixtures can keep logs on failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


# --- a three-member etcd cluster on loopback (tests/integration/etcd_cluster.py) -----------


@pytest.fixture
def make_etcd_cluster(tmp_path: Path) -> Iterator[Callable[..., EtcdCluster]]:
    """Factory: ``make_etcd_cluster(size=3, max_request_bytes=None, ...)`` starts a healthy
    etcd cluster (see :class:`EtcdCluster`); every cluster made is killed at teardown, also
    when the test failed (member logs are printed then)."""
    require_tool("etcd")
    made: list[EtcdCluster] = []

    def make(**kwargs: Any) -> EtcdCluster:
        cluster = EtcdCluster(tmp_path / f"etcd{len(made)}", start=False, **kwargs)
        made.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def etcd_cluster(
    request: pytest.FixtureRequest, make_etcd_cluster: Callable[..., EtcdCluster]
) -> Iterator[EtcdCluster]:
    """A fresh healthy three-member etcd cluster on 127.x.y.z (killed at teardown)."""
    cluster = make_etcd_cluster()
    yield cluster
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for member in cluster.members:
            print(f"--- etcd {member.name} log (tail) ---\n{cluster.log_tail(member.name)}")

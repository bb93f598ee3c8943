"""Running QEMU unprivileged (corral.hypervisor.kvm.security): uid pool, options, file owners.

The uid pool is tested for real: claims are files under a temporary registry and the
allocation lock is a real ``flock``, shared by threads and by separate Python processes.
``/proc`` is a fake directory where a test needs a uid to look busy. Booting a guest as an
unprivileged user is in tests/integration/test_kvm_params.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from corral.common.errors import ErrorKind, HypervisorError
from corral.hypervisor.kvm import security
from corral.hypervisor.kvm.hostprep import _replace_user
from corral.hypervisor.kvm.probe import QemuCaps
from corral.hypervisor.kvm.security import (
    RunAs,
    UidPool,
    make_chroot,
    parse_uid_pool,
    pool_run_as,
    process_args,
    process_uids,
    user_run_as,
)
from tests.conftest import require_root
from tests.unit.hypervisor.test_kvm_probe import caps_of

REPO = Path(__file__).resolve().parents[3]

# --- the pool file -------------------------------------------------------------------------------


def test_parse_uid_pool_ranges_comments_and_duplicates():
    text = "# QEMU guests\n20000-20003, 20010\n\n20002 # already in the range\n30000 - 30001\n"
    assert parse_uid_pool(text) == [20000, 20001, 20002, 20003, 20010, 30000, 30001]
    assert parse_uid_pool("") == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0-10", "uid 0 (root)"),
        ("20-10", "runs backwards"),
        ("abc", "not a uid or a uid range"),
        ("1000\n5-x", "line 2"),
        ("4294967295", "out of range"),
    ],
)
def test_parse_uid_pool_refuses_bad_entries(text, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_uid_pool(text)


# --- allocation ----------------------------------------------------------------------------------


@pytest.fixture
def fake_proc(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    return proc


def busy(proc: Path, pid: int, uid: int) -> None:
    """Pretend process ``pid`` runs with ``uid`` (a FAKE /proc entry)."""
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")


def make_pool(tmp_path, fake_proc, text="20000-20003\n", alive=None) -> UidPool:
    pool_file = tmp_path / "kvm-uid-pool"
    pool_file.write_text(text)
    return UidPool(
        str(pool_file),
        str(tmp_path / "run" / ".uids"),
        owner_alive=alive or (lambda name, uid: True),
        proc=str(fake_proc),
    )


def test_allocation_gives_distinct_uids_and_is_idempotent(tmp_path, fake_proc):
    pool = make_pool(tmp_path, fake_proc)
    a, b = pool.allocate("vm-a"), pool.allocate("vm-b")
    assert (a, b) == (20000, 20001)
    assert pool.allocate("vm-a") == a  # asking again keeps the claim
    assert pool.owner(a) == "vm-a" and pool.owner(b) == "vm-b"
    assert oct(os.stat(pool.registry).st_mode & 0o777) == "0o700"


def test_release_frees_only_the_owners_claim(tmp_path, fake_proc):
    pool = make_pool(tmp_path, fake_proc)
    a = pool.allocate("vm-a")
    pool.release("vm-b", a)  # not its uid: ignored
    assert pool.owner(a) == "vm-a"
    pool.release("vm-a", a)
    assert pool.owner(a) is None
    assert pool.allocate("vm-c") == a


def test_exhausted_pool_is_a_temporary_shortage(tmp_path, fake_proc):
    pool = make_pool(tmp_path, fake_proc, "20000-20001")
    pool.allocate("vm-a")
    pool.allocate("vm-b")
    with pytest.raises(HypervisorError) as err:
        pool.allocate("vm-c")
    assert err.value.kind is ErrorKind.TEMP_NO_RESOURCES
    assert err.value.fields["param"] == "security_model" and "all 2" in str(err.value)


def test_claims_of_gone_guests_are_reclaimed(tmp_path, fake_proc):
    alive = {"vm-a": True, "vm-b": True}
    pool = make_pool(tmp_path, fake_proc, "20000-20001", alive=lambda n, u: alive[n])
    assert (pool.allocate("vm-a"), pool.allocate("vm-b")) == (20000, 20001)
    alive["vm-a"] = False  # its guest is gone (crashed, or the node daemon missed the stop)
    assert pool.allocate("vm-c") == 20000
    assert pool.owner(20000) == "vm-c"


def test_uids_used_by_any_process_are_skipped(tmp_path, fake_proc):
    busy(fake_proc, 4242, 20000)  # someone else runs as 20000
    pool = make_pool(tmp_path, fake_proc)
    assert pool.allocate("vm-a") == 20001
    assert process_uids(str(fake_proc)) == {20000}


def test_prefer_keeps_the_recorded_uid_when_free(tmp_path, fake_proc):
    pool = make_pool(tmp_path, fake_proc)
    assert pool.allocate("vm-a", prefer=20003) == 20003
    assert pool.allocate("vm-b", prefer=20003) == 20000  # taken: the first free one instead


@pytest.mark.parametrize(
    ("text", "reason"), [(None, "needs a uid pool in"), ("", "is empty"), ("0", "uid 0")]
)
def test_bad_pool_file_names_security_model(tmp_path, fake_proc, text, reason):
    pool = make_pool(tmp_path, fake_proc)
    if text is None:
        os.unlink(pool.pool_file)
    else:
        Path(pool.pool_file).write_text(text)
    with pytest.raises(HypervisorError) as err:
        pool.allocate("vm-a")
    assert err.value.kind is ErrorKind.INVALID
    assert err.value.fields["param"] == "security_model" and reason in str(err.value)


def test_concurrent_allocation_in_threads_never_hands_out_a_uid_twice(tmp_path, fake_proc):
    pool = make_pool(tmp_path, fake_proc, "20000-20031")
    got: dict[str, int] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(32)

    def take(name: str) -> None:
        barrier.wait()
        try:
            got[name] = pool.allocate(name)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(f"vm{i}",)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(got.values()) == list(range(20000, 20032))
    assert {pool.owner(uid) for uid in got.values()} == set(got)


ALLOCATOR = r"""
import json, sys
from corral.hypervisor.kvm.security import UidPool
pool_file, registry, proc, prefix = sys.argv[1:5]
pool = UidPool(pool_file, registry, owner_alive=lambda n, u: True, proc=proc)
print(json.dumps({f"{prefix}-{i}": pool.allocate(f"{prefix}-{i}") for i in range(4)}))
"""


def test_concurrent_allocation_across_processes(tmp_path, fake_proc):
    pool = make_pool(tmp_path, fake_proc, "20000-20023")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                ALLOCATOR,
                pool.pool_file,
                pool.registry,
                str(fake_proc),
                f"p{n}",
            ],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        for n in range(6)
    ]
    got: dict[str, int] = {}
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        got.update(json.loads(out))
    assert len(got) == 24
    assert sorted(got.values()) == list(range(20000, 20024))  # every uid once


# --- command-line options ------------------------------------------------------------------------


def test_process_args_needs_a_way_to_drop_privileges():
    caps = QemuCaps(binary="/q", version="9.9.0", options=frozenset({"-display"}))
    with pytest.raises(HypervisorError) as err:
        process_args(caps, pool_run_as(20000), "")
    assert err.value.fields["param"] == "security_model"
    with pytest.raises(HypervisorError) as err:
        process_args(caps, None, "/chroot")
    assert err.value.fields["param"] == "use_chroot"
    assert process_args(caps, None, "") == []


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("6.2", ["-chroot", "/c", "-runas", "nobody"]),
        ("8.2", ["-run-with", "chroot=/c", "-runas", "nobody"]),
        ("9.1", ["-run-with", "chroot=/c,user=nobody"]),
    ],
)
def test_process_args_per_version(version, expected):
    run_as = RunAs(uid=65534, gid=65534, qemu_user="nobody")
    assert process_args(caps_of(version), run_as, "/c") == expected


def test_user_run_as():
    nobody = user_run_as("nobody")
    assert nobody.uid == 65534 and nobody.qemu_user == "nobody"
    with pytest.raises(HypervisorError) as err:
        user_run_as("root")
    assert err.value.fields["param"] == "security_domain" and "is root" in str(err.value)
    with pytest.raises(HypervisorError) as err:
        user_run_as("no-such-user-corral")
    assert "does not exist" in str(err.value)
    assert pool_run_as(20001) == RunAs(uid=20001, gid=20001, qemu_user="20001:20001")


def test_replacing_the_user_in_a_replayed_argv():
    argv = ["q", "-run-with", "chroot=/c,user=20000:20000", "-runas", "20000:20000", "-name", "x"]
    assert _replace_user(argv, "20000:20000", "20007:20007") == [
        "q", "-run-with", "chroot=/c,user=20007:20007", "-runas", "20007:20007", "-name", "x",
    ]  # fmt: skip


# --- files ---------------------------------------------------------------------------------------


def test_grant_and_restore_owners(tmp_path):
    require_root()
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    os.chmod(disk, 0o600)
    before = security.grant(str(disk), 54321, 54322)
    assert before == (0, 0)
    st = os.stat(disk)
    assert (st.st_uid, st.st_gid) == (54321, 54322)
    security.restore([[str(disk), *before], [str(tmp_path / "gone"), 0, 0]])  # missing: ignored
    st = os.stat(disk)
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (0, 0, "0o600")


def test_grant_of_a_missing_file_is_an_environment_error(tmp_path):
    with pytest.raises(HypervisorError) as err:
        security.grant(str(tmp_path / "missing"), 1, 1)
    assert err.value.kind is ErrorKind.ENVIRONMENT


def test_chroot_must_be_empty(tmp_path):
    chroot = tmp_path / "chroots" / "vm1"
    make_chroot(str(chroot))
    assert chroot.is_dir() and oct(chroot.stat().st_mode & 0o777) == "0o755"
    make_chroot(str(chroot))  # empty and existing: fine
    (chroot / "leftover").write_text("x")
    with pytest.raises(HypervisorError) as err:
        make_chroot(str(chroot))
    assert err.value.fields["param"] == "chroot_dir" and "leftover" in str(err.value)
    os.unlink(chroot / "leftover")
    security.remove_chroot(str(chroot))
    assert not chroot.exists()
    security.remove_chroot(str(chroot))  # gone: no error

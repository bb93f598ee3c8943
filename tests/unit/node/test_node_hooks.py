"""The hooks runner with real hook scripts in a temporary hooks directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from corral.common.errors import ParamError
from corral.node.backend.hooks import HooksRunner


def hook(directory: Path, name: str, body: str, *, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    return tmp_path / "hooks"


def test_missing_directory_runs_nothing(hooks_dir: Path) -> None:
    assert HooksRunner(str(hooks_dir)).run("instance-start", "pre", {}) == []


def test_name_filter_and_lexicographic_order(hooks_dir: Path, tmp_path: Path) -> None:
    d = hooks_dir / "instance-start-post.d"
    order = tmp_path / "order"
    for name in ["20-b", "10-a", "x.sh", "Z_z", "99~", "30-c"]:
        hook(d, name, f"echo {name} >> {order}")
    hook(d, "40-not-exec", f"echo bad >> {order}", mode=0o644)
    hook(d, ".hidden", f"echo hidden >> {order}")
    (d / "50-dir").mkdir()
    results = HooksRunner(str(hooks_dir)).run("instance-start", "post", {})
    got = [(r.script, r.status) for r in results]
    assert got == [
        ("instance-start-post.d/10-a", "success"),
        ("instance-start-post.d/20-b", "success"),
        ("instance-start-post.d/30-c", "success"),
        ("instance-start-post.d/40-not-exec", "skip"),
        ("instance-start-post.d/50-dir", "skip"),
        ("instance-start-post.d/99~", "skip"),
        ("instance-start-post.d/Z_z", "success"),
        ("instance-start-post.d/x.sh", "skip"),
    ]
    # byte order (digits < uppercase < lowercase) is also the order in which they ran
    assert order.read_text().split() == ["10-a", "20-b", "30-c", "Z_z"]


def test_env_cleared_path_reset_stdin_null(hooks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "env"
    hook(
        hooks_dir / "instance-add-pre.d",
        "00-env",
        f'env | sort > {out}; echo "cwd=$(pwd)" >> {out}; '
        f'if read -r line; then echo "stdin=$line"; else echo "stdin=eof"; fi >> {out}',
    )
    os.environ["CORRAL_TEST_LEAK"] = "1"
    try:
        results = HooksRunner(str(hooks_dir)).run(
            "instance-add",
            "pre",
            {"GANETI_HOOKS_PHASE": "PRE", "GANETI_INSTANCE_NAME": "vm1", "PATH": "/evil"},
        )
    finally:
        del os.environ["CORRAL_TEST_LEAK"]
    assert [r.status for r in results] == ["success"]
    lines = out.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line and line[0].isupper())
    assert env["GANETI_HOOKS_PHASE"] == "PRE"
    assert env["GANETI_INSTANCE_NAME"] == "vm1"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "CORRAL_TEST_LEAK" not in env
    assert "HOME" not in env
    assert "cwd=/" in lines
    assert "stdin=eof" in lines


def test_failing_pre_hook_is_reported_with_output(hooks_dir: Path) -> None:
    d = hooks_dir / "instance-start-pre.d"
    hook(d, "10-deny", 'echo "maintenance window closed" >&2; exit 3')
    hook(d, "20-ok", "echo fine")
    results = HooksRunner(str(hooks_dir)).run("instance-start", "pre", {})
    assert [(r.status, r.output) for r in results] == [
        ("fail", "maintenance window closed"),
        ("success", "fine"),
    ]


def test_timeout_kills_script_and_children(hooks_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    hook(
        hooks_dir / "instance-stop-pre.d",
        "10-slow",
        f"echo started; (sleep 3; touch {marker}) & sleep 30",
    )
    start = time.monotonic()
    results = HooksRunner(str(hooks_dir), timeout=0.5).run("instance-stop", "pre", {})
    assert time.monotonic() - start < 10
    assert results[0].status == "fail"
    assert "started" in results[0].output
    assert "timed out" in results[0].output
    time.sleep(3.5)
    assert not marker.exists(), "a child of the timed-out hook kept running"


def test_unexecutable_interpreter_is_a_failure(hooks_dir: Path) -> None:
    d = hooks_dir / "node-add-post.d"
    d.mkdir(parents=True)
    bad = d / "10-bad"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    results = HooksRunner(str(hooks_dir)).run("node-add", "post", {})
    assert results[0].status == "fail"
    assert "execution error" in results[0].output


@pytest.mark.parametrize(
    ("hpath", "phase", "env"),
    [
        ("../etc", "pre", {}),
        ("instance-start/x", "pre", {}),
        ("instance-start", "during", {}),
        ("instance-start", "pre", {"BAD NAME": "x"}),
        ("instance-start", "pre", {"GANETI_X": "a\0b"}),
    ],
)
def test_bad_requests_refused(hooks_dir: Path, hpath: str, phase: str, env: dict[str, str]) -> None:
    with pytest.raises(ParamError):
        HooksRunner(str(hooks_dir)).run(hpath, phase, env)


def test_ganeti_hooks_dir_runs_after_corral_and_once_when_shared(tmp_path):
    corral_dir, ganeti_dir = tmp_path / "corral", tmp_path / "ganeti"
    for base, name in ((corral_dir, "10-corral"), (ganeti_dir, "05-ganeti")):
        d = base / "instance-start-post.d"
        d.mkdir(parents=True)
        script = d / name
        script.write_text("#!/bin/sh\necho ran\n")
        script.chmod(0o755)
    results = HooksRunner(str(corral_dir), extra_dirs=[str(ganeti_dir)]).run(
        "instance-start", "post", {}
    )
    assert [(r.script, r.status) for r in results] == [
        ("instance-start-post.d/10-corral", "success"),
        (f"{ganeti_dir}/instance-start-post.d/05-ganeti", "success"),
    ]
    # a Ganeti dir that is a symlink to Corral's runs once
    (tmp_path / "link").symlink_to(corral_dir)
    results = HooksRunner(str(corral_dir), extra_dirs=[str(tmp_path / "link")]).run(
        "instance-start", "post", {}
    )
    assert [r.script for r in results] == ["instance-start-post.d/10-corral"]

"""Shared test helpers.

Integration tests need real tools (QEMU, socat, ...). On a developer machine a missing tool
skips the test; in CI (``CI=true``) a missing tool is a failure, never a skip (TESTING.md).
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(msg: str) -> None:
    """Stop the calling test for a missing prerequisite: skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(msg + " (CI must provide it; see scripts/system-packages.txt)")
    pytest.skip(msg)


def require_tool(*names: str) -> None:
    """Skip (or, in CI, fail) the calling test unless every program in ``names`` is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        unavailable(f"missing tools: {', '.join(missing)}")


def require_root() -> None:
    """Skip (or, in CI, fail) unless running as root."""
    if os.geteuid() != 0:
        unavailable("needs root")

"""``cluster verify`` / ``cluster watcher`` CLI helpers (the commands run end to end in
tests/integration/test_verify_cluster.py)."""

from __future__ import annotations

import pytest

from corral.cli.parsing import UsageError
from corral.cli.verify import parse_timespec


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1.5h", 5400),
    ],
)
def test_timespec(text, seconds):
    assert parse_timespec(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "1y", "h", "1 hour"])
def test_bad_timespec_is_a_usage_error(text):
    with pytest.raises(UsageError, match="invalid duration"):
        parse_timespec(text)

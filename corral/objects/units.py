"""Sizes and names: parsing user input into checked values.

Sizes are kept in MiB everywhere (as Ganeti does). User input may carry a unit: ``512M``,
``1G``, ``1.5g``, ``2T``; a bare number means MiB.
"""

from __future__ import annotations

import re
from typing import Any

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:[iI]?[bB])?\s*$")
_FACTORS = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024}

#: Upper bound for any size (1 PiB in MiB) to catch typos such as ``1000000T``.
MAX_SIZE_MIB = 1024 * 1024 * 1024

#: Instance, node and OS names: DNS-like labels separated by dots. No shell metacharacters,
#: no path separators, no leading dash (it would read as an option).
NAME_RE = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}))*$"
)


def parse_size_mib(raw: Any, *, require_unit: bool = False) -> int:
    """Return the size in MiB described by ``raw``.

    Args:
        raw: an int (MiB) or a string such as ``"1G"``, ``"512M"``, ``"1024"``.
        require_unit: refuse bare numbers (used where a missing unit is most likely a mistake).

    Raises:
        ValueError: the text is not a size, has no unit while one is required, is zero or
            negative, is not a whole number of MiB, or is absurdly large.
    """
    if isinstance(raw, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(raw, int):
        if require_unit:
            raise ValueError(f"size {raw} needs a unit (M, G or T)")
        mib = float(raw)
    elif isinstance(raw, str):
        m = _SIZE_RE.match(raw)
        if not m:
            raise ValueError(f"not a size: {raw!r} (use e.g. 512M, 1G)")
        if require_unit and not m.group(2):
            raise ValueError(f"size {raw!r} needs a unit (M, G or T)")
        mib = float(m.group(1)) * _FACTORS[m.group(2).lower()]
    else:
        raise ValueError(f"expected a size, got {type(raw).__name__}")
    if mib != int(mib):
        raise ValueError(f"size {raw!r} is not a whole number of MiB")
    if mib <= 0:
        raise ValueError(f"size must be positive, got {raw!r}")
    if mib > MAX_SIZE_MIB:
        raise ValueError(f"size {raw!r} is too large")
    return int(mib)


def check_name(name: str, what: str = "name") -> str | None:
    """Return why ``name`` is not a valid object name, or None if it is."""
    if not isinstance(name, str) or not name:
        return f"{what} must be a non-empty string"
    if len(name) > 255:
        return f"{what} is longer than 255 characters"
    if not NAME_RE.match(name):
        return (
            f"{what} {name!r} is not valid: use letters, digits, '-', '_' and dots "
            "(no spaces, shell metacharacters or path separators)"
        )
    return None


def format_size(mib: int | float) -> str:
    """Human-readable size from MiB (``1536`` -> ``1.5G``)."""
    if mib >= 1024 * 1024:
        return f"{mib / (1024 * 1024):.1f}T".replace(".0T", "T")
    if mib >= 1024:
        return f"{mib / 1024:.1f}G".replace(".0G", "G")
    return f"{int(mib)}M"

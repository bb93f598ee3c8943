"""Small file helpers: atomic writes and safe reads."""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_atomic(path: str, data: str | bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new content.

    The data goes to a temporary file in the same directory, is flushed to disk and renamed
    over ``path``.

    Raises:
        OSError: the directory does not exist or is not writable (callers translate it).
    """
    directory = os.path.dirname(path) or "."
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_text(path: str, default: str | None = None) -> str | None:
    """Return the file's text, or ``default`` if it does not exist.

    Raises:
        OSError: for errors other than a missing file.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return default


def remove_file(path: str) -> bool:
    """Remove ``path`` if it exists; return whether something was removed.

    Raises:
        OSError: for errors other than a missing file.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True

"""Undo lists for operations made of several steps (Incus ``revert``).

Usage::

    with Reverter() as rv:
        create_disk(...)
        rv.add(lambda: remove_disk(...))
        start_guest(...)
        rv.success()            # nothing is undone

If the block raises before ``success()``, the undo steps run in reverse order. A failing undo
step is logged and the remaining steps still run; the original exception propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)


class Reverter:
    """Collects undo callables and runs them unless :meth:`success` was called."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], object]]] = []
        self._done = False

    def add(self, undo: Callable[[], object], what: str = "") -> None:
        """Register an undo step (run last-in, first-out on failure)."""
        self._undo.append((what or getattr(undo, "__name__", "undo"), undo))

    def success(self) -> None:
        """Keep everything: the undo steps will not run."""
        self._done = True

    def fail(self) -> None:
        """Run the undo steps now (last first); errors in them are logged, not raised."""
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception:
                log.warning("revert step %s failed", what, exc_info=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.fail()

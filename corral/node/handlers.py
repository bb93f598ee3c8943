"""The node daemon's call table: decode -> backend -> encode, nothing else.

Every call in :data:`corral.rpc.calls.CALLS` maps to the :class:`~corral.node.backend.NodeBackend`
method of the same name, which takes the call's request model and returns its response model.
:class:`CallHandlers` checks at construction that the backend has every method, so a daemon
with a missing handler refuses to start instead of failing the first time the call arrives.

:meth:`CallHandlers.handle` is synchronous and blocking (the backend runs QEMU, qemu-img, OS
scripts...): the RPC server runs it in a worker thread. It never raises for a call that was
found; every outcome becomes a :class:`Reply` (status + body):

=======  ===========================================================================
status   when
=======  ===========================================================================
200      the backend answered: ``{"ok": true, "result": ...}``
400      the request body does not decode (ParamError naming the fields)
500      the backend raised a CorralError (sent as is), or any other exception (sent
         as a CorralError of kind FAULT; the traceback stays in the node's log)
=======  ===========================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from corral.common.errors import CorralError, ErrorKind, ParamError
from corral.rpc import codec
from corral.rpc.calls import CALLS, Call
from corral.rpc.server import Reply

log = logging.getLogger(__name__)


class CallHandlers:
    """Maps call names to backend methods.

    Args:
        backend: the object doing the work, normally a ``NodeBackend``; it needs one method per
            call, named like the call.
        calls: the call table (default: all of :data:`CALLS`).

    Raises:
        CorralError: (kind FAULT) the backend lacks a method for some calls; all are named.
    """

    def __init__(self, backend: object, calls: Mapping[str, Call[Any, Any]] = CALLS) -> None:
        self._calls = dict(calls)
        methods: dict[str, Callable[[Any], Any]] = {}
        missing = []
        for name in self._calls:
            method = getattr(backend, name, None)
            if callable(method):
                methods[name] = method
            else:
                missing.append(name)
        if missing:
            raise CorralError(
                f"node backend {type(backend).__name__} has no method for calls: "
                + ", ".join(sorted(missing)),
                kind=ErrorKind.FAULT,
                missing=sorted(missing),
            )
        self._methods = methods

    def get(self, name: str) -> Call[Any, Any] | None:
        """The call named ``name``, or None if there is no such call."""
        return self._calls.get(name)

    def handle(self, name: str, body: bytes) -> Reply:
        """Decode the request, run the backend method, encode its answer (blocking).

        Raises:
            KeyError: ``name`` is not a known call (the server checks with :meth:`get` first).
        """
        call = self._calls[name]
        try:
            request = codec.decode_request(call, body)
        except ParamError as exc:
            return Reply(400, codec.encode_error(exc), exc)
        try:
            result = self._methods[name](request)
            return Reply(200, codec.encode_result(call, result))
        except CorralError as exc:
            return Reply(500, codec.encode_error(exc), exc)
        except Exception as exc:  # the boundary: a bug becomes a FAULT answer, never a crash
            err = CorralError(
                f"internal error in call {name}: {type(exc).__name__}: {exc}",
                kind=ErrorKind.FAULT,
                call=name,
            )
            err.__cause__ = exc
            return Reply(500, codec.encode_error(err), err, unexpected=True)

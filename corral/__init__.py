"""Corral: a cluster virtualization manager compatible with Ganeti's interfaces."""

__version__ = "0.1.0"

#: The protocol version spoken between master and node daemons; both must match.
PROTOCOL_VERSION = 1

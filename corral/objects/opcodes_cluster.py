"""Cluster-wide opcodes (verify, watcher, master failover, store moves)."""

from __future__ import annotations

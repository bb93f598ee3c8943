"""Opcodes that move instances between nodes (migrate, failover, move, node evacuate)."""

from __future__ import annotations

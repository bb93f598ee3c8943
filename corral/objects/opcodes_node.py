"""Opcodes of nodes and node groups (``node add/remove/readd/modify``, ``group ...``)."""

from __future__ import annotations

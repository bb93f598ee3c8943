"""Corral master jobs package."""

"""Corral storage package."""

"""Corral master ops package."""

"""Corral cli package."""

"""Corral store package."""

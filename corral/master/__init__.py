"""Corral master package."""

"""Corral api package."""

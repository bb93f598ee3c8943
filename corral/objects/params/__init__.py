"""Corral objects params package."""

"""Corral objects package."""

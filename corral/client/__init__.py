"""Corral client package."""

"""Corral rpc package."""

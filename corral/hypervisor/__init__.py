"""Corral hypervisor package."""

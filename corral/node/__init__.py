"""Corral node package."""

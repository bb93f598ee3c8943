"""Corral node backend package."""

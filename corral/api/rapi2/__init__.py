"""Corral api rapi2 package."""

"""Helpers shared by every layer: errors, command running, undo lists, files, paths."""

"""Helpers more than one benchmark uses."""

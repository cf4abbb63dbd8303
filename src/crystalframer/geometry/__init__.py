"""Periodic images and shift boxes."""

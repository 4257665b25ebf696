"""Data sets for the experiments: points on the circle (more in later issues)."""

from .synthetic import circle

__all__ = ["circle"]

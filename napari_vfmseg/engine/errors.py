"""Errors the engine raises for bad input, importable without torch."""

from __future__ import annotations

__all__ = ["NonFiniteImageError"]


class NonFiniteImageError(ValueError):
    """An image or volume plane has no finite pixel (all NaN or infinite): nothing to segment."""

"""Errors raised by the imaging I/O layer. Messages always name the file and the problem."""

from __future__ import annotations

__all__ = ["VolumeReadError", "LabelWriteError"]


class VolumeReadError(ValueError):
    """An image file or DICOM folder cannot be read as a volume (corrupt, truncated, unsupported...)."""


class LabelWriteError(ValueError):
    """A label volume cannot be written (bad shape, negative labels, unsupported format, unwritable path)."""

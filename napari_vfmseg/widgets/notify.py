"""One napari notification, by level: the way widgets tell the user something."""

from __future__ import annotations

__all__ = ["notify"]


def notify(level: str, message: str) -> None:
    """Show ``message`` as a napari notification; ``level`` "error", "warning" or anything else (info)."""
    from napari.utils import notifications

    show = {"error": notifications.show_error, "warning": notifications.show_warning}.get(level, notifications.show_info)
    show(message)

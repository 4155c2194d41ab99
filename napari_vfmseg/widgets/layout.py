"""Small Qt layout helpers shared by the widget's panels."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QHBoxLayout, QPushButton, QWidget

__all__ = ["row", "button", "refill"]


def refill(combo: QComboBox, items: list[tuple[str, object]], current) -> None:
    """Replace ``combo``'s items without emitting change signals; select the item whose data is ``current``."""
    combo.blockSignals(True)
    combo.clear()
    for text, data in items:
        combo.addItem(text, data)
    combo.setCurrentIndex(max(combo.findData(current), 0) if current is not None else 0)
    combo.blockSignals(False)


def row(*widgets: QWidget) -> QHBoxLayout:
    """The widgets side by side."""
    layout = QHBoxLayout()
    for item in widgets:
        layout.addWidget(item)
    return layout


def button(text: str, action) -> QPushButton:
    """A push button that calls ``action`` when clicked."""
    push = QPushButton(text)
    push.clicked.connect(action)
    return push

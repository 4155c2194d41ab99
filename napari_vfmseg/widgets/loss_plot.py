"""A small live plot of a fine-tuning round: training loss and validation Dice per step."""

from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

__all__ = ["LossPlot"]


class LossPlot(QWidget):
    """Training loss (grey, scaled to its own range) and validation Dice (orange dots, 0–1) per step."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.total = 1
        self.losses: list[tuple[int, float]] = []
        self.dices: list[tuple[int, float]] = []
        self.setMinimumHeight(90)
        self.setToolTip("grey: training loss (own scale) · orange: validation Dice on held-out planes (0–1)")

    def reset(self, total: int) -> None:
        self.total = max(1, int(total))
        self.losses, self.dices = [], []
        self.update()

    def add(self, step: int, loss: Optional[float], val_dice: Optional[float]) -> None:
        if loss is not None and np.isfinite(loss):
            self.losses.append((int(step), float(loss)))
        if val_dice is not None:
            self.dices.append((int(step), float(val_dice)))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        rect = self.rect().adjusted(4, 14, -4, -4)
        painter.setPen(QPen(QColor(128, 128, 128), 1))
        painter.drawRect(rect)
        painter.drawText(6, 11, "loss")
        painter.setPen(QColor(230, 140, 40))
        painter.drawText(40, 11, "val Dice")

        def x_of(step: int) -> float:
            return rect.left() + rect.width() * step / self.total

        if len(self.losses) > 1:
            values = np.array([v for _, v in self.losses])
            low, high = float(values.min()), float(values.max())
            span = (high - low) or 1.0
            line = QPolygonF([QPointF(x_of(s), rect.bottom() - rect.height() * (v - low) / span) for s, v in self.losses])
            painter.setPen(QPen(QColor(160, 160, 160), 1.2))
            painter.drawPolyline(line)
        if self.dices:
            painter.setPen(QPen(QColor(230, 140, 40), 1.5))
            points = [QPointF(x_of(s), rect.bottom() - rect.height() * min(max(v, 0.0), 1.0)) for s, v in self.dices]
            if len(points) > 1:
                painter.drawPolyline(QPolygonF(points))
            painter.setBrush(QColor(230, 140, 40))
            for point in points:
                painter.drawEllipse(point, 2.5, 2.5)
        painter.end()

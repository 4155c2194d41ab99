"""The prompts of one plane — positive/negative points and at most one box — and their checks.

Coordinates are the plane's pixels in napari order: a point is (row, col), a box
(row0, col0, row1, col1), pixel centres at integer coordinates, so a plane of R rows spans
-0.5 .. R - 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["PlanePrompts", "point_inside", "clip_box"]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PlanePrompts:
    """Points (N × (row, col)), their labels (1 = object, 0 = background) and an optional box."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: Optional[Box] = None

    def __post_init__(self) -> None:
        if len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} points but {len(self.labels)} point labels")
        if any(label not in (0, 1) for label in self.labels):
            raise ValueError(f"point labels must be 1 (object) or 0 (background); got {list(self.labels)}")

    @classmethod
    def build(cls, points: Sequence[Sequence[float]] = (), labels: Sequence[int] = (), box: Optional[Sequence[float]] = None) -> "PlanePrompts":
        """From array-likes: ``points`` (N, 2), ``labels`` (N,), ``box`` (4,) or None."""
        pts = tuple((float(r), float(c)) for r, c in np.asarray(points, dtype=float).reshape(-1, 2))
        lbl = tuple(int(v) for v in np.asarray(labels).reshape(-1))
        bx = None if box is None else tuple(float(v) for v in np.asarray(box, dtype=float).reshape(4))
        return cls(pts, lbl, bx)  # type: ignore[arg-type]

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None

    @property
    def has_object_prompt(self) -> bool:
        """True when something says where the object is (a positive point or a box)."""
        return self.box is not None or any(label == 1 for label in self.labels)

    def extends(self, previous: "PlanePrompts") -> bool:
        """True when these prompts are ``previous`` plus one or more new points (same box).

        That is a correction click: the previous mask's logits may be fed back to the model.
        """
        n = len(previous.points)
        return (
            not previous.empty
            and self.box == previous.box
            and len(self.points) > n
            and self.points[:n] == previous.points
            and self.labels[:n] == previous.labels
        )

    def arrays(self) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
        """(points (N, 2) float64 or None, labels (N,) int64 or None, box (4,) float64 or None)."""
        points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2) if self.points else None
        labels = np.asarray(self.labels, dtype=np.int64) if self.points else None
        box = np.asarray(self.box, dtype=np.float64) if self.box is not None else None
        return points, labels, box


def point_inside(point: Sequence[float], shape: tuple[int, int]) -> bool:
    """True when (row, col) lies on a plane of ``shape`` = (rows, cols) (pixel edges included)."""
    row, col = float(point[0]), float(point[1])
    rows, cols = shape
    return bool(np.isfinite(row) and np.isfinite(col) and -0.5 <= row <= rows - 0.5 and -0.5 <= col <= cols - 0.5)


def clip_box(corners: Sequence[float], shape: tuple[int, int]) -> Optional[Box]:
    """Normalise a box (row0, col0, row1, col1) (corners in any order) and clip it to the plane.

    Returns None when the box does not overlap the plane or is thinner than a pixel after clipping.
    """
    r0, c0, r1, c1 = (float(v) for v in corners)
    if not all(np.isfinite((r0, c0, r1, c1))):
        return None
    rows, cols = shape
    top, bottom = sorted((r0, r1))
    left, right = sorted((c0, c1))
    top, left = max(top, -0.5), max(left, -0.5)
    bottom, right = min(bottom, rows - 0.5), min(right, cols - 0.5)
    if bottom - top < 1.0 or right - left < 1.0:
        return None
    return (top, left, bottom, right)

"""A stand-in segmenter that knows the truth, to check 3D propagation and its scoring without a model.

:class:`OracleSegmenter` answers the engine ``Segmenter``'s ``set_volume`` / ``predict(..., plane=k)``
with the true mask inside the prompt box; with it the protocol of
:mod:`napari_vfmseg.training.metrics3d` must give a 3D Dice of about 1. Arrays are (plane, row, col)
volumes and (row, col) planes; boxes (row0, col0, row1, col1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from napari_vfmseg.training.data import as_label_map

__all__ = ["OraclePrediction", "OracleSegmenter"]


@dataclass
class OraclePrediction:
    """What :meth:`OracleSegmenter.predict` returns (the fields of an engine ``Prediction`` that
    propagation reads). ``logits``: (64, 64) coarse ±8 rendering of ``mask`` (unused by the oracle)."""

    mask: np.ndarray
    score: float
    logits: np.ndarray
    plane: Optional[int] = None


class OracleSegmenter:
    """A stand-in segmenter that knows the truth: the object's true mask on the asked plane,
    restricted to the prompt box grown by ``margin`` pixels on every side (anywhere in the plane
    when no box is given). Its score is 1 for a non-empty mask and 0 otherwise.

    ``labels``: (plane, row, col) label volume. The object is ``target`` when set — a label id, or a
    boolean (plane, row, col) mask of the object (the 3D evaluation sets it per object); otherwise
    the label under the first positive point, else the most frequent non-zero label inside the box.
    Use it like an engine ``Segmenter``: ``set_volume(volume, axis)`` then ``predict(..., plane=k)``.
    """

    def __init__(self, labels: np.ndarray, axis: int = 0, margin: int = 2) -> None:
        self.labels = as_label_map(np.asarray(labels), "oracle labels")
        if self.labels.ndim != 3:
            raise ValueError(f"OracleSegmenter needs a 3D label volume; got shape {self.labels.shape}")
        self.volume_axis = int(axis) % 3
        self.margin = int(margin)
        self.target: Optional[int | np.ndarray] = None
        self.predictions = 0
        self.encoder_calls = 0

    @property
    def plane_count(self) -> int:
        return int(self.labels.shape[self.volume_axis])

    def set_volume(self, volume: np.ndarray, axis: int = 0, window=None, modality=None, spacing=None) -> None:
        """Take the plane axis (the image itself is not needed); the shapes must match."""
        if tuple(np.shape(volume)) != self.labels.shape:
            raise ValueError(f"volume shape {np.shape(volume)} differs from the oracle's labels {self.labels.shape}")
        self.volume_axis = int(axis) % 3

    def _label(self, plane: np.ndarray, points, point_labels, box) -> int:
        if points is not None:
            labels = np.ones(len(points), int) if point_labels is None else np.asarray(point_labels)
            for (row, col), positive in zip(np.asarray(points, dtype=float), labels):
                if positive == 1:
                    value = int(plane[int(round(row)), int(round(col))])
                    if value:
                        return value
        region = plane if box is None else plane[self._window(plane.shape, box, 0)]
        counts = np.bincount(region.ravel())
        counts[0] = 0
        return int(np.argmax(counts)) if counts.any() else 0

    @staticmethod
    def _window(shape, box, margin: int) -> tuple[slice, slice]:
        r0, c0, r1, c1 = (float(v) for v in box)
        r0, r1 = sorted((r0, r1))
        c0, c1 = sorted((c0, c1))
        return (slice(max(0, int(np.floor(r0)) - margin), max(0, int(np.ceil(r1)) + margin + 1)),
                slice(max(0, int(np.floor(c0)) - margin), max(0, int(np.ceil(c1)) + margin + 1)))

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask=None,
                plane: Optional[int] = None) -> OraclePrediction:
        if plane is None or not 0 <= int(plane) < self.plane_count:
            raise ValueError(f"plane {plane} is outside the volume: axis {self.volume_axis} has {self.plane_count} planes")
        plane_labels = np.take(self.labels, int(plane), axis=self.volume_axis)
        if isinstance(self.target, np.ndarray):
            truth = np.take(self.target, int(plane), axis=self.volume_axis).astype(bool)
        else:
            label = int(self.target) if self.target is not None else self._label(plane_labels, points, point_labels, box)
            truth = (plane_labels == label) if label else np.zeros(plane_labels.shape, dtype=bool)
        if box is not None:
            inside = np.zeros_like(truth)
            inside[self._window(truth.shape, box, self.margin)] = True
            truth &= inside
        self.predictions += 1
        rows = np.linspace(0, truth.shape[0] - 1, 64).round().astype(int)
        cols = np.linspace(0, truth.shape[1] - 1, 64).round().astype(int)
        logits = np.where(truth[np.ix_(rows, cols)], 8.0, -8.0).astype(np.float32)
        return OraclePrediction(truth, 1.0 if truth.any() else 0.0, logits, int(plane))

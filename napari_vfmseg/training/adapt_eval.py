"""Box and 1-click Dice on the planes of a labelled volume, along every axis: how far a round carried.

A round is judged on the planes the user did *not* correct: every plane along every axis (minus
the corrected ones along their own axis), each object prompted by its tight box and, separately,
by one click at its most interior point, through the engine's own ``Segmenter`` (the scan's
spacing passed, so planes keep their true proportions, as in the viewer). The filled-box baseline
is reported beside the box Dice.

Volumes are (plane, row, col); ``spacing`` is in the same order (mm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from napari_vfmseg.training.data import as_label_map, object_ids
from napari_vfmseg.training.metrics import box_fill_mask, dice
from napari_vfmseg.training.prompts import bounding_box, interior_point

__all__ = ["AxisScores", "plane_scores", "volume_scores"]


@dataclass
class AxisScores:
    """Mean Dice over the scored objects of one axis: ``box``, ``click`` (best of the engine's answer
    to one interior click), ``box_fill`` (the filled tight box); ``planes`` the planes scored."""

    axis: int
    box: Optional[float]
    click: Optional[float]
    box_fill: Optional[float]
    n_objects: int
    planes: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
        return {"axis": self.axis, "box": r(self.box), "click": r(self.click), "box_fill": r(self.box_fill),
                "n_objects": self.n_objects, "n_planes": len(self.planes)}


def _spread(indices: Sequence[int], limit: Optional[int]) -> list[int]:
    indices = list(indices)
    if limit is None or len(indices) <= limit:
        return indices
    keep = np.unique(np.linspace(0, len(indices) - 1, max(1, int(limit))).round().astype(int))
    return [indices[i] for i in keep]


def plane_scores(segmenter, labels: np.ndarray, axis: int, planes: Optional[Sequence[int]] = None,
                 exclude: Sequence[int] = (), max_planes: Optional[int] = None, min_pixels: int = 20,
                 clicks: bool = True) -> AxisScores:
    """Scores of ``segmenter`` (after ``set_volume(..., axis=axis, spacing=...)``) on planes along ``axis``.

    ``labels`` (plane, row, col) in the volume's own order. ``planes``: the planes to consider (default
    all that hold an object), minus ``exclude``, at most ``max_planes`` of them spread evenly.
    """
    labels = as_label_map(labels, "labels")
    moved = np.moveaxis(labels, axis, 0)
    candidates = planes if planes is not None else [p for p in range(moved.shape[0])
                                                    if object_ids(moved[p], min_pixels)]
    excluded = set(int(p) for p in exclude)
    chosen = _spread([int(p) for p in candidates if int(p) not in excluded], max_planes)
    box_d, click_d, fill_d = [], [], []
    for plane in chosen:
        for label in object_ids(moved[plane], min_pixels):
            truth = moved[plane] == label
            box = bounding_box(truth)
            box_d.append(dice(segmenter.predict(box=box, plane=plane).mask, truth))
            fill_d.append(dice(box_fill_mask(truth.shape, box), truth))
            if clicks:
                answer = segmenter.predict(points=[interior_point(truth)], point_labels=[1], plane=plane)
                click_d.append(dice(answer.mask, truth))
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return AxisScores(axis, mean(box_d), mean(click_d), mean(fill_d), len(box_d), chosen)


def volume_scores(model, volume: np.ndarray, labels: np.ndarray, spacing: Optional[Sequence[float]] = None,
                  window=None, modality: Optional[str] = None, exclude: Optional[dict[int, Sequence[int]]] = None,
                  axes: Sequence[int] = (0, 1, 2), max_planes: Optional[int] = None, min_pixels: int = 20,
                  clicks: bool = True, zoom="auto") -> dict[int, AxisScores]:
    """:func:`plane_scores` along each of ``axes`` for a ``LoadedModel`` (its active adapter included).

    ``exclude`` maps an axis to the planes not to score along it (the corrected planes); ``zoom``:
    the engine's zoom for small boxes ("auto", None or a ``ZoomPolicy``, see ``Segmenter``).
    """
    from napari_vfmseg.engine import Segmenter

    exclude = exclude or {}
    out: dict[int, AxisScores] = {}
    segmenter = Segmenter(model, zoom=zoom)
    try:
        for axis in axes:
            segmenter.set_volume(np.asarray(volume), axis=axis, window=window, modality=modality, spacing=spacing)
            out[int(axis)] = plane_scores(segmenter, labels, axis, exclude=exclude.get(int(axis), ()),
                                          max_planes=max_planes, min_pixels=min_pixels, clicks=clicks)
    finally:
        segmenter.close()
    return out

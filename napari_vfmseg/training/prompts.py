"""Prompt simulation, as SAM was trained and as interactive segmentation is evaluated.

All coordinates are in napari order on a 2D plane: a point is (row, col), a box is
(row0, col0, row1, col1) with inclusive pixel indices (row1 is the last row of the object).
Masks are boolean arrays (row, col). Random choices take a ``numpy.random.Generator``.

- :func:`jitter_box`: a tight box with each side moved by Gaussian noise of 10 % of the box side,
  at most 20 px (SAM's box augmentation).
- :func:`interior_point` / :func:`sample_points`: positive points inside the object, drawn with a
  weight that grows with the distance to its border; negative points from the background near it.
- :func:`correction_click`: the next click of the iterative protocol: the centre (maximum of the
  distance transform) of the largest connected error region; positive on a false negative,
  negative on a false positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from napari_vfmseg.engine.zoom import bounding_box_of

__all__ = [
    "Box",
    "Click",
    "PromptSet",
    "bounding_box",
    "jitter_box",
    "interior_point",
    "sample_points",
    "correction_click",
    "simulate_prompts",
]

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Click:
    """One simulated click: (row, col) and ``positive`` (True = object, False = background)."""

    row: int
    col: int
    positive: bool

    @property
    def label(self) -> int:
        return 1 if self.positive else 0


@dataclass
class PromptSet:
    """Prompts for P objects of one image.

    ``points`` (P, N, 2) float (row, col) with ``labels`` (P, N) int (1 positive, 0 negative,
    -1 padding), or both None; ``boxes`` (P, 4) float (row0, col0, row1, col1) or None.
    """

    points: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    boxes: Optional[np.ndarray]

    def add_clicks(self, clicks: list[Optional[Click]]) -> "PromptSet":
        """A new set with one more point per object; None (no error left) adds a padding point."""
        n = len(clicks)
        new_pts = np.zeros((n, 1, 2), dtype=np.float32)
        new_lab = np.full((n, 1), -1, dtype=np.int64)
        for i, click in enumerate(clicks):
            if click is not None:
                new_pts[i, 0] = (click.row, click.col)
                new_lab[i, 0] = click.label
        if self.points is None:
            return PromptSet(new_pts, new_lab, self.boxes)
        return PromptSet(
            np.concatenate([self.points, new_pts], axis=1),
            np.concatenate([self.labels, new_lab], axis=1),
            self.boxes,
        )


def bounding_box(mask: np.ndarray) -> Box:
    """Tight (row0, col0, row1, col1) of the True pixels of a 2D mask (inclusive indices); the
    engine's :func:`~napari_vfmseg.engine.zoom.bounding_box_of`, so prompts and crops agree."""
    return bounding_box_of(mask)


def jitter_box(box: Box, shape: tuple[int, int], rng: np.random.Generator, noise: float = 0.1,
               max_shift: float = 20.0) -> Box:
    """Move each side of ``box`` by N(0, noise * side length), clipped to ``max_shift`` px.

    The result stays inside an image of ``shape`` (rows, cols) and keeps row0 <= row1, col0 <= col1.
    """
    r0, c0, r1, c1 = (float(v) for v in box)
    h, w = r1 - r0 + 1, c1 - c0 + 1
    sd = np.array([h, w, h, w], dtype=np.float64) * noise
    shift = np.clip(rng.normal(0.0, 1.0, 4) * sd, -max_shift, max_shift)
    nr0, nc0, nr1, nc1 = np.rint(np.array([r0, c0, r1, c1]) + shift).astype(int)
    nr0, nr1 = np.clip([nr0, nr1], 0, shape[0] - 1)
    nc0, nc1 = np.clip([nc0, nc1], 0, shape[1] - 1)
    if nr1 < nr0:
        nr0, nr1 = nr1, nr0
    if nc1 < nc0:
        nc0, nc1 = nc1, nc0
    return int(nr0), int(nc0), int(nr1), int(nc1)


def _inner_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each True pixel to the nearest False pixel or to the image border."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """The most interior pixel (row, col): the maximum of the distance transform (first on ties)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("interior_point: the mask is empty")
    dist = _inner_distance(mask)
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(row), int(col)


def sample_points(mask: np.ndarray, n: int, rng: np.random.Generator, positive: bool = True,
                  margin: int = 16) -> np.ndarray:
    """``n`` points (n, 2) int (row, col).

    Positive points lie inside ``mask``, drawn with probability proportional to the distance to
    the border (the interior is favoured, thin rims rarely hit). Negative points lie outside it,
    within ``margin`` px of its bounding box when possible, else anywhere in the background.
    Returns fewer rows when the region holds fewer pixels than ``n``.
    """
    mask = np.asarray(mask, dtype=bool)
    if positive:
        weight = _inner_distance(mask).ravel()
    else:
        region = ~mask
        if mask.any():
            r0, c0, r1, c1 = bounding_box(mask)
            near = np.zeros_like(mask)
            near[max(r0 - margin, 0): r1 + margin + 1, max(c0 - margin, 0): c1 + margin + 1] = True
            if (region & near).any():
                region = region & near
        weight = region.ravel().astype(np.float64)
    candidates = np.flatnonzero(weight > 0)
    if candidates.size == 0 or n <= 0:
        return np.zeros((0, 2), dtype=int)
    prob = weight[candidates] / weight[candidates].sum()
    chosen = rng.choice(candidates, size=min(n, candidates.size), replace=False, p=prob)
    rows, cols = np.unravel_index(chosen, mask.shape)
    return np.stack([rows, cols], axis=1).astype(int)


def correction_click(prediction: np.ndarray, target: np.ndarray) -> Optional[Click]:
    """The next corrective click for ``prediction`` against ``target`` (both bool (row, col)).

    Finds the connected false-negative and false-positive regions, takes the largest (by area; on
    a tie the false negative), and clicks at the maximum of its distance transform, so the click
    sits as deep inside the error as possible. Positive if the region is a false negative.
    Returns None when prediction equals target.
    """
    prediction = np.asarray(prediction, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if prediction.shape != target.shape:
        raise ValueError(f"correction_click: prediction {prediction.shape} and target {target.shape} differ in shape")
    best: Optional[tuple] = None  # (area, positive, component crop, row0, col0)
    for positive, error in ((True, target & ~prediction), (False, prediction & ~target)):
        if not error.any():
            continue
        labelled, count = ndimage.label(error)
        sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
        index = int(np.argmax(sizes)) + 1
        if best is None or sizes[index - 1] > best[0]:
            rs, cs = ndimage.find_objects(labelled, max_label=index)[index - 1]
            best = (int(sizes[index - 1]), positive, labelled[rs, cs] == index, rs.start, cs.start)
    if best is None:
        return None
    _, positive, component, row0, col0 = best
    # The component's own crop, padded by one: the crop border is never inside the region, but the
    # image border counts as a border of the region (as in the usual protocol).
    dist = _inner_distance(component)
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Click(int(row) + row0, int(col) + col0, positive)


def simulate_prompts(masks: np.ndarray, rng: np.random.Generator, kind: str = "box",
                     n_positive: int = 1, n_negative: int = 0, box_noise: float = 0.1,
                     max_box_shift: float = 20.0) -> PromptSet:
    """First prompts for P objects of one image, ``masks`` (P, row, col) bool, none of them empty.

    ``kind`` "box": one jittered box per object. ``kind`` "point": ``n_positive`` interior points and
    ``n_negative`` background points per object (padded with label -1 where an object yields fewer).
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"simulate_prompts expects masks (P, row, col), got shape {masks.shape}")
    shape = masks.shape[1:]
    if kind == "box":
        boxes = np.array([jitter_box(bounding_box(m), shape, rng, box_noise, max_box_shift) for m in masks],
                         dtype=np.float32)
        return PromptSet(None, None, boxes)
    if kind != "point":
        raise ValueError(f"unknown prompt kind {kind!r}: use 'box' or 'point'")
    n = max(n_positive, 1) + max(n_negative, 0)
    points = np.zeros((len(masks), n, 2), dtype=np.float32)
    labels = np.full((len(masks), n), -1, dtype=np.int64)
    for i, mask in enumerate(masks):
        pos = sample_points(mask, max(n_positive, 1), rng, positive=True)
        neg = sample_points(mask, n_negative, rng, positive=False) if n_negative > 0 else np.zeros((0, 2), int)
        both = np.concatenate([pos, neg], axis=0)
        points[i, : len(both)] = both
        labels[i, : len(pos)] = 1
        labels[i, len(pos): len(both)] = 0
    return PromptSet(points, labels, None)

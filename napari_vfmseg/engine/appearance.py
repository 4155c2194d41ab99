"""An object's appearance on a plane, and of what surrounds it, used by 3D propagation as a check on the model.

A model that tends to fill the box it is given keeps finding "an object" on every plane past the
real one's end: a vertebral body's walk crosses the disc into the next vertebra, a lesion's walk
continues into the liver around it. Their intensities tell: the disc is 150 HU darker than the
bone around it. :class:`Appearance` holds the intensity histogram of an object's pixels on one
plane, in the volume's own units (HU for CT, scanner units for MR), and robust quantiles of them.
:meth:`Appearance.similarity` compares a new plane's mask with it (the Bhattacharyya coefficient
of the two histograms: 1 = the same distribution, 0 = no intensity in common), and
:meth:`Appearance.plausible` tells which pixels of a plane could belong to the object at all.

:func:`surroundings` gives the ring of pixels around a mask, whose histogram tells what the object
would be mistaken for: a mask that stops looking like the object but looks like its surroundings
has left it.

The histogram's bins are fixed by the plane the statistics come from: 2 % of its 1st–99th
percentile range each (34 HU on an abdominal CT plane), so noise does not split one tissue into
many bins, and values outside the range fall into the end bins. Quantiles make a seed mask that
spilled a little into its neighbours (a box filled by the model) still describe the object.

Non-finite voxels (NaN, infinite: missing data in some reconstructions) are ignored everywhere:
they count in no histogram and no quantile, and are never plausible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Appearance", "surroundings"]

_BINS = 60  # 50 bins of 2 % over the 1st–99th percentile range, and 5 more on each side


@dataclass(frozen=True)
class Appearance:
    """Intensity statistics of an object on one plane (the volume's units).

    ``edges``: float (61,) histogram bin edges; ``histogram``: float (60,), sums to 1.
    ``low``/``high``: the object's 5th and 95th percentiles; ``spread``: its interquartile range, at
    least one bin wide.
    """

    edges: np.ndarray
    histogram: np.ndarray
    low: float
    high: float
    spread: float

    @classmethod
    def of(cls, plane_values: np.ndarray, mask: np.ndarray) -> Optional["Appearance"]:
        """Statistics of ``plane_values`` (rows, cols), any real dtype, under ``mask`` (bool (rows, cols)),
        with bins from this plane's own finite range. None when the mask has no finite voxel or the
        plane is not a scalar image of the mask's shape."""
        values = np.asarray(plane_values)
        mask = np.asarray(mask, dtype=bool)
        if values.shape != mask.shape or not np.issubdtype(values.dtype, np.number):
            return None
        finite = np.isfinite(values)
        mask = mask & finite
        if not mask.any():
            return None
        p01, p99 = np.percentile(values[finite], (1, 99))
        width = max(0.02 * float(p99 - p01), 1e-6)
        return cls._summarise(float(p01) - 5 * width + width * np.arange(_BINS + 1), values[mask])

    @classmethod
    def _summarise(cls, edges: np.ndarray, inside: np.ndarray) -> "Appearance":
        """Histogram on ``edges`` and quantiles of the object's pixel values ``inside`` (N,)."""
        inside = inside.astype(np.float64)
        index = np.clip(np.searchsorted(edges, inside, side="right") - 1, 0, len(edges) - 2)
        counts = np.bincount(index, minlength=len(edges) - 1).astype(np.float64)
        q05, q25, q75, q95 = np.percentile(inside, (5, 25, 75, 95))
        return cls(edges=edges, histogram=counts / max(counts.sum(), 1.0), low=float(q05), high=float(q95),
                   spread=max(float(q75 - q25), float(edges[1] - edges[0])))

    def like(self, plane_values: np.ndarray, mask: np.ndarray) -> Optional["Appearance"]:
        """The statistics of another mask, on this one's bins (so the two can be compared); None
        for a mask without a finite voxel."""
        values = np.asarray(plane_values)
        mask = np.asarray(mask, dtype=bool) & np.isfinite(values)
        if not mask.any():
            return None
        return self._summarise(self.edges, values[mask])

    def similarity(self, plane_values: np.ndarray, mask: np.ndarray) -> float:
        """Bhattacharyya coefficient in [0, 1] between this histogram and that of ``plane_values``
        under ``mask`` (0 for an empty mask)."""
        other = self.like(plane_values, mask)
        return 0.0 if other is None else self.similarity_to(other)

    def similarity_to(self, other: "Appearance") -> float:
        """Bhattacharyya coefficient between two histograms on the same bins."""
        return float(np.clip(np.sum(np.sqrt(self.histogram * other.histogram)), 0.0, 1.0))

    def plausible(self, plane_values: np.ndarray, tolerance: float) -> np.ndarray:
        """Bool (rows, cols): pixels within ``[low - tolerance * spread, high + tolerance * spread]``
        (never a non-finite one)."""
        values = np.asarray(plane_values)
        margin = float(tolerance) * self.spread
        return (values >= self.low - margin) & (values <= self.high + margin)


def surroundings(mask: np.ndarray) -> np.ndarray:
    """Bool (rows, cols): the pixels within ``w`` of ``mask`` (bool (rows, cols)) but outside it, with
    ``w = max(3, 0.2 x the mask's equivalent radius)`` pixels (chessboard distance). Empty for an
    empty mask."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros_like(mask)
    cols = np.flatnonzero(mask.any(axis=0))
    width = max(3, int(round(0.2 * np.sqrt(np.count_nonzero(mask) / np.pi))))
    window = (slice(max(0, rows[0] - width), rows[-1] + width + 1), slice(max(0, cols[0] - width), cols[-1] + width + 1))
    inside = mask[window]
    ring = np.zeros_like(mask)
    ring[window] = ndimage.binary_dilation(inside, structure=np.ones((3, 3), bool), iterations=width) & ~inside
    return ring

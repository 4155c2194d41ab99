"""Resolution-independent building blocks for procedural phantoms.

A phantom is described in *reference millimetres*: the physical coordinates of its default
geometry, centred on the middle of the field of view. A :class:`Grid` maps any array shape onto
that same field of view, so the same seed gives the same anatomy at any resolution (tests use
small shapes, the shipped files the default one). Random fields are drawn on a node lattice
fixed in reference millimetres, never on the voxel grid, for the same reason.

All arrays are in array axis order: (plane, row, col) for 3D, (row, col) for 2D.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Grid",
    "make_grid",
    "smooth_field",
    "ellipsoid_radius",
    "radial_depth",
    "tube_distance",
    "snapped_ellipsoid",
    "smoothstep",
]


@dataclass(frozen=True)
class Grid:
    """Voxel centres of an array, in reference millimetres, one 1D coordinate vector per axis.

    Attributes:
        shape: the array shape, e.g. (plane, row, col).
        axes: per axis, the reference-mm coordinate of every voxel centre (increasing).
        fov: per axis, the reference field of view in mm (the coordinates span ±fov/2).
        spacing: per axis, the real voxel size in mm (may differ from the reference step when a
            caller asks for another field of view; anatomy then scales with it).
    """

    shape: tuple[int, ...]
    axes: tuple[np.ndarray, ...]
    fov: tuple[float, ...]
    spacing: tuple[float, ...]

    @property
    def step(self) -> tuple[float, ...]:
        """Distance between voxel centres in reference mm, per axis."""
        return tuple(f / n for f, n in zip(self.fov, self.shape))

    def open(self) -> tuple[np.ndarray, ...]:
        """Broadcastable coordinate arrays (like ``np.ix_``), float32."""
        return tuple(np.ix_(*[a.astype(np.float32) for a in self.axes]))

    def index_of(self, point_mm: Sequence[float]) -> np.ndarray:
        """Fractional voxel index of a point given in reference mm."""
        return np.array(
            [(p / f + 0.5) * n - 0.5 for p, f, n in zip(point_mm, self.fov, self.shape)], dtype=np.float64
        )


def make_grid(
    shape: Sequence[int], ref_shape: Sequence[int], ref_spacing: Sequence[float], spacing: Sequence[float] | None
) -> Grid:
    """A grid of ``shape`` voxels over the reference field of view ``ref_shape * ref_spacing``.

    With ``spacing=None`` the real spacing is chosen so that the field of view stays the reference
    one (fewer voxels → larger voxels, same anatomy in mm). With an explicit ``spacing`` the real
    field of view is ``shape * spacing`` and the anatomy is scaled proportionally to fill it.
    """
    shape_t = tuple(int(n) for n in shape)
    if len(shape_t) != len(ref_shape) or any(n < 1 for n in shape_t):
        raise ValueError(f"shape must have {len(ref_shape)} positive sizes, got {tuple(shape)}")
    fov = tuple(float(n) * float(s) for n, s in zip(ref_shape, ref_spacing))
    if spacing is None:
        real = tuple(f / n for f, n in zip(fov, shape_t))
    else:
        real = tuple(float(s) for s in spacing)
        if len(real) != len(shape_t) or any(not np.isfinite(s) or s <= 0 for s in real):
            raise ValueError(f"spacing must have {len(shape_t)} positive sizes in mm, got {tuple(spacing)}")
    axes = tuple(((np.arange(n, dtype=np.float64) + 0.5) / n - 0.5) * f for n, f in zip(shape_t, fov))
    return Grid(shape=shape_t, axes=axes, fov=fov, spacing=real)


def smooth_field(rng: np.random.Generator, grid: Grid, corr_mm: float) -> np.ndarray:
    """A smooth Gaussian random field with zero mean and unit variance at every voxel.

    White noise on a lattice of nodes ``corr_mm`` apart (fixed in reference mm, with a margin) is
    spread by a separable Gaussian kernel of width ``corr_mm``. Because the nodes do not depend on
    the voxel grid, the field is the same function of position at any resolution.

    Returns:
        float32 array of ``grid.shape``.
    """
    weights = []
    for axis, fov in zip(grid.axes, grid.fov):
        half = fov / 2 + 3 * corr_mm
        nodes = np.arange(-half, half + corr_mm / 2, corr_mm)
        w = np.exp(-0.5 * ((axis[:, None] - nodes[None, :]) / corr_mm) ** 2)
        w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
        weights.append(w)
    field = rng.standard_normal(tuple(w.shape[1] for w in weights))
    # Contract one axis at a time; after each tensordot the new axis is last, so the order rotates back.
    for w in weights:
        field = np.tensordot(field, w, axes=([0], [1]))
    return field.astype(np.float32)


def ellipsoid_radius(
    coords: Sequence[np.ndarray],
    center: Sequence[float],
    semi_axes: Sequence[float | np.ndarray],
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """Normalised ellipsoidal radius: < 1 inside, 1 on the surface.

    Args:
        coords: broadcastable coordinate arrays (``Grid.open()``), reference mm.
        center: centre in the same axis order.
        semi_axes: semi-axis lengths along each (rotated) axis; entries may be arrays that
            broadcast with ``coords`` (e.g. a taper that varies with the plane coordinate).
        rotation: optional orthonormal matrix; the body frame coordinate is ``rotation @ (p - c)``.
    """
    rel = [c - float(m) for c, m in zip(coords, center)]
    if rotation is not None:
        rot = np.asarray(rotation, dtype=np.float64)
        rel = [sum(float(rot[i, j]) * rel[j] for j in range(len(rel))) for i in range(len(rel))]
    total = sum((r / a) ** 2 for r, a in zip(rel, semi_axes))
    return np.sqrt(total).astype(np.float32)


def radial_depth(coords: Sequence[np.ndarray], center: Sequence[float], semi_axes: Sequence[float]) -> np.ndarray:
    """Depth in mm below the surface of an ellipsoid, measured along the ray from its centre.

    Positive inside, negative outside; close to the true distance for moderately round shapes.
    """
    rel = [c - float(m) for c, m in zip(coords, center)]
    dist = np.sqrt(sum(r**2 for r in rel)).astype(np.float32)
    rho = np.sqrt(sum((r / a) ** 2 for r, a in zip(rel, semi_axes))).astype(np.float32)
    rho = np.maximum(rho, np.float32(1e-6))
    return dist / rho - dist


def tube_distance(
    grid: Grid, points: np.ndarray, radii: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Signed distance (mm, negative inside) to a tube along a polyline with varying radius.

    Args:
        grid: the voxel grid.
        points: (n, ndim) polyline vertices in reference mm, array axis order.
        radii: (n,) tube radius at each vertex, interpolated linearly along each segment.
        out: optional array of ``grid.shape`` to combine with (element-wise minimum, in place).

    Each segment is evaluated only inside its own bounding box, so long thin tubes are cheap.
    Voxels far from every segment keep ``+inf`` (or their value in ``out``).
    """
    pts = np.asarray(points, dtype=np.float64)
    rad = np.asarray(radii, dtype=np.float64)
    if out is None:
        out = np.full(grid.shape, np.inf, dtype=np.float32)
    for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
        reach = max(ra, rb) + 2 * max(grid.step)
        lo = np.minimum(a, b) - reach
        hi = np.maximum(a, b) + reach
        sl = []
        for axis, l, h in zip(grid.axes, lo, hi):
            i0, i1 = np.searchsorted(axis, l), np.searchsorted(axis, h, side="right")
            sl.append(slice(int(i0), int(i1)))
        if any(s.start >= s.stop for s in sl):
            continue
        sub = np.ix_(*[axis[s] for axis, s in zip(grid.axes, sl)])
        ab = b - a
        denom = float(ab @ ab) or 1.0
        t = sum((c - a[k]) * ab[k] for k, c in enumerate(sub)) / denom
        t = np.clip(t, 0.0, 1.0)
        dist = np.sqrt(sum((c - (a[k] + t * ab[k])) ** 2 for k, c in enumerate(sub)))
        signed = (dist - (ra + t * (rb - ra))).astype(np.float32)
        region = out[tuple(sl)]
        np.minimum(region, signed, out=region)
    return out


def snapped_ellipsoid(grid: Grid, center_mm: Sequence[float], diameter_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A small ellipsoid aligned to the voxel grid, with an exact voxel footprint.

    Along each axis the object covers ``n = max(1, round(diameter / step))`` voxels: its centre is
    snapped to a voxel centre (odd ``n``) or to the midpoint between two (even ``n``), and its
    semi-axis is ``n * step / 2``, so its extent in voxels is exactly ``n`` and never more.

    Returns:
        (mask, centre_index): bool array of ``grid.shape`` and the snapped fractional centre index.
    """
    idx = grid.index_of(center_mm)
    counts = [max(1, int(round(diameter_mm / s))) for s in grid.step]
    centre = np.array(
        [np.floor(i) + 0.5 if n % 2 == 0 else np.round(i) for i, n in zip(idx, counts)], dtype=np.float64
    )
    semi = [n / 2 for n in counts]  # in voxels
    index_axes = np.ix_(*[np.arange(n, dtype=np.float64) for n in grid.shape])
    total = sum(((ax - c) / s) ** 2 for ax, c, s in zip(index_axes, centre, semi))
    mask = total < 1.0
    return mask, centre


def smoothstep(x: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    """0 below ``lo``, 1 above ``hi``, a smooth cubic ramp in between."""
    t = np.clip((np.asarray(x, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)

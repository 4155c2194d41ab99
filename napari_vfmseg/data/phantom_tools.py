"""Helpers shared by the phantom generators (:mod:`napari_vfmseg.data.phantoms`): seeded random
streams, metadata, rotations, blur and correlated noise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_vfmseg.data.primitives import (
    Grid,
)

_IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _rng_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for anatomy, texture and noise.

    Anatomy draws only on resolution-independent lattices, so it is the same at every shape.
    """
    children = np.random.SeedSequence(int(seed)).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)  # type: ignore[return-value]


def _meta(grid: Grid, centre_zyx: Sequence[float], labels: dict[int, str], seed: int, **extra: Any) -> dict[str, Any]:
    spacing = tuple(round(float(s), 9) for s in grid.spacing)
    origin = tuple(round(float(c - (n - 1) / 2 * s), 9) for c, n, s in zip(centre_zyx, grid.shape, spacing))
    return {
        "spacing": spacing,
        "origin": origin,
        "direction": _IDENTITY,
        "label_names": dict(labels),
        "seed": int(seed),
        **extra,
    }


def _rotation_zx(angle_deg: float) -> np.ndarray:
    """Rotation in the (plane, col) = (z, x) plane, leaving rows fixed."""
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), 0.0, -np.sin(a)], [0.0, 1.0, 0.0], [np.sin(a), 0.0, np.cos(a)]])


def _rotation_yx(angle_deg: float) -> np.ndarray:
    """Rotation in the axial (row, col) = (y, x) plane."""
    a = np.deg2rad(angle_deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])


def _curve(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.stack([z, y, x], axis=1).astype(np.float64)


def _blur_sigma_vox(grid: Grid, in_plane: float, through_plane: float) -> tuple[float, ...]:
    """Blur widths in voxels: a point-spread function in mm plus a slice-profile term."""
    sig = []
    for axis, step in enumerate(grid.step):
        mm = through_plane if axis == 0 else in_plane
        sig.append(float(np.hypot(mm / step, 0.3)))
    return tuple(sig)


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """White noise smoothed in-plane and rescaled to unit standard deviation (float32)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma_vox > 0:
        sig = (0.0,) * (len(shape) - 2) + (sigma_vox, sigma_vox)
        noise = ndimage.gaussian_filter(noise, sig, mode="wrap")
        noise /= np.float32(noise.std() or 1.0)
    return noise


# ------------------------------------------------------------------------------------------ abdomen CT

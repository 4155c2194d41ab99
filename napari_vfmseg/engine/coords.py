"""The one place where napari's (row, col) order becomes SAM's (x, y) order.

napari, the public API and every array in this project address pixels as (row, col); SAM's
prompt encoder takes points and box corners as (x, y) = (col, row). Inference
(:class:`~napari_vfmseg.engine.preprocess.Geometry`), training and the benchmarks all call
:func:`rc_to_xy`, so the convention cannot drift between them. No torch import at module level.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

ArrayLike = TypeVar("ArrayLike")


def rc_to_xy(points_rc: ArrayLike) -> ArrayLike:
    """(..., 2) points as (row, col) → the same points as (x, y) = (col, row).

    Accepts a numpy array (returns a new float64 array) or a torch tensor (returns a new tensor of
    the same dtype and device). The conversion is its own inverse, but call :func:`xy_to_rc` for
    the way back so that the direction reads in the code.
    """
    if isinstance(points_rc, np.ndarray) or not hasattr(points_rc, "flip"):
        points = np.asarray(points_rc, dtype=np.float64)
        if points.shape[-1] != 2:
            raise ValueError(f"points must end in an axis of 2 (row, col), got shape {points.shape}")
        return points[..., ::-1].copy()
    if points_rc.shape[-1] != 2:  # a torch tensor
        raise ValueError(f"points must end in an axis of 2 (row, col), got shape {tuple(points_rc.shape)}")
    return points_rc.flip(-1)


def xy_to_rc(points_xy: ArrayLike) -> ArrayLike:
    """(..., 2) points as SAM's (x, y) → napari's (row, col); see :func:`rc_to_xy`."""
    return rc_to_xy(points_xy)

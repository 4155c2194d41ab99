"""Planes of an image: which array axes a 2D slice spans, and how to index it.

A 3D image is (plane, row, col) in array order, but the viewer may slice it along any axis. A
:class:`Plane` names one slice: ``axis`` (the array axis held fixed; None for a 2D image) and
``index`` along it. The slice's own (row, col) axes are the two other array axes in increasing
order — the same convention as ``np.take(volume, index, axis)``, which is what
:meth:`napari_vfmseg.engine.Segmenter.set_volume` uses — so a (row, col) prompt on the slice and
the mask the engine returns address the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Plane", "plane_axes", "plane_region", "plane_shape", "intersection_line"]


@dataclass(frozen=True, order=True)
class Plane:
    """One 2D slice: ``axis`` fixed at ``index`` (``axis=None``, ``index=0`` for a 2D image)."""

    axis: Optional[int]
    index: int

    def describe(self) -> str:
        return "the image" if self.axis is None else f"plane {self.index} along axis {self.axis}"


def plane_axes(ndim: int, axis: Optional[int]) -> tuple[int, int]:
    """Array axes (row axis, col axis) of a slice of an ``ndim``-D image (ndim 2 or 3)."""
    if ndim == 2:
        if axis is not None:
            raise ValueError(f"a 2D image has no plane axis; got axis={axis}")
        return (0, 1)
    if ndim != 3 or axis not in (0, 1, 2):
        raise ValueError(f"a plane of a {ndim}D image needs axis 0, 1 or 2; got {axis}")
    rest = [a for a in range(3) if a != axis]
    return (rest[0], rest[1])


def plane_region(ndim: int, plane: Plane) -> tuple:
    """Index tuple selecting ``plane`` in an array of ``ndim`` spatial dims: ``array[region]`` is (rows, cols)."""
    if ndim == 2:
        plane_axes(2, plane.axis)
        return (slice(None), slice(None))
    plane_axes(3, plane.axis)
    region: list = [slice(None)] * 3
    region[plane.axis] = int(plane.index)
    return tuple(region)


def plane_shape(shape: tuple[int, ...], plane: Plane) -> tuple[int, int]:
    """(rows, cols) of ``plane`` in an image of spatial ``shape``."""
    rows, cols = plane_axes(len(shape), plane.axis)
    if plane.axis is not None and not 0 <= plane.index < shape[plane.axis]:
        raise ValueError(f"{plane.describe()} is outside an image of shape {tuple(shape)}")
    return (int(shape[rows]), int(shape[cols]))


def intersection_line(mask: np.ndarray, source: Plane, target: Plane) -> Optional[tuple[tuple, np.ndarray]]:
    """Where a mask drawn on ``source`` crosses ``target`` (another axis of the same 3D image).

    Returns ``(index, line)``: ``target_view[index] = line`` puts the crossing into a (rows, cols)
    view of ``target``. None when both planes share an axis (parallel planes never cross).
    """
    if source.axis is None or target.axis is None or source.axis == target.axis:
        return None
    source_axes = plane_axes(3, source.axis)
    target_axes = plane_axes(3, target.axis)
    line = np.take(mask, target.index, axis=source_axes.index(target.axis))
    index: list = [slice(None), slice(None)]
    index[target_axes.index(source.axis)] = source.index
    return tuple(index), line

"""Which plane of an image the viewer shows, and which planes a brush stroke touched.

Pure functions of napari's ``dims`` (``ndisplay``, ``ndim``, ``not_displayed``, ``point``) and of
an image layer's ``data_to_world`` / ``world_to_data`` transforms, so they are tested with plain
stand-ins and no Qt. Coordinates are in the image's array axis order, (plane, row, col) for 3D.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from napari_vfmseg.annotation.planes import Plane

__all__ = ["displayed_axis", "current_plane", "painted_planes"]


def displayed_axis(dims, layer, shape: Sequence[int]) -> Optional[int]:
    """The array axis of the image (of ``shape``) that a 2D view slices through; None in a 3D view
    or when more than one of the image's axes is sliced.

    Found through the layer's transform (the axis whose unit step moves most along the sliced
    world axis), so a permuted or flipped affine is handled too.
    """
    if dims.ndisplay != 2:
        return None
    ndim = len(shape)
    offset = dims.ndim - ndim
    sliced = [a - offset for a in dims.not_displayed if a >= offset]
    if len(sliced) != 1:
        return None
    centre = np.asarray(shape, dtype=float) / 2.0
    origin = np.asarray(layer.data_to_world(centre), dtype=float)[-ndim:]
    weights = []
    for axis in range(ndim):
        step = centre.copy()
        step[axis] += 1.0
        delta = np.asarray(layer.data_to_world(step), dtype=float)[-ndim:] - origin
        weights.append(abs(delta[sliced[0]]) / (np.linalg.norm(delta) or 1.0))
    return int(np.argmax(weights))


def current_plane(dims, layer, shape: Sequence[int]) -> Optional[Plane]:
    """The plane of the image (of ``shape``) on screen: ``Plane(None, 0)`` for a 2D image, None in
    a 3D view; the index is the viewer's point mapped into the layer's data and clipped to the image."""
    ndim = len(shape)
    if ndim == 2:
        return Plane(None, 0)
    axis = displayed_axis(dims, layer, shape)
    if axis is None:
        return None
    point = np.asarray(dims.point, dtype=float)[-ndim:]
    data = np.asarray(layer.world_to_data(point), dtype=float)[-ndim:]
    index = int(np.clip(np.round(data[axis]), 0, shape[axis] - 1))
    return Plane(axis, index)


def painted_planes(atoms, axis: Optional[int], shape: tuple[int, ...]) -> list[Plane]:
    """The planes along ``axis`` that a napari Labels paint event's history atoms touched.

    An atom is a masked edit (``slice_key``: a slice per array axis) or an (indices, before, after)
    triple. A 2D image has one plane. Returns [] when the atoms are not understood.
    """
    if not atoms:
        return []
    if axis is None:
        return [Plane(None, 0)]
    indices: set[int] = set()
    for atom in atoms:
        key = getattr(atom, "slice_key", None)
        if key is not None:
            start, stop, _ = key[axis].indices(shape[axis])
            indices.update(range(start, stop))
        elif isinstance(atom, tuple) and len(atom) == 3 and len(atom[0]) == len(shape):
            indices.update(int(i) for i in np.unique(np.asarray(atom[0][axis])))
        else:
            return []
    return [Plane(axis, i) for i in sorted(indices) if 0 <= i < shape[axis]]

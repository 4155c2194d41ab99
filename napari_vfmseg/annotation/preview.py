"""How a session's preview is composed from per-plane masks and a 3D propagation. Qt-free.

The preview (same shape as the image, uint8, 1 = the pending object) is a pure function of:

* an optional propagated volume (:class:`VolumePreview`: a bool mask of the image's shape, made
  by walking along ``axis``), and
* the *own masks* of planes (what the user made there: painted, or predicted from prompts), each
  bool (rows, cols) on its :class:`~napari_vfmseg.annotation.planes.Plane`.

Along the propagation axis a key plane's own mask replaces its slice of the propagated mask;
own masks on planes of other axes are OR-ed on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from napari_vfmseg.annotation.planes import Plane, intersection_line, plane_region

__all__ = ["VolumePreview", "compose_all", "compose_plane"]


@dataclass
class VolumePreview:
    """A propagated object: ``mask`` bool with the image's shape, walked along array axis ``axis``."""

    axis: int
    mask: np.ndarray


def compose_all(preview: np.ndarray, volume: Optional[VolumePreview], masks: dict[Plane, np.ndarray]) -> None:
    """Rewrite the whole ``preview`` in place: the propagated mask with each key plane's own mask in
    place of its slice, OR the own masks of planes along other axes."""
    ndim = preview.ndim
    if volume is None:
        preview[...] = 0
    else:
        np.copyto(preview, volume.mask, casting="unsafe")
    for plane, mask in masks.items():
        if volume is not None and plane.axis == volume.axis:
            preview[plane_region(ndim, plane)] = mask
    for plane, mask in masks.items():
        if volume is None or plane.axis != volume.axis:
            preview[plane_region(ndim, plane)] |= mask.astype(np.uint8)


def compose_plane(preview: np.ndarray, plane: Plane, volume: Optional[VolumePreview], masks: dict[Plane, np.ndarray]) -> None:
    """Rewrite ``plane``'s slice of ``preview`` as :func:`compose_all` would (an own mask only ever
    changes its own plane's slice, and the lines where it crosses other planes)."""
    region = plane_region(preview.ndim, plane)
    view = preview[region]
    if volume is None:
        view[...] = 0
    else:
        view[...] = volume.mask[region]
        for other, mask in masks.items():   # key planes replace their slice of the propagated mask
            if other.axis == volume.axis:
                crossing = intersection_line(mask, other, plane)
                if crossing is not None:
                    index, line = crossing
                    view[index] = line
    own = masks.get(plane)
    if own is not None:
        if volume is not None and plane.axis == volume.axis:
            view[...] = own
        else:
            view[own] = 1
    for other, mask in masks.items():
        if volume is not None and other.axis == volume.axis:
            continue
        crossing = intersection_line(mask, other, plane)
        if crossing is not None:
            index, line = crossing
            view[index] |= line.astype(np.uint8)

"""Glue between a :class:`~napari_vfmseg.io.Volume` and napari layer keyword arguments.

The scan's geometry travels in ``layer.metadata["vfmseg"]`` so that labels drawn on top of it can
be written back with exactly the source's spacing, origin and direction. Axis-aligned volumes are
shown with ``scale``/``translate`` (mm); oblique oblique or flipped ones with a full ``affine`` so they display
correctly in world space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from napari_vfmseg.io import Volume
from napari_vfmseg.io.windowing import auto_window

GEOMETRY_KEY = "vfmseg"


def geometry_metadata(volume: Volume) -> dict[str, Any]:
    """JSON-friendly geometry of ``volume`` in array axis order (mm)."""
    return {
        "spacing": [float(s) for s in volume.spacing],
        "origin": [float(o) for o in volume.origin],
        "direction": np.asarray(volume.direction, dtype=float).tolist(),
        "source": str(volume.path) if volume.path is not None else None,
        "modality": volume.modality,
    }


def _placement(volume: Volume) -> dict[str, Any]:
    # a flipped axis (e.g. a RAS NIfTI) is not oblique, but scale/translate alone would mirror it
    if not volume.has_identity_direction:
        return {"affine": np.asarray(volume.affine, dtype=float)}
    return {"scale": tuple(volume.scale), "translate": tuple(volume.translate)}


def image_layer_kwargs(volume: Volume, name: Optional[str] = None) -> dict[str, Any]:
    """Keyword arguments for ``viewer.add_image`` (physical placement, contrast window, metadata)."""
    kwargs: dict[str, Any] = {
        "name": name or _display_name(volume),
        "metadata": {GEOMETRY_KEY: geometry_metadata(volume)},
        **_placement(volume),
    }
    if volume.is_rgb:
        kwargs["rgb"] = True
    else:
        window = auto_window(volume.array, volume.modality)
        kwargs["contrast_limits"] = (float(window.low), float(window.high))
        kwargs["colormap"] = "gray"
    return kwargs


def labels_layer_kwargs(volume: Volume, name: Optional[str] = None) -> dict[str, Any]:
    """Keyword arguments for ``viewer.add_labels`` placed exactly on ``volume``."""
    return {
        "name": name or f"{_display_name(volume)} labels",
        "metadata": {GEOMETRY_KEY: geometry_metadata(volume)},
        **_placement(volume),
    }


def geometry_from_layer(metadata: dict, scale, translate, ndim: int) -> dict[str, Any]:
    """Geometry to write a layer with: the stored scan geometry if any, else scale/translate.

    Returns ``{"spacing", "origin", "direction"}`` in array axis order. A layer that came from our
    reader (or was created by our widgets) carries the full direction; a plain napari layer is
    written axis-aligned from its scale and translate.
    """
    stored = (metadata or {}).get(GEOMETRY_KEY)
    if stored and len(stored.get("spacing", ())) == ndim:
        return {
            "spacing": tuple(stored["spacing"]),
            "origin": tuple(stored["origin"]),
            "direction": np.asarray(stored["direction"], dtype=float),
        }
    return {
        "spacing": tuple(float(s) for s in scale[-ndim:]),
        "origin": tuple(float(t) for t in translate[-ndim:]),
        "direction": np.eye(ndim),
    }


def _display_name(volume: Volume) -> str:
    if volume.path is None:
        return "volume"
    path = Path(volume.path)
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name

"""The annotated volumes open in the viewer, as a fine-tuning round reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from napari_vfmseg._layer_geometry import GEOMETRY_KEY

__all__ = ["AnnotatedSource", "annotated_sources"]


@dataclass
class AnnotatedSource:
    """One annotated volume, captured on the UI thread: labels copied, image as shown."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    axis: Optional[int]
    window: object
    modality: Optional[str]
    spacing: Optional[tuple] = None   # mm per pixel in the image's axis order: training keeps true proportions


def annotated_sources(annotator, copy: bool = True) -> list[AnnotatedSource]:
    """The open annotated volumes: the annotator's image (its window and axis) and every image
    layer with an "<name> objects" labels layer of its shape. Labels are copied (for a round that
    trains while the user edits) unless ``copy`` is False (counting only)."""
    from napari.layers import Image, Labels

    out: list[AnnotatedSource] = []
    seen = set()
    session = annotator.session
    if session is not None and annotator.image_layer is not None and not annotator.image_layer.rgb:
        layer = annotator.image_layer
        plane = annotator.current_plane()
        axis = None if session.ndim == 2 else (plane.axis if plane is not None else (annotator.engine.axis or 0))
        out.append(AnnotatedSource(layer.name, np.asarray(layer.data), _labels_array(session.labels, copy), axis,
                           annotator.window_combo.currentData(), _modality(layer),
                           tuple(session.geometry["spacing"])))
        seen.add(layer.unique_id)
    layers = list(annotator.viewer.layers)
    for layer in layers:
        if not isinstance(layer, Image) or layer.unique_id in seen or layer.rgb:
            continue
        target = next((lab for lab in layers if isinstance(lab, Labels) and lab.name == f"{layer.name} objects"
                       and lab.data.shape == layer.data.shape), None)
        if target is None:
            continue
        out.append(AnnotatedSource(layer.name, np.asarray(layer.data), _labels_array(target.data, copy),
                           0 if layer.data.ndim == 3 else None, None, _modality(layer), _spacing(layer)))
    return out


def _labels_array(data, copy: bool) -> np.ndarray:
    """The labels as a numpy array: a copy, or a view where one is possible (counting only)."""
    return np.array(data, copy=True) if copy else np.asarray(data)


def _spacing(layer) -> tuple:
    """The layer's pixel spacing (mm, array axis order): the scan's own, else napari's scale."""
    stored = ((layer.metadata or {}).get(GEOMETRY_KEY) or {}).get("spacing")
    return tuple(float(v) for v in (stored if stored is not None else layer.scale))


def _modality(layer) -> Optional[str]:
    return ((layer.metadata or {}).get(GEOMETRY_KEY) or {}).get("modality")

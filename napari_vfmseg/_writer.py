"""napari writer contribution: a labels layer to NIfTI/NRRD/MetaImage with the scan's geometry."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vfmseg.io import write_labels
from napari_vfmseg._layer_geometry import geometry_from_layer


def write_labels_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write one labels layer; return the written path (napari's single-layer writer contract)."""
    labels = np.asarray(data)
    ndim = labels.ndim
    geometry = geometry_from_layer(
        meta.get("metadata", {}),
        meta.get("scale", (1.0,) * ndim),
        meta.get("translate", (0.0,) * ndim),
        ndim,
    )
    written = write_labels(path, labels, like=None, **geometry)
    return [str(written)]

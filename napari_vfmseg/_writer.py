"""napari writer contribution: a labels layer to NIfTI/NRRD/MetaImage with the scan's geometry, or to a
DICOM-SEG (.dcm) referencing the DICOM series it was drawn on."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vfmseg._layer_geometry import GEOMETRY_KEY, geometry_from_layer, source_volume
from napari_vfmseg.io import LabelWriteError, write_labels
from napari_vfmseg.io.formats import DICOM_SUFFIXES, path_extension


class LayerWriteError(RuntimeError):
    """A labels layer cannot be written; the message names the file, the layer and the problem.

    Not a ValueError on purpose: napari reads a ValueError from a writer as "no writer found" and
    drops its message, so the user would never learn why nothing was saved.
    """


def write_labels_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write one labels layer; return the written path (napari's single-layer writer contract).

    ``meta`` is the layer's state as napari passes it (``metadata``, ``scale``, ``translate``,
    ``rotate``, ``shear``, ``affine``, ``name``).

    Raises:
        LayerWriteError: a sheared layer, a DICOM-SEG without a DICOM source, bad labels, an
            unwritable path (the io layer's LabelWriteError, re-raised so napari shows it).
    """
    try:
        return _write(path, data, meta)
    except LabelWriteError as exc:
        raise LayerWriteError(str(exc)) from exc


def _write(path: str, data: Any, meta: dict) -> list[str]:
    labels = np.asarray(data)
    ndim = labels.ndim
    metadata = meta.get("metadata") or {}
    where = f"{path} (layer {meta.get('name', '')!r})"
    if path_extension(path) in DICOM_SUFFIXES:
        return [_write_dicom_seg(path, labels, metadata, where)]
    geometry = geometry_from_layer(
        metadata,
        meta.get("scale", (1.0,) * ndim),
        meta.get("translate", (0.0,) * ndim),
        ndim,
        rotate=meta.get("rotate"),
        shear=meta.get("shear"),
        affine=meta.get("affine"),
        where=where,
    )
    written = write_labels(path, labels, like=None, **geometry)
    return [str(written)]


def _write_dicom_seg(path: str, labels: np.ndarray, metadata: dict, where: str) -> str:
    """DICOM-SEG from a layer whose metadata names its DICOM source (the reader and the widget set it)."""
    from napari_vfmseg.io.dicom_seg import write_dicom_seg

    stored = metadata.get(GEOMETRY_KEY) or {}
    try:
        like = source_volume(stored, labels.shape)
    except (ValueError, KeyError) as exc:
        raise LabelWriteError(f"{where}: cannot write a DICOM-SEG: {exc}. Save as .nii.gz, .nrrd or .mha") from exc
    names = {int(k): str(v) for k, v in (metadata.get("label_names") or {}).items()}
    return write_dicom_seg(path, labels, like, names=names, model=stored.get("model"), adapter=stored.get("adapter"))

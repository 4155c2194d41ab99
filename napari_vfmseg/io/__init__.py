"""Imaging I/O: volumes with their geometry, DICOM series, intensity windows and label export.

Everything here uses napari's axis order: arrays are (plane, row, col) or (row, col) (plus a last
RGB axis for colour photos), and spacing/origin/direction are given in that same order (ITK's
(x, y, z) order reversed). Nothing in this package imports Qt or napari.
"""

from importlib import import_module

from napari_vfmseg.io.errors import LabelWriteError, VolumeReadError
from napari_vfmseg.io.volume import Volume
from napari_vfmseg.io.formats import IMAGE_SUFFIXES, LABEL_SUFFIXES, READ_SUFFIXES
from napari_vfmseg.io.windowing import (
    CT_PRESETS,
    WINDOW_CHOICES,
    Window,
    apply_window,
    auto_window,
    display_window,
    model_window,
    percentile_window,
    resolve_window,
)

# Readers and writers need SimpleITK; they are imported on first use, so that windowing (and the
# engine and training code that use it) import without SimpleITK.
_LAZY = {
    "read_volume": "reader",
    "is_supported_path": "reader",
    "VolumeNotFoundError": "reader",
    "SUPPORTED_READ_EXTENSIONS": "reader",
    "write_labels": "writer",
    "label_dtype": "writer",
    "SUPPORTED_LABEL_EXTENSIONS": "writer",
    "write_dicom_series": "dicom",
    "list_dicom_series": "dicom_headers",
    "write_dicom_seg": "dicom_seg",
    "read_segmentation": "dicom_seg",
    "is_dicom_seg": "dicom_seg",
    "read_labels": "labels",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"napari_vfmseg.io.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'napari_vfmseg.io' has no attribute {name!r}")


__all__ = [
    "Volume",
    "read_volume",
    "write_labels",
    "write_dicom_series",
    "list_dicom_series",
    "write_dicom_seg",
    "read_segmentation",
    "is_dicom_seg",
    "read_labels",
    "is_supported_path",
    "label_dtype",
    "VolumeReadError",
    "VolumeNotFoundError",
    "LabelWriteError",
    "SUPPORTED_READ_EXTENSIONS",
    "SUPPORTED_LABEL_EXTENSIONS",
    "READ_SUFFIXES",
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "Window",
    "WINDOW_CHOICES",
    "model_window",
    "display_window",
    "CT_PRESETS",
    "apply_window",
    "auto_window",
    "percentile_window",
    "resolve_window",
]

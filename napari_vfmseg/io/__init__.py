"""Imaging I/O: volumes with their geometry, DICOM series, intensity windows and label export.

Everything here uses napari's axis order: arrays are (plane, row, col) or (row, col) (plus a last
RGB axis for colour photos), and spacing/origin/direction are given in that same order (ITK's
(x, y, z) order reversed). Nothing in this package imports Qt or napari.
"""

from napari_vfmseg.io.dicom import write_dicom_series
from napari_vfmseg.io.errors import LabelWriteError, VolumeReadError
from napari_vfmseg.io.reader import SUPPORTED_READ_EXTENSIONS, VolumeNotFoundError, is_supported_path, read_volume
from napari_vfmseg.io.volume import Volume
from napari_vfmseg.io.windowing import (
    CT_PRESETS,
    Window,
    apply_window,
    auto_window,
    percentile_window,
    resolve_window,
)
from napari_vfmseg.io.writer import SUPPORTED_LABEL_EXTENSIONS, label_dtype, write_labels

__all__ = [
    "Volume",
    "read_volume",
    "write_labels",
    "write_dicom_series",
    "is_supported_path",
    "label_dtype",
    "VolumeReadError",
    "VolumeNotFoundError",
    "LabelWriteError",
    "SUPPORTED_READ_EXTENSIONS",
    "SUPPORTED_LABEL_EXTENSIONS",
    "Window",
    "CT_PRESETS",
    "apply_window",
    "auto_window",
    "percentile_window",
    "resolve_window",
]

"""DICOM series with known defects, made by writing a clean series and editing its files with pydicom."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom

from napari_vfmseg.io import write_dicom_series


def hu_volume(shape=(8, 6, 7)) -> np.ndarray:
    """(plane, row, col) HU, every plane different: value = -1000 + 100 * plane + 3 * row + col."""
    planes, rows, cols = np.indices(shape)
    return (-1000 + 100 * planes + 3 * rows + cols).astype(np.float64)


def clean_series(folder: Path, shape=(8, 6, 7), spacing=(2.5, 0.8, 0.7), **kwargs) -> tuple[Path, np.ndarray, str]:
    """Write a clean CT series; returns (folder, HU array, series UID). Files are slice_0000.dcm ..."""
    hu = hu_volume(shape)
    uid = write_dicom_series(folder, hu, spacing, origin=kwargs.pop("origin", (-40.0, 10.0, 5.0)), **kwargs)
    return Path(folder), hu, uid


def slice_file(folder: Path, plane: int) -> Path:
    return Path(folder) / f"slice_{plane:04d}.dcm"


def edit(path: Path, **values) -> None:
    """Set DICOM attributes by keyword on the file at ``path`` (delete one with value None)."""
    ds = pydicom.dcmread(str(path))
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(str(path))


def position(path: Path) -> np.ndarray:
    return np.asarray(pydicom.dcmread(str(path), stop_before_pixels=True).ImagePositionPatient, dtype=float)


def move(path: Path, offset_lps) -> None:
    """Shift the file's ImagePositionPatient by ``offset_lps`` (mm, patient x, y, z)."""
    edit(path, ImagePositionPatient=[f"{v:.6f}" for v in position(path) + np.asarray(offset_lps, dtype=float)])


def duplicate(path: Path, name: str, new_instance: bool) -> Path:
    """Copy ``path`` to ``name`` beside it; with ``new_instance`` a different image (new SOP UID, pixels + 1)."""
    target = path.with_name(name)
    shutil.copy(path, target)
    if new_instance:
        ds = pydicom.dcmread(str(target))
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".1"
        ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(str(target))
    return target

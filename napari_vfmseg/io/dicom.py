"""DICOM series: write a volume as one file per slice (reading and checks: :mod:`.dicom_series`).

Axis order. Arrays are (plane, row, col). ``spacing``, ``origin`` and ``direction`` are given in
the same ARRAY axis order as :class:`napari_vfmseg.io.Volume` uses: ``spacing[0]`` is the distance
between planes, ``origin`` is the patient-space (LPS, mm) position of voxel (0, 0, 0) written as
(z, y, x), and ``direction`` is ITK's direction matrix with rows and columns reversed
(``direction_array = D_itk[::-1, ::-1]``). So a :class:`Volume` round-trips with
``write_dicom_series(folder, vol.array, vol.spacing, vol.origin, vol.direction)``.

In DICOM terms the column axis of the array runs along the first ImageOrientationPatient vector
(along a row of pixels), the row axis along the second, and the plane axis along the slice normal.
Readers order slices by ImagePositionPatient projected on that normal, never by file name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk


from napari_vfmseg.io.dicom_headers import (  # noqa: F401  (read helpers, re-exported for callers)
    DicomSeriesInfo,
    choose_series,
    folder_has_dicom,
    list_dicom_series,
    looks_like_dicom_file,
)

__all__ = [
    "write_dicom_series",
    "DicomSeriesInfo",
    "list_dicom_series",
    "choose_series",
    "looks_like_dicom_file",
    "folder_has_dicom",
]

# DICOM tags as SimpleITK/GDCM spells them.
_TAG_MODALITY = "0008|0060"
_TAG_SERIES_DESCRIPTION = "0008|103e"
_TAG_SERIES_UID = "0020|000e"
_TAG_STUDY_UID = "0020|000d"
_TAG_PATIENT_NAME = "0010|0010"

# Storage SOP classes. GDCM writes PixelSpacing (0028,0030) for CT/MR image storage, but only
# "Nominal Scanned Pixel Spacing" for Secondary Capture, so modality-specific classes matter.
_SOP_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_SOP_CLASS_BY_MODALITY = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


def _uid_from(*parts: object) -> str:
    """A DICOM UID under the UUID-derived root 2.25 (ISO/IEC 9834-8), deterministic in ``parts``."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _as_direction3(direction: Sequence[float] | np.ndarray) -> np.ndarray:
    matrix = np.asarray(direction, dtype=np.float64)
    if matrix.size != 9:
        raise ValueError(f"direction must be a 3x3 matrix or 9 numbers, got shape {matrix.shape}")
    return matrix.reshape(3, 3)


def _stored_pixels(array: np.ndarray, intercept: float, slope: float) -> np.ndarray:
    """Real values → stored integers ``(array - intercept) / slope`` as int16 or uint16."""
    if slope == 0 or not np.isfinite(slope) or not np.isfinite(intercept):
        raise ValueError(f"rescale slope must be finite and non-zero (got slope={slope}, intercept={intercept})")
    values = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("array has NaN or infinite values, which DICOM integer pixels cannot store")
    stored = np.rint((values - intercept) / slope)
    low, high = (float(stored.min()), float(stored.max())) if stored.size else (0.0, 0.0)
    for dtype in (np.int16, np.uint16):
        info = np.iinfo(dtype)
        if low >= info.min and high <= info.max:
            return stored.astype(dtype)
    raise ValueError(
        f"values map to stored range [{low:g}, {high:g}] with slope={slope} intercept={intercept}, "
        "which fits neither int16 nor uint16: choose another rescale slope/intercept"
    )


def write_dicom_series(
    folder: str | os.PathLike,
    array: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] | np.ndarray = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    modality: str = "CT",
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    series_description: str = "napari-vfmseg synthetic series",
    patient_name: str = "VFMSEG^PHANTOM",
    series_uid: str | None = None,
    file_pattern: str = "slice_{:04d}.dcm",
    shuffle_names: bool = False,
    seed: int = 0,
    study_uid: str | None = None,
) -> str:
    """Write a 3D volume as a DICOM series, one file per plane, and return its SeriesInstanceUID.

    Args:
        folder: output folder (created if missing). Existing files with the same names are replaced.
        array: (plane, row, col) real values (HU for CT). Stored pixels are
            ``round((array - rescale_intercept) / rescale_slope)`` as int16 (or uint16 if needed),
            with RescaleIntercept/RescaleSlope tags so readers recover ``array``.
        spacing: (plane, row, col) voxel size in mm; ``spacing[0]`` is the distance between slices.
        origin: patient-space position (LPS, mm) of voxel (0, 0, 0) in array order (z, y, x).
        direction: 3x3 (or row-major 9 numbers) direction matrix in array order, i.e. ITK's
            direction with rows and columns reversed. Must be orthonormal and right-handed, as
            DICOM derives the slice normal from the cross product of the in-plane axes.
        series_uid, study_uid: UIDs to use; by default derived deterministically from ``seed``,
            the description and the data, so reruns produce identical files.
        file_pattern: ``str.format`` pattern for file names, given one integer.
        shuffle_names: if True, file numbers are a random permutation (from ``seed``) of slice
            order, for testing that readers sort by position. InstanceNumber stays in slice order.

    Returns:
        The SeriesInstanceUID written into every file.
    """
    volume = np.asarray(array)
    if volume.ndim != 3 or 0 in volume.shape:
        raise ValueError(f"array must be a non-empty (plane, row, col) volume, got shape {volume.shape}")
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    origin_arr = np.asarray(origin, dtype=np.float64)
    if spacing_arr.shape != (3,) or np.any(spacing_arr <= 0):
        raise ValueError(f"spacing must be 3 positive numbers (plane, row, col), got {spacing!r}")
    if origin_arr.shape != (3,):
        raise ValueError(f"origin must be 3 numbers (z, y, x), got {origin!r}")
    direction_arr = _as_direction3(direction)
    if not np.allclose(direction_arr @ direction_arr.T, np.eye(3), atol=1e-6):
        raise ValueError("direction must be orthonormal for DICOM")
    if np.linalg.det(direction_arr) < 0:
        raise ValueError(
            "direction is left-handed: DICOM's slice normal is the cross product of the in-plane axes; "
            "flip the plane axis of the array (and move the origin) to store this volume"
        )
    stored = _stored_pixels(volume, float(rescale_intercept), float(rescale_slope))

    # GDCM stores (value - intercept) / slope itself, so it is given the real values (exactly
    # representable: they come from the integers in ``stored``) and the stored integer layout.
    real_values = stored.astype(np.float64) * float(rescale_slope) + float(rescale_intercept)
    image = sitk.GetImageFromArray(real_values)  # ITK index (x, y, z) = array (col, row, plane)
    image.SetSpacing(tuple(float(v) for v in spacing_arr[::-1]))
    image.SetOrigin(tuple(float(v) for v in origin_arr[::-1]))
    direction_itk = direction_arr[::-1, ::-1]
    image.SetDirection(tuple(float(v) for v in direction_itk.ravel()))

    data_digest = hashlib.sha256(stored.tobytes()).hexdigest()
    study = study_uid or _uid_from("study", patient_name, seed)
    series = series_uid or _uid_from("series", seed, series_description, modality, data_digest, spacing_arr.tolist())
    frame_of_reference = _uid_from("frame", study, seed)
    orientation = "\\".join(f"{v:.10g}" for v in (*direction_itk[:, 0], *direction_itk[:, 1]))
    shared_tags = {
        "0008|0008": "DERIVED\\SECONDARY",
        "0008|0016": _SOP_CLASS_BY_MODALITY.get(modality.upper(), _SOP_SECONDARY_CAPTURE),
        "0008|0020": "20000101",
        "0008|0030": "120000",
        "0008|0021": "20000101",
        "0008|0031": "120000",
        "0008|0070": "napari-vfmseg",
        _TAG_MODALITY: modality,
        _TAG_SERIES_DESCRIPTION: series_description,
        _TAG_PATIENT_NAME: patient_name,
        "0010|0020": _uid_from("patient", patient_name)[-12:],
        _TAG_STUDY_UID: study,
        _TAG_SERIES_UID: series,
        "0020|0052": frame_of_reference,
        "0020|0011": "1",
        "0020|0037": orientation,
        "0018|0050": f"{spacing_arr[0]:.10g}",
        "0018|0088": f"{spacing_arr[0]:.10g}",
        "0028|1052": f"{float(rescale_intercept):.10g}",
        "0028|1053": f"{float(rescale_slope):.10g}",
        "0028|1054": "HU" if modality.upper() == "CT" else "US",
        "0028|0100": "16",  # bits allocated
        "0028|0101": "16",  # bits stored
        "0028|0102": "15",  # high bit
        "0028|0103": "1" if stored.dtype == np.int16 else "0",  # pixel representation: signed?
    }

    n_planes = volume.shape[0]
    numbers = np.arange(n_planes)
    if shuffle_names:
        numbers = np.random.default_rng(seed).permutation(n_planes)
    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for plane in range(n_planes):
        slice_image = image[:, :, plane : plane + 1]  # 3D, one plane thick: keeps origin and direction
        position = image.TransformIndexToPhysicalPoint((0, 0, plane))
        for tag, value in shared_tags.items():
            slice_image.SetMetaData(tag, value)
        slice_image.SetMetaData("0020|0013", str(plane + 1))
        slice_image.SetMetaData("0008|0018", _uid_from("instance", series, plane))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        slice_image.SetMetaData("0020|1041", f"{float(np.dot(position, direction_itk[:, 2])):.10g}")
        writer.SetFileName(str(out_dir / file_pattern.format(int(numbers[plane]))))
        writer.Execute(slice_image)
    return series

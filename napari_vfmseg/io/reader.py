"""Read medical images and photos into a :class:`Volume`, with geometry, via SimpleITK.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM series
folder, a single DICOM file, and 2D PNG/TIFF/JPEG (RGB kept as RGB, grey as 2D). The array comes
back in napari order, (plane, row, col) or (row, col) or (row, col, 3); see :mod:`.volume`.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from napari_vfmseg.io import dicom_headers, dicom_series, file_checks
from napari_vfmseg.io.errors import VolumeReadError
from napari_vfmseg.io.formats import FORMAT_BY_SUFFIX as _FORMAT_BY_EXTENSION
from napari_vfmseg.io.formats import READ_SUFFIXES, path_extension
from napari_vfmseg.io.volume import Volume

__all__ = [
    "read_volume",
    "is_supported_path",
    "SUPPORTED_READ_EXTENSIONS",
    "VolumeNotFoundError",
    "path_extension",
]

logger = logging.getLogger(__name__)

#: File extensions :func:`read_volume` accepts (a folder holding a DICOM series is accepted too).
SUPPORTED_READ_EXTENSIONS: tuple[str, ...] = READ_SUFFIXES


class VolumeNotFoundError(VolumeReadError, FileNotFoundError):
    """The path given to :func:`read_volume` does not exist."""


def is_supported_path(path: str | os.PathLike) -> bool:
    """Cheap test for the napari reader: a supported file, a DICOM file, or a folder with DICOM files.

    Never raises; reads at most a few bytes of a few files.
    """
    try:
        p = Path(path)
        if p.is_dir():
            return dicom_headers.folder_has_dicom(p)
        if path_extension(p) in _FORMAT_BY_EXTENSION:
            return True
        return dicom_headers.looks_like_dicom_file(p)
    except (OSError, ValueError):
        return False


def read_volume(path: str | os.PathLike, series_uid: Optional[str] = None, *, series: Optional[str] = None) -> Volume:
    """Read an image file or a DICOM series folder into a :class:`Volume`.

    Args:
        path: a file with one of :data:`SUPPORTED_READ_EXTENSIONS`, a DICOM file, or a folder
            holding a DICOM series.
        series, series_uid: for a DICOM folder with several series, the SeriesInstanceUID to read
            (two spellings of one argument). By default the series with the most slices is read,
            with a warning naming the others.

    Returns:
        A Volume whose array is (plane, row, col), (row, col), or (row, col, 3) uint8 RGB, with
        spacing/origin/direction in the same array order. DICOM values have each slice's
        RescaleSlope/Intercept applied (CT in HU, int16 when the values are integers that fit,
        float32 otherwise). A DICOM series is checked against its slices' own positions (see
        :mod:`.dicom_series`): a missing slice or uneven spacing is read onto a regular grid at the
        true positions with a UserWarning. An oblique direction is kept, with a UserWarning saying
        that the affine is used.

    Raises:
        VolumeNotFoundError: ``path`` does not exist (a FileNotFoundError and a VolumeReadError).
        VolumeReadError: unsupported extension, truncated or corrupt file, invalid spacing, a
            detached data file outside the header's folder, empty folder or one without DICOM,
            a DICOM file without pixel data, a DICOM series that is sheared, mixes modalities, has
            two images at one position or inconsistent slices, zero-size axes, 4D+ data that is not RGB.
    """
    if series is not None and series_uid is not None and series != series_uid:
        raise ValueError(f"series={series!r} and series_uid={series_uid!r} disagree; give one of them")
    chosen_uid = series if series is not None else series_uid
    p = Path(path)
    if not p.exists():
        raise VolumeNotFoundError(f"{p}: no such file or folder")
    if p.is_dir():
        volume = _read_dicom_folder(p, chosen_uid)
    elif chosen_uid is not None:
        raise VolumeReadError(f"{p}: a series UID picks one series of a DICOM folder; this is a file")
    else:
        volume = _read_file(p)
    _report_orientation(volume)
    return volume


# --------------------------------------------------------------------------------------------- files


def _read_file(path: Path) -> Volume:
    ext = path_extension(path)
    if ext not in _FORMAT_BY_EXTENSION and not dicom_headers.looks_like_dicom_file(path):
        raise VolumeReadError(
            f"{path}: unsupported file type {ext or '(no extension)'!r}; supported are "
            f"{', '.join(SUPPORTED_READ_EXTENSIONS)} and folders holding a DICOM series"
        )
    if path.stat().st_size == 0:
        raise VolumeReadError(f"{path}: file is empty")
    fmt = _FORMAT_BY_EXTENSION.get(ext, "DICOM")
    if fmt == "NIfTI":
        file_checks.check_nifti(path, compressed=ext == ".nii.gz")
    elif ext in (".nhdr", ".mhd"):
        file_checks.check_detached_data_file(path, fmt)
    elif fmt == "DICOM":
        _check_dicom_file(path)

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if fmt == "DICOM":
        reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
        _check_sizes(reader.GetSize(), path)
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(
            f"{path}: cannot read this {fmt} file; it is truncated, corrupt or not a valid {fmt} file ({_reason(exc)})"
        ) from exc

    modality = None
    metadata: dict[str, object] = {"format": fmt}
    if fmt == "DICOM":
        tags = {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys()}
        modality = tags.get("0008|0060") or None
        metadata.update(_dicom_metadata(tags))
        image = _tidy_rescaled_dtype(image)
    try:
        return Volume.from_sitk(image, path=str(path), modality=modality, metadata=metadata)
    except ValueError as exc:
        if isinstance(exc, VolumeReadError):
            raise
        raise VolumeReadError(f"{path}: invalid geometry in this {fmt} file ({exc})") from exc


def _check_dicom_file(path: Path) -> None:
    """A single DICOM file must be an image: not a segmentation, not a header without pixels."""
    header = dicom_headers.read_header(path)
    if header.is_segmentation:
        raise VolumeReadError(
            f"{path}: this is a DICOM Segmentation (labels, not a scan); open it with the napari reader or "
            "napari_vfmseg.io.read_segmentation, next to the series it was drawn on"
        )
    if not header.has_pixels:
        raise VolumeReadError(
            f"{path}: DICOM file has no pixel data (SOP class {header.sop_class_uid or 'unknown'}: a report, "
            "presentation state or index, not an image)"
        )


def _check_sizes(size: tuple[int, ...], where: Path) -> None:
    if 0 in size:
        raise VolumeReadError(f"{where}: image has a zero-size dimension (size {size} in x, y, z order)")


def _reason(exc: BaseException) -> str:
    """The useful part of a SimpleITK/ITK exception text, on one line."""
    lines = []
    for raw in str(exc).splitlines():
        line = raw.strip()
        if not line or line.startswith("Exception thrown in SimpleITK") or line.startswith("Reason:"):
            continue
        line = re.sub(r"^(ITK ERROR: \w+\(0x[0-9a-fA-F]+\):\s*|sitk::ERROR:\s*)", "", line)
        if line:
            lines.append(line)
    if not lines:
        return type(exc).__name__
    return lines[-1] if len(lines) > 2 else "; ".join(lines)


# --------------------------------------------------------------------------------------------- DICOM


def _read_dicom_folder(folder: Path, series_uid: Optional[str]) -> Volume:
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    if not entries:
        raise VolumeReadError(f"{folder}: folder is empty; expected a DICOM series")
    if not dicom_headers.folder_has_dicom(folder, max_files=10_000):
        raise VolumeReadError(
            f"{folder}: folder holds no DICOM files (.dcm or 'DICM' header); to open another format, "
            "choose the file itself"
        )
    all_series = dicom_headers.list_dicom_series(folder)
    chosen = dicom_headers.choose_series(all_series, series_uid, str(folder))
    if len(all_series) > 1:
        others = ", ".join(s.label() for s in all_series if s is not chosen)
        message = (
            f"{folder}: {len(all_series)} DICOM series found; reading {chosen.label()}; others: {others}"
        )
        if series_uid is None:
            warnings.warn(message + ". Pass series= (CLI: --series UID) to choose another.", UserWarning,
                          stacklevel=3)
        else:
            logger.info(message)
    if chosen.n_slices == 1 and chosen.headers[0].n_frames > 1:  # one enhanced multi-frame file
        return _read_file(Path(chosen.files[0]))
    array, layout = dicom_series.read_series(chosen, str(folder))
    metadata = dicom_series.layout_metadata(chosen, layout, len(all_series))
    try:
        return Volume(array=array, spacing=layout.spacing, origin=layout.origin, direction=layout.direction,
                      path=str(folder), modality=chosen.modality, metadata=metadata)
    except ValueError as exc:
        raise VolumeReadError(f"{folder}: DICOM series {chosen.uid} has an invalid geometry ({exc})") from exc


def _dicom_metadata(tags: dict[str, str]) -> dict[str, object]:
    return {
        "dicom_series_uid": tags.get("0020|000e", ""),
        "dicom_series_description": tags.get("0008|103e", ""),
    }


def _tidy_rescaled_dtype(image: sitk.Image) -> sitk.Image:
    """GDCM widens rescaled data (int16 CT → int32, non-integer slope → float64): narrow it back.

    Integer data that fits int16 becomes int16; float data becomes float32.
    """
    pixel = image.GetPixelID()
    if pixel in (sitk.sitkFloat64,):
        return sitk.Cast(image, sitk.sitkFloat32)
    if pixel in (sitk.sitkInt32, sitk.sitkInt64, sitk.sitkUInt32, sitk.sitkUInt64):
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if stats.GetMinimum() >= np.iinfo(np.int16).min and stats.GetMaximum() <= np.iinfo(np.int16).max:
            return sitk.Cast(image, sitk.sitkInt16)
    return image


# --------------------------------------------------------------------------------------------- geometry


def _report_orientation(volume: Volume) -> None:
    if volume.is_oblique:
        angles = np.degrees(np.arccos(np.clip(np.abs(np.diag(volume.direction)), 0.0, 1.0)))
        warnings.warn(
            f"{volume.path}: the volume is oblique (its axes are tilted by up to {angles.max():.1f} degrees "
            "from the patient axes); its full direction is kept and the affine (Volume.affine) is used "
            "to place it",
            UserWarning,
            stacklevel=3,
        )
    elif not volume.has_identity_direction:
        logger.info("%s: axes are flipped or permuted relative to the patient axes; use Volume.affine", volume.path)

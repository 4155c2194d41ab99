"""Read medical images and photos into a :class:`Volume`, with geometry, via SimpleITK.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM series
folder, a single DICOM file, and 2D PNG/TIFF/JPEG (RGB kept as RGB, grey as 2D). The array comes
back in napari order, (plane, row, col) or (row, col) or (row, col, 3); see :mod:`.volume`.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_vfmseg.io import dicom
from napari_vfmseg.io.errors import VolumeReadError
from napari_vfmseg.io.volume import Volume

__all__ = [
    "read_volume",
    "is_supported_path",
    "SUPPORTED_READ_EXTENSIONS",
    "VolumeNotFoundError",
    "path_extension",
]

logger = logging.getLogger(__name__)

_FORMAT_BY_EXTENSION = {
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".dcm": "DICOM",
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
}

#: File extensions :func:`read_volume` accepts (a folder holding a DICOM series is accepted too).
SUPPORTED_READ_EXTENSIONS: tuple[str, ...] = tuple(_FORMAT_BY_EXTENSION)


class VolumeNotFoundError(VolumeReadError, FileNotFoundError):
    """The path given to :func:`read_volume` does not exist."""


def path_extension(path: str | os.PathLike) -> str:
    """Lower-case extension, with the compound '.nii.gz' kept whole ('' if none)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def is_supported_path(path: str | os.PathLike) -> bool:
    """Cheap test for the napari reader: a supported file, a DICOM file, or a folder with DICOM files.

    Never raises; reads at most a few bytes of a few files.
    """
    try:
        p = Path(path)
        if p.is_dir():
            return dicom.folder_has_dicom(p)
        if path_extension(p) in _FORMAT_BY_EXTENSION:
            return True
        return dicom.looks_like_dicom_file(p)
    except (OSError, ValueError):
        return False


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read an image file or a DICOM series folder into a :class:`Volume`.

    Args:
        path: a file with one of :data:`SUPPORTED_READ_EXTENSIONS`, a DICOM file, or a folder
            holding a DICOM series.
        series_uid: for a DICOM folder with several series, the SeriesInstanceUID to read. By
            default the series with the most slices is read, with a warning naming it.

    Returns:
        A Volume whose array is (plane, row, col), (row, col), or (row, col, 3) uint8 RGB, with
        spacing/origin/direction in the same array order. DICOM values have RescaleSlope/Intercept
        applied (CT in HU, int16 when the values are integers that fit, float32 otherwise).
        An oblique direction is kept, with a UserWarning saying that the affine is used.

    Raises:
        VolumeNotFoundError: ``path`` does not exist (a FileNotFoundError and a VolumeReadError).
        VolumeReadError: unsupported extension, truncated or corrupt file, empty folder or one
            without DICOM, inconsistent DICOM slices, zero-size axes, 4D+ data that is not RGB.
    """
    p = Path(path)
    if not p.exists():
        raise VolumeNotFoundError(f"{p}: no such file or folder")
    if p.is_dir():
        volume = _read_dicom_folder(p, series_uid)
    else:
        volume = _read_file(p)
    _report_orientation(volume)
    return volume


# --------------------------------------------------------------------------------------------- files


def _read_file(path: Path) -> Volume:
    ext = path_extension(path)
    if ext not in _FORMAT_BY_EXTENSION and not dicom.looks_like_dicom_file(path):
        raise VolumeReadError(
            f"{path}: unsupported file type {ext or '(no extension)'!r}; supported are "
            f"{', '.join(SUPPORTED_READ_EXTENSIONS)} and folders holding a DICOM series"
        )
    if path.stat().st_size == 0:
        raise VolumeReadError(f"{path}: file is empty")
    fmt = _FORMAT_BY_EXTENSION.get(ext, "DICOM")
    if fmt == "NIfTI":
        _check_nifti_complete(path, compressed=ext == ".nii.gz")

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
    return Volume.from_sitk(image, path=str(path), modality=modality, metadata=metadata)


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


# --------------------------------------------------------------------------------------------- NIfTI checks


def _nifti_needed_bytes(header: bytes, path: Path) -> int:
    """vox_offset + voxel bytes that a NIfTI-1/2 header announces."""
    if len(header) < 348:
        raise VolumeReadError(f"{path}: NIfTI file is shorter than its header ({len(header)} bytes)")
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack_from(endian + "i", header, 0)[0]
        if sizeof_hdr == 348:
            dims = struct.unpack_from(endian + "8h", header, 40)
            bitpix = struct.unpack_from(endian + "h", header, 72)[0]
            vox_offset = int(struct.unpack_from(endian + "f", header, 108)[0])
            break
        if sizeof_hdr == 540:
            if len(header) < 540:
                raise VolumeReadError(f"{path}: NIfTI-2 file is shorter than its header ({len(header)} bytes)")
            bitpix = struct.unpack_from(endian + "h", header, 14)[0]
            dims = struct.unpack_from(endian + "8q", header, 16)
            vox_offset = struct.unpack_from(endian + "q", header, 168)[0]
            break
    else:
        raise VolumeReadError(f"{path}: not a NIfTI file (header size field is neither 348 nor 540)")
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise VolumeReadError(f"{path}: NIfTI header has an invalid number of dimensions ({ndim})")
    shape = dims[1 : ndim + 1]
    if any(d <= 0 for d in shape):
        raise VolumeReadError(f"{path}: image has a zero-size dimension (NIfTI dims {tuple(shape)})")
    if bitpix <= 0 or bitpix % 8:
        raise VolumeReadError(f"{path}: NIfTI header has an invalid bitpix ({bitpix})")
    return max(vox_offset, sizeof_hdr) + int(np.prod(shape, dtype=np.int64)) * bitpix // 8


def _check_nifti_complete(path: Path, compressed: bool) -> None:
    """Raise if the file holds fewer bytes than its header needs (SimpleITK would pad with zeros).

    For .nii.gz the gzip trailer's ISIZE (uncompressed size mod 2**32) is compared with the header
    first; only when they disagree is the stream decompressed to count the bytes. A truncated
    stream ends in compressed data, so its last 4 bytes match by chance with probability 2**-32;
    a stream damaged in the middle fails SimpleITK's own CRC check.
    """
    with open(path, "rb") as handle:
        is_gzip = handle.read(2) == b"\x1f\x8b"
    if not (compressed and is_gzip):
        with open(path, "rb") as handle:
            header = handle.read(540)
        needed = _nifti_needed_bytes(header, path)
        present = path.stat().st_size
    else:
        needed = _nifti_needed_bytes(_gunzip_head(path, 540), path)
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            trailer_size = struct.unpack("<I", handle.read(4))[0]
        if trailer_size == needed % 2**32:
            return
        present = _gunzip_count(path)
    if present < needed:
        raise VolumeReadError(
            f"{path}: NIfTI file is truncated: its header announces {needed} bytes (header and voxels), "
            f"the data holds {present} ({100.0 * present / needed:.1f}%)"
        )


def _gunzip_head(path: Path, n_bytes: int) -> bytes:
    """The first ``n_bytes`` decompressed bytes (fewer if the stream is shorter)."""
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read(n_bytes)
    except EOFError as exc:
        raise VolumeReadError(f"{path}: compressed file is truncated (the gzip stream ends early)") from exc
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise VolumeReadError(f"{path}: compressed file is corrupt ({exc})") from exc


def _gunzip_count(path: Path, chunk: int = 1 << 22) -> int:
    """Total decompressed size of a gzip file; raise if the stream is broken or ends early."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while block := stream.read(chunk):
                total += len(block)
    except EOFError as exc:
        raise VolumeReadError(f"{path}: compressed file is truncated (the gzip stream ends early)") from exc
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise VolumeReadError(f"{path}: compressed file is corrupt ({exc})") from exc
    return total


# --------------------------------------------------------------------------------------------- DICOM


def _read_dicom_folder(folder: Path, series_uid: str | None) -> Volume:
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    if not entries:
        raise VolumeReadError(f"{folder}: folder is empty; expected a DICOM series")
    if not dicom.folder_has_dicom(folder, max_files=10_000):
        raise VolumeReadError(
            f"{folder}: folder holds no DICOM files (.dcm or 'DICM' header); to open another format, "
            "choose the file itself"
        )
    all_series = dicom.list_dicom_series(folder)
    chosen = dicom.choose_series(all_series, series_uid, str(folder))
    if len(all_series) > 1:
        others = ", ".join(f"{s.uid} ({s.n_slices} slices, {s.description!r})" for s in all_series if s is not chosen)
        message = (
            f"{folder}: {len(all_series)} DICOM series found; reading {chosen.uid} "
            f"({chosen.n_slices} slices, {chosen.description!r}); others: {others}"
        )
        if series_uid is None:
            warnings.warn(message + ". Pass series_uid= to choose another.", UserWarning, stacklevel=3)
        else:
            logger.info(message)
    image = dicom.read_dicom_series(chosen, str(folder))
    _check_sizes(image.GetSize(), folder)
    image = _tidy_rescaled_dtype(image)
    metadata: dict[str, object] = {
        "format": "DICOM",
        "dicom_series_uid": chosen.uid,
        "dicom_series_description": chosen.description,
        "dicom_n_slices": chosen.n_slices,
        "dicom_n_series_in_folder": len(all_series),
        "dicom_files": list(chosen.files),
    }
    return Volume.from_sitk(image, path=str(folder), modality=chosen.modality, metadata=metadata)


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

"""The one list of file suffixes the project reads and writes, and the helpers that use it.

Everything that asks "can vfmseg open / write this name?" or "what is this file called without
its extension?" imports from here: the reader, the label writer, the napari reader and writer,
the layer names, ``vfmseg segment``'s default output name and the training data finder. Pure
standard library, so importing it loads no SimpleITK.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "FORMAT_BY_SUFFIX",
    "READ_SUFFIXES",
    "VOLUME_SUFFIXES",
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "DICOM_SUFFIXES",
    "path_extension",
    "strip_suffix",
]

#: Suffix (lower case, compound ``.nii.gz`` kept whole) → the format's name in messages.
FORMAT_BY_SUFFIX: dict[str, str] = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
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
    ".bmp": "BMP",
}

#: Files :func:`napari_vfmseg.io.read_volume` opens (a folder holding a DICOM series is accepted too).
READ_SUFFIXES: tuple[str, ...] = tuple(FORMAT_BY_SUFFIX)

#: 3D medical volume files (not photos, not DICOM).
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: Image files a training folder may hold (volumes and 2D photos; DICOM comes as folders).
IMAGE_SUFFIXES: tuple[str, ...] = tuple(s for s in READ_SUFFIXES if s != ".dcm")

#: Label files :func:`napari_vfmseg.io.write_labels` writes with the source geometry.
LABEL_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

#: Suffixes of single DICOM files (a DICOM-SEG export is written as ``.dcm``).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm",)


def path_extension(path: str | os.PathLike) -> str:
    """Lower-case extension, with the compound '.nii.gz' kept whole ('' if none)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def strip_suffix(path: str | os.PathLike) -> str:
    """The file or folder name without a known suffix ('ct.nii.gz' → 'ct'; unknown suffixes stay)."""
    name = Path(str(path).rstrip("/\\")).name
    ext = path_extension(name)
    if ext in FORMAT_BY_SUFFIX:
        return name[: -len(ext)]
    return name

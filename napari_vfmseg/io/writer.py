"""Write a label volume with the exact geometry of its source image, atomically.

Labels are (plane, row, col) or (row, col) non-negative integers, in napari order like
:attr:`Volume.array`. They are stored as the smallest unsigned type that holds them
(uint8, uint16, uint32). Files are written into a temporary folder next to the destination and
moved into place with ``os.replace``, so a failed export never leaves a half-written file or
damages an earlier one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_vfmseg.io.errors import LabelWriteError
from napari_vfmseg.io.formats import DICOM_SUFFIXES, LABEL_SUFFIXES, path_extension
from napari_vfmseg.io.volume import Volume

__all__ = ["write_labels", "label_dtype", "checked_labels", "SUPPORTED_LABEL_EXTENSIONS"]

#: File extensions :func:`write_labels` can write.
SUPPORTED_LABEL_EXTENSIONS: tuple[str, ...] = LABEL_SUFFIXES

# NIfTI keeps geometry in float32; the others as decimal text. Anything beyond this is a loss.
_GEOMETRY_RTOL = 1e-5
_GEOMETRY_ATOL = 1e-4


def label_dtype(labels: np.ndarray) -> np.dtype:
    """Smallest unsigned integer dtype (uint8, uint16, uint32) holding every value of ``labels``."""
    top = int(labels.max()) if labels.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label value {top} does not fit in uint32")


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    like: Volume | None = None,
    *,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | np.ndarray | None = None,
) -> str:
    """Write ``labels`` to ``path`` with the geometry of ``like`` (or the explicit geometry given).

    Args:
        path: destination ending in one of :data:`SUPPORTED_LABEL_EXTENSIONS`, or ``.dcm`` when
            ``like`` was read from a DICOM series (a DICOM-SEG, see :func:`.dicom_seg.write_dicom_seg`).
            An existing file is replaced only once the new one is completely written.
        labels: (plane, row, col) or (row, col) array of non-negative integers (bool allowed).
            Its shape must equal ``like.spatial_shape``.
        like: the image the labels belong to; its spacing, origin and direction are copied exactly.
        spacing, origin, direction: geometry in array order (see :mod:`.volume`) when ``like`` is
            None; defaults are 1 mm, the zero origin and the identity direction.

    Returns:
        The written path as a string (for .mhd, the header; its .zraw data file sits beside it).

    Raises:
        LabelWriteError: unsupported extension, shape mismatch, negative or non-integer labels,
            geometry given twice, a format that cannot hold the geometry, or an unwritable path.
    """
    out = Path(path)
    ext = path_extension(out)
    if ext in DICOM_SUFFIXES and like is not None and like.metadata.get("format") == "DICOM":
        from napari_vfmseg.io.dicom_seg import write_dicom_seg

        return write_dicom_seg(out, labels, like)
    if ext not in SUPPORTED_LABEL_EXTENSIONS:
        raise LabelWriteError(
            f"{out}: cannot write labels as {ext or '(no extension)'!r}; supported are "
            f"{', '.join(SUPPORTED_LABEL_EXTENSIONS)}, and .dcm (DICOM-SEG) for a scan read from a DICOM series"
        )
    values = checked_labels(np.asarray(labels), out)
    geometry = _geometry(values, like, spacing, origin, direction, out)

    image = sitk.GetImageFromArray(values.astype(label_dtype(values), copy=False))
    image.SetSpacing(tuple(float(v) for v in geometry.spacing[::-1]))
    image.SetOrigin(tuple(float(v) for v in geometry.origin[::-1]))
    image.SetDirection(tuple(float(v) for v in geometry.direction[::-1, ::-1].ravel()))
    _write_atomically(image, out)
    return str(out)


def checked_labels(values: np.ndarray, out: Path) -> np.ndarray:
    """``values`` as non-negative integers (bool → uint8), or a LabelWriteError naming ``out``."""
    if values.dtype == bool:
        return values.astype(np.uint8)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.rint(values)):
            raise LabelWriteError(f"{out}: labels must be whole numbers, got non-integer {values.dtype} values")
        values = values.astype(np.int64)
    if values.dtype.kind not in "iu":
        raise LabelWriteError(f"{out}: labels must be an integer or boolean array, got dtype {values.dtype}")
    if values.ndim not in (2, 3) or 0 in values.shape:
        raise LabelWriteError(f"{out}: labels must be a non-empty 2D or 3D array, got shape {values.shape}")
    if values.size and int(values.min()) < 0:
        raise LabelWriteError(f"{out}: labels must be non-negative, found {int(values.min())}")
    if values.size and int(values.max()) > np.iinfo(np.uint32).max:
        raise LabelWriteError(f"{out}: label value {int(values.max())} does not fit in uint32")
    return values


def _geometry(
    values: np.ndarray,
    like: Volume | None,
    spacing: Sequence[float] | None,
    origin: Sequence[float] | None,
    direction: Sequence[float] | np.ndarray | None,
    out: Path,
) -> Volume:
    """A label Volume carrying the geometry to write (validated against the labels' shape)."""
    if like is not None:
        if spacing is not None or origin is not None or direction is not None:
            raise LabelWriteError(f"{out}: give either like= or spacing/origin/direction, not both")
        if values.shape != like.spatial_shape:
            raise LabelWriteError(
                f"{out}: labels shape {values.shape} does not match the image's spatial shape "
                f"{like.spatial_shape} (from {like.path or 'the source volume'})"
            )
        spacing, origin, direction = like.spacing, like.origin, like.direction
    n = values.ndim
    try:
        return Volume(
            array=values,
            spacing=tuple(spacing) if spacing is not None else (1.0,) * n,
            origin=tuple(origin) if origin is not None else (0.0,) * n,
            direction=direction,
        )
    except ValueError as exc:
        raise LabelWriteError(f"{out}: invalid geometry for labels of shape {values.shape}: {exc}") from exc


def _write_atomically(image: sitk.Image, out: Path) -> None:
    """Write into a private folder beside ``out``, check the geometry, then os.replace into place."""
    folder = out.parent
    if not folder.is_dir():
        raise LabelWriteError(f"{out}: cannot write labels, folder {folder} does not exist")
    if out.is_dir():
        raise LabelWriteError(f"{out}: cannot write labels, a folder with that name exists")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder))
    except OSError as exc:
        raise LabelWriteError(f"{out}: cannot write labels into folder {folder} ({exc.strerror or exc})") from exc
    try:
        staged = staging / out.name
        try:
            sitk.WriteImage(image, str(staged), useCompression=True)
        except RuntimeError as exc:
            raise LabelWriteError(f"{out}: writing labels failed ({_first_error_line(exc)})") from exc
        _verify_geometry(image, staged, out)
        # data files (e.g. the .zraw of a .mhd) first, the file the user named last
        produced = sorted(staging.iterdir(), key=lambda p: p.name == out.name)
        for item in produced:
            os.replace(item, folder / item.name)
    except OSError as exc:
        raise LabelWriteError(f"{out}: cannot write labels ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _verify_geometry(image: sitk.Image, staged: Path, out: Path) -> None:
    """Re-read the header just written; refuse a format that altered spacing, origin or direction."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(staged))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise LabelWriteError(f"{out}: the written file cannot be read back ({_first_error_line(exc)})") from exc
    checks = (
        ("spacing", image.GetSpacing(), reader.GetSpacing()),
        ("origin", image.GetOrigin(), reader.GetOrigin()),
        ("direction", image.GetDirection(), reader.GetDirection()),
    )
    for name, wanted, got in checks:
        if len(wanted) != len(got) or not np.allclose(got, wanted, rtol=_GEOMETRY_RTOL, atol=_GEOMETRY_ATOL):
            raise LabelWriteError(
                f"{out}: this format cannot store the {name} exactly (wanted {tuple(wanted)}, "
                f"stored {tuple(got)}); choose another of {', '.join(SUPPORTED_LABEL_EXTENSIONS)}"
            )


def _first_error_line(exc: BaseException) -> str:
    for line in reversed(str(exc).splitlines()):
        line = line.strip()
        if line:
            return line
    return type(exc).__name__

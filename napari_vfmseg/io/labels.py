"""Read a label file for a scan: whole non-negative numbers, the scan's shape and geometry.

Used wherever labels come from disk (fine-tuning and evaluation data, the napari reader of a
DICOM-SEG). A label map in the wrong place is worse than none, so a file of another shape or
geometry is refused, not resampled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from napari_vfmseg.io.errors import VolumeReadError
from napari_vfmseg.io.volume import Volume

__all__ = ["read_labels", "GEOMETRY_ATOL_MM", "DIRECTION_ATOL"]

#: Spacing and origin of labels and scan may differ by this much (mm): NIfTI stores them as float32.
GEOMETRY_ATOL_MM = 1e-3
#: Direction cosines may differ by this much.
DIRECTION_ATOL = 1e-4


def read_labels(path: Union[str, os.PathLike], like: Optional[Volume] = None) -> Volume:
    """Read ``path`` (any format :func:`read_volume` reads, or a DICOM-SEG) as a label Volume.

    Args:
        path: the label file.
        like: the scan the labels belong to; its spatial shape, spacing, origin and direction must
            match (within :data:`GEOMETRY_ATOL_MM` mm and :data:`DIRECTION_ATOL`).

    Returns:
        A Volume whose array holds the labels as the smallest unsigned integer type.

    Raises:
        VolumeReadError: unreadable file, an RGB image, negative, non-integer or non-finite values,
            another shape or another geometry than ``like``.
    """
    from napari_vfmseg.io.dicom_seg import is_dicom_seg, read_segmentation
    from napari_vfmseg.io.reader import read_volume
    from napari_vfmseg.io.writer import label_dtype

    p = Path(path)
    if is_dicom_seg(p):
        labels, _ = read_segmentation(p, source=like if like is not None and like.metadata.get("format") == "DICOM"
                                      else None)
    else:
        labels = read_volume(p)
    if labels.is_rgb:
        raise VolumeReadError(f"{p}: a colour image is not a label map")
    values = labels.array
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise VolumeReadError(f"{p}: label map holds NaN or infinite values")
        fractional = values != np.rint(values)
        if fractional.any():
            example = float(values[fractional].flat[0])
            raise VolumeReadError(f"{p}: label map holds non-integer values (e.g. {example:g}); labels are whole "
                                  "numbers, 0 for background")
    elif values.dtype.kind not in "iub":
        raise VolumeReadError(f"{p}: label map has dtype {values.dtype}; labels are whole numbers")
    if values.size and values.min() < 0:
        raise VolumeReadError(f"{p}: label map holds negative values (down to {values.min():g}); labels are "
                              "0 for background and positive numbers for objects")
    if like is not None:
        _check_same_grid(labels, like, p)
    integers = values.astype(np.int64)
    labels.array = integers.astype(label_dtype(integers))
    return labels


def _check_same_grid(labels: Volume, like: Volume, path: Path) -> None:
    source = like.path or "the scan"
    if labels.spatial_shape != like.spatial_shape:
        raise VolumeReadError(f"{path}: label map of shape {labels.spatial_shape} does not match the scan's shape "
                              f"{like.spatial_shape} ({source})")
    checks = (
        ("spacing", labels.spacing, like.spacing, GEOMETRY_ATOL_MM),
        ("origin", labels.origin, like.origin, GEOMETRY_ATOL_MM),
        ("direction", labels.direction, like.direction, DIRECTION_ATOL),
    )
    for name, got, wanted, atol in checks:
        if not np.allclose(got, wanted, rtol=0, atol=atol):
            raise VolumeReadError(
                f"{path}: label map's {name} {np.round(np.asarray(got), 5).tolist()} differs from the scan's "
                f"{np.round(np.asarray(wanted), 5).tolist()} ({source}); it would be placed elsewhere in the patient"
            )

"""Small builders shared by the io tests: images written with SimpleITK directly, so the code under
test is compared against an independent reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

# A tilted direction (ITK (x, y, z) order, row-major), made orthonormal and right-handed below.
_TILT = (0.9, -0.1, 0.4, 0.2, 0.95, -0.2, -0.38, 0.28, 0.88)


def oblique_direction_itk() -> np.ndarray:
    """A right-handed orthonormal 3x3 direction about 20-30 degrees off the patient axes."""
    q, r = np.linalg.qr(np.asarray(_TILT, dtype=np.float64).reshape(3, 3))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def write_itk(
    path: Path,
    array: np.ndarray,
    spacing_xyz=(0.7, 0.8, 3.0),
    origin_xyz=(-10.0, 20.0, 5.5),
    direction_itk: np.ndarray | None = None,
    is_vector: bool = False,
    compress: bool = False,
) -> Path:
    """Write ``array`` (numpy order) with geometry given in ITK (x, y, z) order."""
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    dim = image.GetDimension()
    image.SetSpacing(tuple(spacing_xyz)[:dim])
    image.SetOrigin(tuple(origin_xyz)[:dim])
    if direction_itk is not None:
        image.SetDirection(tuple(float(v) for v in np.asarray(direction_itk).ravel()))
    sitk.WriteImage(image, str(path), useCompression=compress)
    return Path(path)


def ramp_volume(shape=(4, 5, 6), dtype=np.int16) -> np.ndarray:
    """(plane, row, col) array whose every voxel differs: value = 100*plane + 10*row + col."""
    planes, rows, cols = np.indices(shape)
    return (100 * planes + 10 * rows + cols).astype(dtype)

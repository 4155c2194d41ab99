"""What a segmenter is set to: a 2D image or a volume, with its window and pixel aspect, checked.

Arrays are napari's: a 2D image (rows, cols) grey or (rows, cols, 3) RGB uint8; a volume
(plane, row, col), planes taken along ``axis``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np

from napari_vfmseg.engine.cache import lazy_scan_fingerprint
from napari_vfmseg.engine.errors import NonFiniteImageError
from napari_vfmseg.engine.preprocess import pixel_aspect
from napari_vfmseg.io.windowing import Window, model_window

__all__ = ["WindowArg", "VolumeSource", "require_finite", "image_window", "volume_source"]

WindowArg = Union[None, str, Window, tuple, list]


def require_finite(array: np.ndarray, what: str) -> None:
    """Raise :class:`NonFiniteImageError` naming ``what`` when a floating-point ``array`` has no finite value."""
    if array.dtype.kind in "fc" and array.size and not np.isfinite(array).any():
        raise NonFiniteImageError(f"{what} has no finite pixel (all NaN or infinite): there is nothing to segment")


def image_window(array: np.ndarray, window: WindowArg, modality: Optional[str]) -> Optional[Window]:
    """The window a 2D image goes through: None for RGB and for grey uint8 without one, else resolved."""
    if array.ndim == 3 and array.shape[-1] == 3:
        if window is not None:
            raise ValueError("an RGB image is used as it is; do not pass a window with it")
        return None
    return model_window(window, array, modality)  # "auto" on 8-bit grey: as it is, like SamPredictor


@dataclass
class VolumeSource:
    """A volume set on a segmenter. ``items``: plane → its remembered encoder item (without pixels),
    guarded by the segmenter's lock. ``scan``: the volume's fingerprint, computed on first use."""

    array: np.ndarray
    axis: int
    window: Optional[Window]
    pixel_aspect: float = 1.0  # a plane's pixel height / width in mm
    items: dict = field(default_factory=dict)
    scan: Optional[Callable[[], str]] = None

    @property
    def count(self) -> int:
        return int(self.array.shape[self.axis])

    def plane(self, index: int) -> np.ndarray:
        return np.take(self.array, index, axis=self.axis)

    def checked_plane(self, plane) -> int:
        """``plane`` as an int, or ValueError when it is not a plane of this volume."""
        if not isinstance(plane, (int, np.integer)) or not 0 <= plane < self.count:
            raise ValueError(f"plane {plane} is outside the volume: axis {self.axis} has {self.count} planes")
        return int(plane)

    def data_plane(self, plane: int) -> np.ndarray:
        """Plane ``plane``, or :class:`NonFiniteImageError` when it has no finite voxel."""
        pixels = self.plane(plane)
        require_finite(pixels, f"plane {plane} along axis {self.axis}")
        return pixels


def volume_source(volume: np.ndarray, axis: int, window: WindowArg, modality: Optional[str],
                  spacing: Optional[Sequence[float]]) -> VolumeSource:
    """Check a volume and its settings (see ``Segmenter.set_volume``) and resolve its window once,
    from its finite voxels, so every plane is mapped to 8 bits alike."""
    array = np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"set_volume expects a 3D array (plane, row, col); got shape {array.shape}")
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2; got {axis}")
    if min(array.shape) < 1:
        raise ValueError(f"cannot segment an empty volume of shape {array.shape}")
    require_finite(array, f"the volume of shape {array.shape}")
    aspect = 1.0
    if spacing is not None:
        values = [float(v) for v in np.asarray(spacing, dtype=np.float64).reshape(-1)]
        if len(values) != 3:
            raise ValueError(f"spacing must be three numbers (plane, row, col) in mm; got {values}")
        aspect = pixel_aspect([v for i, v in enumerate(values) if i != axis % 3])
    resolved = model_window(window, array, modality)
    return VolumeSource(array, axis % 3, resolved, aspect, scan=lazy_scan_fingerprint(array))

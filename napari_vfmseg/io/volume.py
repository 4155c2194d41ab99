"""A pixel array with its physical geometry, in napari's axis order.

Axis order. ``Volume.array`` is (plane, row, col) for a 3D volume, (row, col) for a 2D grayscale
image and (row, col, 3) for an RGB image. Every geometric quantity is given in that same ARRAY
order, which is ITK's (x, y, z) order reversed:

- ``spacing[i]`` is the voxel size in mm along array axis ``i`` (ITK ``GetSpacing()[::-1]``);
- ``origin`` is the patient-space (LPS, mm) position of voxel 0, with its physical coordinates
  also reversed to (z, y, x) (ITK ``GetOrigin()[::-1]``);
- ``direction`` is ITK's direction matrix with rows AND columns reversed
  (``D_array = D_itk[::-1, ::-1]``). Column ``i`` is the unit vector of array axis ``i``,
  written in reversed physical coordinates.

So the physical position of array index ``idx`` in reversed (z, y, x) coordinates is
``origin + direction @ (spacing * idx)``. That is the napari world coordinate of the voxel: napari
places layers with ``scale=vol.scale, translate=vol.translate`` when the direction is the identity,
and with ``affine=vol.affine`` (and no scale or translate) in general.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # SimpleITK is imported where it is used, so that windowing imports without it
    import SimpleITK as sitk

from napari_vfmseg.io.errors import VolumeReadError

__all__ = ["Volume"]

_GEOMETRY_ATOL = 1e-6


@dataclass(eq=False)
class Volume:
    """An image with geometry. See the module docstring for the axis conventions.

    Attributes:
        array: (plane, row, col), (row, col), or (row, col, 3) uint8 RGB when ``is_rgb``.
        spacing: voxel size in mm per spatial array axis, e.g. (plane, row, col).
        origin: position of voxel 0 in mm, physical coordinates reversed ((z, y, x) for 3D).
        direction: (n, n) direction cosines in array order (ITK's matrix reversed both ways).
        path: where the data was read from, if anywhere.
        modality: DICOM Modality (0008,0060) when known, e.g. "CT" or "MR".
        metadata: extra facts (DICOM series UID and description, source format, ...).
        is_rgb: True for a 2D colour image whose last axis holds the 3 channels.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray = None  # type: ignore[assignment]  # identity when not given
    path: str | None = None
    modality: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    is_rgb: bool = False

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        n = self.ndim_spatial
        if n not in (2, 3):
            raise ValueError(f"a Volume is 2D or 3D, got array shape {self.array.shape} (is_rgb={self.is_rgb})")
        if self.is_rgb and (self.array.ndim != 3 or self.array.shape[-1] != 3):
            raise ValueError(f"an RGB Volume has shape (row, col, 3), got {self.array.shape}")
        self.spacing = tuple(float(v) for v in self.spacing)
        self.origin = tuple(float(v) for v in self.origin)
        if len(self.spacing) != n or len(self.origin) != n:
            raise ValueError(
                f"spacing {self.spacing} and origin {self.origin} must have {n} values for shape {self.array.shape}"
            )
        if not all(np.isfinite(v) and v > 0 for v in self.spacing):
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        direction = np.eye(n) if self.direction is None else np.asarray(self.direction, dtype=np.float64)
        if direction.size != n * n:
            raise ValueError(f"direction must be {n}x{n} for shape {self.array.shape}, got {direction.shape}")
        self.direction = direction.reshape(n, n)
        if abs(abs(np.linalg.det(self.direction)) - 1.0) > 1e-3:
            raise ValueError(f"direction must be a rotation or reflection (|det| = 1), got {self.direction.tolist()}")

    # ------------------------------------------------------------------ shape facts

    @property
    def ndim_spatial(self) -> int:
        """2 or 3: the number of spatial axes (the RGB channel axis does not count)."""
        return self.array.ndim - (1 if self.is_rgb else 0)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes: (plane, row, col) or (row, col)."""
        return tuple(self.array.shape[: self.ndim_spatial])

    # ------------------------------------------------------------------ napari placement

    @property
    def scale(self) -> tuple[float, ...]:
        """napari ``scale``: mm per voxel along each spatial array axis."""
        return self.spacing

    @property
    def translate(self) -> tuple[float, ...]:
        """napari ``translate``: world position (mm, array order) of voxel 0."""
        return self.origin

    @property
    def affine(self) -> np.ndarray:
        """(n+1, n+1) homogeneous voxel-index → world (mm, array order) matrix, direction included.

        Give it to napari as ``affine=`` *instead of* ``scale``/``translate``; it reproduces
        ITK's ``TransformIndexToPhysicalPoint`` with coordinates reversed.
        """
        n = self.ndim_spatial
        matrix = np.eye(n + 1)
        matrix[:n, :n] = self.direction @ np.diag(self.spacing)
        matrix[:n, n] = self.origin
        return matrix

    @property
    def has_identity_direction(self) -> bool:
        """True when ``scale`` and ``translate`` alone place the image exactly."""
        return bool(np.allclose(self.direction, np.eye(self.ndim_spatial), atol=_GEOMETRY_ATOL))

    @property
    def is_oblique(self) -> bool:
        """True when an array axis is not parallel to a patient axis (not a signed permutation)."""
        return not _is_signed_permutation(self.direction)

    # ------------------------------------------------------------------ SimpleITK bridge

    def to_sitk(self) -> sitk.Image:
        """The SimpleITK image (ITK index order (x, y[, z])) with this volume's geometry."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array, isVector=self.is_rgb)
        image.SetSpacing(self.spacing[::-1])
        image.SetOrigin(self.origin[::-1])
        image.SetDirection(tuple(float(v) for v in self.direction[::-1, ::-1].ravel()))
        return image

    @classmethod
    def from_sitk(
        cls,
        image: sitk.Image,
        path: str | None = None,
        modality: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Volume:
        """Wrap a 2D/3D SimpleITK image, converting its geometry to array order.

        Scalar images become (row, col) or (plane, row, col). A 2D uint8 image with 3 or 4
        components becomes RGB (row, col, 3) (alpha dropped); 2 components (grey + alpha) become grey.

        Raises:
            VolumeReadError: 4D+ data, a zero-size axis, or multi-component data that is not RGB.
        """
        import SimpleITK as sitk

        where = path or "image"
        dim = image.GetDimension()
        size = image.GetSize()
        if 0 in size:
            raise VolumeReadError(f"{where}: image has a zero-size dimension (size {size} in x, y, z order)")
        if dim == 4 and size[3] == 1:  # a 3D volume stored with a singleton 4th axis
            image = _drop_last_axis(image, where)
            dim, size = 3, image.GetSize()
        if dim not in (2, 3):
            raise VolumeReadError(
                f"{where}: {dim}D image of size {size} is not supported; expected a 2D image or a 3D volume"
            )
        components = image.GetNumberOfComponentsPerPixel()
        is_rgb = False
        if components > 1:
            is_uint8 = image.GetPixelID() in (sitk.sitkVectorUInt8, sitk.sitkUInt8)
            if dim == 2 and is_uint8 and components in (3, 4):
                is_rgb = True
                image = image if components == 3 else _take_components(image, (0, 1, 2))
            elif dim == 2 and is_uint8 and components == 2:
                image = sitk.VectorIndexSelectionCast(image, 0)
            else:
                raise VolumeReadError(
                    f"{where}: {components} values per voxel ({image.GetPixelIDTypeAsString()}, {dim}D) is not "
                    "supported; only scalar images and 2D 8-bit RGB/RGBA colour images are"
                )
        array = sitk.GetArrayFromImage(image)
        return cls(
            array=array,
            spacing=image.GetSpacing()[::-1],
            origin=image.GetOrigin()[::-1],
            direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[::-1, ::-1],
            path=None if path is None else str(path),
            modality=modality,
            metadata=dict(metadata or {}),
            is_rgb=is_rgb,
        )

    # ------------------------------------------------------------------ reporting

    def value_range(self) -> tuple[float, float] | None:
        """(min, max) of the finite values, or None if there are none."""
        values = self.array
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.size == 0:
            return None
        return (float(values.min()), float(values.max()))

    def summary(self) -> dict[str, Any]:
        """Plain-Python facts for a CLI or log: shape, dtype, geometry (array order), modality, range."""
        value_range = self.value_range()
        return {
            "path": self.path,
            "shape": list(self.array.shape),
            "dtype": str(self.array.dtype),
            "is_rgb": self.is_rgb,
            "axes": "row,col,rgb" if self.is_rgb else ("plane,row,col" if self.ndim_spatial == 3 else "row,col"),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.tolist(),
            "is_oblique": self.is_oblique,
            "modality": self.modality,
            "value_range": None if value_range is None else list(value_range),
            "metadata": {k: v for k, v in self.metadata.items() if isinstance(v, (str, int, float, bool, type(None)))},
        }

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.array.shape}, dtype={self.array.dtype}, spacing={self.spacing}, "
            f"origin={self.origin}, oblique={self.is_oblique}, modality={self.modality!r}, path={self.path!r})"
        )


def _is_signed_permutation(matrix: np.ndarray) -> bool:
    rounded = np.rint(matrix)
    return bool(
        np.allclose(matrix, rounded, atol=_GEOMETRY_ATOL)
        and np.all(np.abs(rounded).sum(axis=0) == 1)
        and np.all(np.abs(rounded).sum(axis=1) == 1)
    )


def _take_components(image: sitk.Image, indices: tuple[int, ...]) -> sitk.Image:
    import SimpleITK as sitk

    channels = [sitk.VectorIndexSelectionCast(image, i) for i in indices]
    return sitk.Compose(channels)


def _drop_last_axis(image: sitk.Image, where: str) -> sitk.Image:
    """4D image with size 1 along t → 3D, keeping the spatial block of its geometry."""
    direction4 = np.asarray(image.GetDirection()).reshape(4, 4)
    if not (np.allclose(direction4[:3, 3], 0) and np.allclose(direction4[3, :3], 0)):
        raise VolumeReadError(f"{where}: 4D image whose 4th axis mixes with space cannot be reduced to 3D")
    size = list(image.GetSize())
    size[3] = 0  # Extract with size 0 along an axis collapses it
    return sitk.Extract(image, size=size, index=[0, 0, 0, 0])

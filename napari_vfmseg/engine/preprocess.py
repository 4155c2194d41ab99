"""Image and prompt geometry between napari and SAM.

napari addresses pixels as (row, col); SAM's predictor takes points as (x, y) = (col, row) in the
frame of the resized encoder input (long side = ``encoder_size``, 1024 for official SAM); the swap
itself is :func:`napari_vfmseg.engine.coords.rc_to_xy`, called for points and box corners. This module
turns a slice of any dtype into SAM's 8-bit input, resizes it with segment-anything's own
``ResizeLongestSide`` (so the pixels match upstream ``SamPredictor`` exactly), normalises and pads it
with ``Sam.preprocess``, converts (row, col) points and (row0, col0, row1, col1) boxes to SAM's
(x, y) input frame, and upsamples low-resolution mask logits back to the slice's (row, col) grid.

Two input conventions (``LoadedModel.info["preprocess"]``): ``"sam"`` as above, and ``"medsam"``
(MedSAM's own recipe: the slice is stretched to S x S with a bicubic, anti-aliased resize, min-max
scaled to [0, 1] without mean/std, and masks are interpolated straight from the low-res logits to
the slice size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from napari_vfmseg.engine.coords import rc_to_xy
from napari_vfmseg.io.windowing import Window, apply_window

__all__ = [
    "Geometry",
    "PreparedImage",
    "prepare_image",
    "PREPROCESS_MODES",
    "to_uint8",
    "encoder_input",
    "validate_points",
    "validate_box",
    "upscale_logits",
    "pixel_aspect",
]


@dataclass(frozen=True)
class Geometry:
    """Sizes that link a slice to SAM's encoder input.

    ``original_size``: (rows, cols) of the slice as the user sees it.
    ``input_size``: (rows, cols) after resizing the long side to ``encoder_size`` (before padding).
    ``encoder_size``: side of the square, zero-padded encoder input.
    ``stretch``: True for MedSAM's convention (slice stretched to S x S, ``input_size`` = (S, S)).
    ``pixel_aspect``: a pixel's height / its width in mm (1 = square pixels). Other values make the
    resize non-uniform, so that the encoder sees the anatomy in its true proportions: a coronal plane
    of a CT with 4 mm slices and 1.6 mm pixels (aspect 2.5) is stretched 2.5 x along its rows.
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    encoder_size: int
    stretch: bool = False
    pixel_aspect: float = 1.0

    @classmethod
    def for_shape(cls, rows: int, cols: int, encoder_size: int, stretch: bool = False,
                  pixel_aspect: float = 1.0) -> "Geometry":
        if stretch:
            input_size, pixel_aspect = (encoder_size, encoder_size), 1.0
        else:  # the long side of the slice in its true proportions becomes the encoder size
            input_size = ResizeLongestSide.get_preprocess_shape(rows * pixel_aspect, cols, encoder_size)
        return cls((int(rows), int(cols)), (int(input_size[0]), int(input_size[1])), int(encoder_size), stretch,
                   float(pixel_aspect))

    def _xy_to_input(self, xy: np.ndarray) -> np.ndarray:
        if not self.stretch and self.pixel_aspect == 1.0:
            return ResizeLongestSide(self.encoder_size).apply_coords(xy, self.original_size)
        rows, cols = self.original_size  # each axis scaled by its own factor
        scaled = xy.astype(np.float64, copy=True)
        scaled[..., 0] *= self.input_size[1] / cols
        scaled[..., 1] *= self.input_size[0] / rows
        return scaled

    def points_to_sam(self, points_rc: np.ndarray) -> np.ndarray:
        """(N, 2) points as (row, col) in slice pixels → (N, 2) float64 (x, y) in the encoder input frame."""
        points = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
        return self._xy_to_input(rc_to_xy(points))

    def box_to_sam(self, box_rc: Sequence[float]) -> np.ndarray:
        """Box (row0, col0, row1, col1) in slice pixels → (4,) float64 (x0, y0, x1, y1) in the encoder frame."""
        r0, c0, r1, c1 = (float(v) for v in np.asarray(box_rc, dtype=np.float64).reshape(4))
        corners_rc = np.array([[min(r0, r1), min(c0, c1)], [max(r0, r1), max(c0, c1)]], dtype=np.float64)
        return self._xy_to_input(rc_to_xy(corners_rc)).reshape(4)


@dataclass(frozen=True)
class PreparedImage:
    """A slice resized for the encoder. ``pixels``: uint8 (rows, cols) grey or (rows, cols, 3) RGB,
    already resized to ``geometry.input_size`` (no padding, no normalisation)."""

    pixels: np.ndarray
    geometry: Geometry
    window: Optional[Window]

    @property
    def is_rgb(self) -> bool:
        return self.pixels.ndim == 3


def to_uint8(image: np.ndarray, window: Optional[Window]) -> np.ndarray:
    """A (rows, cols) slice of any dtype → uint8 through ``window``; an RGB uint8 (rows, cols, 3) image unchanged.

    A grey uint8 slice without a window is used as it is (no rescaling).
    """
    array = np.asarray(image)
    if array.ndim == 3:
        if array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(
                f"an RGB image must be uint8 with shape (rows, cols, 3); got {array.dtype} {array.shape}"
            )
        return np.ascontiguousarray(array)
    if array.ndim != 2:
        raise ValueError(f"expected a 2D slice (rows, cols) or an RGB image (rows, cols, 3); got shape {array.shape}")
    if window is None:
        if array.dtype != np.uint8:
            raise ValueError(f"a {array.dtype} slice needs an intensity window to become 8-bit")
        return np.ascontiguousarray(array)
    return apply_window(array, window)


PREPROCESS_MODES = ("sam", "medsam")


def pixel_aspect(spacing) -> float:
    """A pixel's height / width from the (row, col) spacing in mm; 1.0 when ``spacing`` is None or the
    two agree within 1 % (rounding in file headers). ValueError unless two positive numbers."""
    if spacing is None:
        return 1.0
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if values.shape != (2,) or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise ValueError(f"pixel spacing must be two positive numbers (row, col) in mm; got {np.asarray(spacing).tolist()}")
    aspect = float(values[0] / values[1])
    return 1.0 if abs(aspect - 1.0) <= 0.01 else aspect


def prepare_image(
    image: np.ndarray, window: Optional[Window], encoder_size: int, preprocess: str = "sam",
    pixel_aspect: float = 1.0,
) -> PreparedImage:
    """Window (grey) and resize a slice for the encoder.

    ``"sam"``: segment-anything's ``ResizeLongestSide`` (PIL bilinear, long side = S). Grey slices are
    resized once as one 8-bit channel and replicated to RGB later in :func:`encoder_input`; PIL
    resamples each channel of an RGB image independently with the same weights, so this equals
    resizing the replicated RGB image (tests check it). With ``pixel_aspect`` (pixel height / width)
    other than 1, the same resize goes to the slice's true proportions (see :class:`Geometry`).
    ``"medsam"``: MedSAM's bicubic, anti-aliased resize of the whole slice to S x S (scikit-image, as
    in MedSAM's inference code), which ignores the aspect as MedSAM does.
    """
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocessing {preprocess!r}: use one of {PREPROCESS_MODES}")
    if not (np.isfinite(pixel_aspect) and pixel_aspect > 0):
        raise ValueError(f"pixel_aspect must be a positive number; got {pixel_aspect}")
    pixels = to_uint8(image, window)
    rows, cols = pixels.shape[:2]
    if rows < 1 or cols < 1:
        raise ValueError(f"cannot segment an empty image of shape {pixels.shape}")
    stretch = preprocess == "medsam"
    geometry = Geometry.for_shape(rows, cols, encoder_size, stretch=stretch, pixel_aspect=pixel_aspect)
    if not stretch and geometry.pixel_aspect != 1.0:
        from torchvision.transforms.functional import resize, to_pil_image  # what ResizeLongestSide uses

        resized = np.array(resize(to_pil_image(pixels), list(geometry.input_size)))
    elif stretch:
        from skimage.transform import resize

        resized = resize(
            pixels, (encoder_size, encoder_size), order=3, preserve_range=True, anti_aliasing=True
        ).astype(np.uint8)
    else:
        resized = ResizeLongestSide(encoder_size).apply_image(pixels)
    return PreparedImage(np.ascontiguousarray(resized), geometry, window)


def encoder_input(images: Sequence[PreparedImage], sam, device: torch.device) -> torch.Tensor:
    """Stack prepared images into the encoder input: float32 (B, 3, S, S).

    ``"sam"`` images are normalised and zero-padded by ``Sam.preprocess`` itself; ``"medsam"`` images
    (``geometry.stretch``) are min-max scaled to [0, 1] as MedSAM does.
    """
    batch = []
    for image in images:
        tensor = torch.as_tensor(image.pixels, device=device)
        if tensor.ndim == 2:
            tensor = tensor[None].expand(3, -1, -1)
        else:
            tensor = tensor.permute(2, 0, 1)
        tensor = tensor.contiguous()[None].float()
        if image.geometry.stretch:
            low, high = tensor.min(), tensor.max()
            batch.append((tensor - low) / torch.clamp(high - low, min=1e-8))
        else:
            batch.append(sam.preprocess(tensor))
    return torch.cat(batch, dim=0)


def validate_points(points, labels, original_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Check (N, 2) (row, col) points and their labels (1 = object, 0 = background).

    Pixel centres sit at integer coordinates, as in napari, so the image spans -0.5 .. rows - 0.5.
    Returns float64 (N, 2) points and int64 (N,) labels. A point outside the slice raises ValueError
    naming the point and the slice size.
    """
    rows, cols = original_size
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 1 and array.size == 2:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise ValueError(f"points must be a list of (row, col) pairs; got shape {np.shape(points)}")
    if labels is None:
        label_array = np.ones(len(array), dtype=np.int64)
    else:
        label_array = np.asarray(labels).reshape(-1)
        if label_array.shape[0] != array.shape[0]:
            raise ValueError(f"got {array.shape[0]} points but {label_array.shape[0]} point labels")
        if not np.all(np.isin(label_array, (0, 1))):
            raise ValueError(f"point labels must be 1 (object) or 0 (background); got {label_array.tolist()}")
        label_array = label_array.astype(np.int64)
    for index, (row, col) in enumerate(array):
        inside = -0.5 <= row <= rows - 0.5 and -0.5 <= col <= cols - 0.5
        if not (np.isfinite(row) and np.isfinite(col)) or not inside:
            raise ValueError(
                f"point {index} at (row={row:g}, col={col:g}) is outside the image of {rows} rows x {cols} cols"
            )
    return array, label_array


def validate_box(box, original_size: tuple[int, int]) -> np.ndarray:
    """Check a (row0, col0, row1, col1) box. Corners may lie on napari's pixel-edge extent (-0.5) or on
    an exclusive end index (row1 == rows). Returns float64 (4,)."""
    rows, cols = original_size
    array = np.asarray(box, dtype=np.float64).reshape(-1)
    if array.shape[0] != 4:
        raise ValueError(f"box must be (row0, col0, row1, col1); got {np.asarray(box).tolist()}")
    r0, c0, r1, c1 = array
    inside = bool(np.all(np.isfinite(array))) and -0.5 <= min(r0, r1) and max(r0, r1) <= rows
    inside = inside and -0.5 <= min(c0, c1) and max(c0, c1) <= cols
    if not inside:
        raise ValueError(
            f"box (row0={r0:g}, col0={c0:g}, row1={r1:g}, col1={c1:g}) is outside the image of {rows} rows x {cols} cols"
        )
    return array


def upscale_logits(low_res: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Low-resolution mask logits (B, C, L, L) → logits (B, C, rows, cols) on the slice grid.

    Same result as ``Sam.postprocess_masks`` (bilinear to the padded encoder size, crop the padding,
    bilinear to the slice size) but only the rows and columns that survive the crop are upsampled:
    with an integer factor ``f = S / L`` and ``align_corners=False``, output pixel ``i`` reads low-res
    pixels ``floor((i + 0.5) / f - 0.5)`` and the next one, so cropping the low-res map to
    ``ceil(h / f) + 1`` rows first leaves every kept value unchanged.
    """
    if geometry.stretch:  # MedSAM: straight from the low-res logits to the slice size
        return F.interpolate(low_res, geometry.original_size, mode="bilinear", align_corners=False)
    size = geometry.encoder_size
    low = low_res.shape[-1]
    h, w = geometry.input_size
    if size % low == 0 and low_res.shape[-2] == low:
        factor = size // low
        keep_h = min(low, math.ceil(h / factor) + 1)
        keep_w = min(low, math.ceil(w / factor) + 1)
        cropped = low_res[..., :keep_h, :keep_w]
        upsampled = F.interpolate(cropped, (keep_h * factor, keep_w * factor), mode="bilinear", align_corners=False)
    else:
        upsampled = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
    upsampled = upsampled[..., :h, :w]
    return F.interpolate(upsampled, geometry.original_size, mode="bilinear", align_corners=False)

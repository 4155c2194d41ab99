"""The transfer set: what the student learns from, as 8-bit planes in their true proportions.

Every plane of the given volumes along every chosen axis (windowed once per volume, as the engine
windows), a share of them drawn augmented (flips, intensity, a small zoom; the same
:func:`~napari_vfmseg.training.data.augment` fine-tuning uses), labelled planes when the user gives
labels, and synthetic slices from the project's generator (:mod:`napari_vfmseg.training.synth`).
A :class:`TransferImage` keeps the plane's pixel aspect (height / width in mm) so both networks
see it as the engine would, resized to its true proportions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from napari_vfmseg.engine.preprocess import pixel_aspect
from napari_vfmseg.io.windowing import apply_window, resolve_window
from napari_vfmseg.training.data import FramedPair, augment, object_ids

__all__ = ["TransferImage", "volume_planes", "labelled_planes", "synthetic_images", "build_transfer_set"]


@dataclass
class TransferImage:
    """One image of the transfer set.

    ``image`` (row, col) uint8; ``labels`` (row, col) int32 label map of known objects (labelled or
    synthetic planes) or None (the teacher then finds objects itself); ``aspect`` a pixel's height /
    width; ``kind`` "plane", "labelled" or "synthetic"; ``source`` names the file, axis and plane.
    """

    image: np.ndarray
    labels: Optional[np.ndarray] = None
    aspect: float = 1.0
    kind: str = "plane"
    source: str = ""


def _window_volume(array: np.ndarray, window, modality: Optional[str]) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.uint8 and window is None:
        return array
    return apply_window(array, resolve_window(window, array, modality))


def _plane_aspect(spacing: Optional[Sequence[float]], axis: int) -> float:
    if spacing is None:
        return 1.0
    values = [float(v) for v in spacing]
    return pixel_aspect([values[i] for i in range(3) if i != axis])


def volume_planes(array: np.ndarray, spacing: Optional[Sequence[float]] = None, window=None,
                  modality: Optional[str] = None, axes: Sequence[int] = (0, 1, 2), source: str = "volume",
                  min_std: float = 2.0) -> list[TransferImage]:
    """Every plane of a (plane, row, col) volume along each of ``axes`` (a 2D image gives itself),
    windowed once for the whole volume; planes with almost no contrast (std < ``min_std`` grey
    levels, e.g. air) are skipped."""
    array = np.asarray(array)
    if array.ndim == 2:
        array, axes = array[None], (0,)
    if array.ndim != 3:
        raise ValueError(f"{source}: expected a 2D or 3D image, got shape {array.shape}")
    if spacing is not None and len(spacing) != 3:
        spacing = (1.0, *spacing) if len(spacing) == 2 else None
    grey = _window_volume(array, window, modality)
    out = []
    for axis in axes:
        aspect = _plane_aspect(spacing, axis)
        planes = np.moveaxis(grey, axis, 0)
        for index in range(planes.shape[0]):
            plane = np.ascontiguousarray(planes[index])
            if float(plane.std()) >= min_std:
                out.append(TransferImage(plane, None, aspect, "plane", f"{source} axis {axis} plane {index}"))
    return out


def labelled_planes(array: np.ndarray, labels: np.ndarray, spacing: Optional[Sequence[float]] = None,
                    window=None, modality: Optional[str] = None, axis: int = 0, min_pixels: int = 20,
                    source: str = "labels") -> list[TransferImage]:
    """The planes along ``axis`` of a labelled volume that hold an object of ``min_pixels`` or more."""
    array, labels = np.asarray(array), np.asarray(labels)
    if array.shape != labels.shape:
        raise ValueError(f"{source}: image shape {array.shape} and label shape {labels.shape} differ")
    if array.ndim == 2:
        array, labels, axis = array[None], labels[None], 0
    grey = np.moveaxis(_window_volume(array, window, modality), axis, 0)
    maps = np.moveaxis(labels, axis, 0)
    aspect = _plane_aspect(spacing, axis) if spacing is not None and len(spacing) == 3 else 1.0
    return [
        TransferImage(np.ascontiguousarray(grey[i]), np.ascontiguousarray(maps[i]).astype(np.int32), aspect,
                      "labelled", f"{source} axis {axis} plane {i}")
        for i in range(maps.shape[0]) if object_ids(maps[i], min_pixels)
    ]


def synthetic_images(count: int, size: int = 256, seed: int = 0) -> list[TransferImage]:
    """``count`` slices from the project's synthetic generator, with their leaf label maps."""
    from napari_vfmseg.training.synth import SynthConfig, SynthGenerator

    if count <= 0:
        return []
    generator = SynthGenerator(SynthConfig(size=size), seed=seed)
    out = []
    for i in range(count):
        sample = generator.sample()
        image = np.clip(np.rint(sample.image.numpy() * 255.0), 0, 255).astype(np.uint8)
        out.append(TransferImage(image, sample.labels.numpy().astype(np.int32), 1.0, "synthetic", f"synthetic {i}"))
    return out


def _spread(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    keep = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in keep]


def _augmented(item: TransferImage, rng: np.random.Generator) -> TransferImage:
    labels = item.labels if item.labels is not None else np.zeros(item.image.shape, np.int32)
    pair = augment(FramedPair(item.image, labels, item.source), rng)
    return replace(item, image=pair.image, labels=pair.labels if item.labels is not None else None,
                   source=item.source + " (augmented)")


def build_transfer_set(planes: Sequence[TransferImage], labelled: Sequence[TransferImage] = (),
                       max_images: int = 480, augment_fraction: float = 0.5, synthetic_fraction: float = 0.25,
                       synthetic_size: int = 256, seed: int = 0) -> list[TransferImage]:
    """The seeded transfer set: ``planes`` (at most ``max_images`` less the labelled and synthetic
    ones, spread evenly), every labelled plane, and ``synthetic_fraction`` x as many synthetic slices;
    a share ``augment_fraction`` of the real planes is drawn augmented instead of as they are."""
    rng = np.random.default_rng(seed)
    room = max(1, int((max_images - len(labelled)) / (1.0 + synthetic_fraction)))
    real = _spread(list(planes), room) + list(labelled)
    n_synthetic = min(int(round(synthetic_fraction * len(real))), max(0, max_images - len(real)))
    out = [_augmented(item, rng) if rng.random() < augment_fraction else item for item in real]
    return out + synthetic_images(n_synthetic, synthetic_size, seed + 1)

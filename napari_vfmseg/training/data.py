"""Training pairs from labelled volumes or folders, the plane-block split, and augmentation.

A :class:`LabelledImage` is one 2D plane: an 8-bit windowed image (row, col) and a label map
(row, col) in which every label id with at least ``min_pixels`` pixels is one object. Volumes are
(plane, row, col) along the chosen ``axis``, as everywhere in napari-vfmseg.

Before training, each pair is brought into the model's frame (:func:`frame_pair`) with the engine's
own :func:`~napari_vfmseg.engine.preprocess.prepare_image` (the longest side resized to the encoder's
input size, or MedSAM's stretch to a square), so training sees exactly the pixels inference sees.
Augmentation (:func:`augment`) then works in that frame: flips, intensity jitter, a small zoom.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from napari_vfmseg.engine.preprocess import pixel_aspect, prepare_image
from napari_vfmseg.io.windowing import WindowSpec, apply_window, model_window
from napari_vfmseg.io.formats import IMAGE_SUFFIXES  # the one list of readable image files

__all__ = [
    "LabelledImage",
    "FramedPair",
    "pairs_from_volume",
    "pairs_from_folder",
    "split_by_plane_blocks",
    "object_ids",
    "as_label_map",
    "count_objects",
    "frame_pair",
    "augment",
]

MASK_TAGS = ("mask", "masks", "label", "labels", "seg", "segmentation")


@dataclass
class LabelledImage:
    """One plane for training or evaluation.

    ``image`` (row, col) uint8 after windowing; ``labels`` (row, col) integer map, 0 = background;
    ``plane`` the index along the slicing axis of the source volume (None for a single 2D pair);
    ``source`` a human-readable origin (file name and plane) for messages; ``pixel_aspect`` a
    pixel's height / width in mm (1 = square), so that training resizes the plane to its true
    proportions exactly as inference does (:func:`~napari_vfmseg.engine.preprocess.prepare_image`);
    ``crop`` (row0, col0, row1, col1) when the pair is a zoomed crop of ``plane``, not the whole plane;
    ``slice_ratio`` the spacing between the volume's planes / a pixel's width (mm / mm): well above 1
    for a plane of a thick-slice scan, whose other views training then imitates
    (:mod:`napari_vfmseg.training.thick_views`); ``view`` names how the pair was resampled from
    ``plane`` ("thick rows", "thick columns"), None for the plane's own pixels.
    """

    image: np.ndarray
    labels: np.ndarray
    plane: Optional[int] = None
    source: str = ""
    pixel_aspect: float = 1.0
    crop: Optional[tuple] = None
    slice_ratio: float = 1.0
    view: Optional[str] = None

    @property
    def own_pixels(self) -> bool:
        """True for the whole plane as the volume holds it (not a crop, not a resampled view)."""
        return self.crop is None and self.view is None


@dataclass
class FramedPair:
    """A pair in the model frame: ``image`` (h, w) uint8 and ``labels`` (h, w) int32, resized as the
    engine resizes (max(h, w) equals the encoder input size; the encoder input is zero-padded to a
    square). ``stretch`` is True for MedSAM's convention (h = w = input size, no padding)."""

    image: np.ndarray
    labels: np.ndarray
    source: str = ""
    stretch: bool = False


def object_ids(labels: np.ndarray, min_pixels: int = 20) -> list[int]:
    """Label ids (> 0) of ``labels`` that cover at least ``min_pixels`` pixels, ascending."""
    flat = np.asarray(labels).ravel()
    if flat.size == 0:
        return []
    if flat.min() < 0:
        raise ValueError("label maps must not contain negative ids")
    counts = np.bincount(flat.astype(np.int64))
    return [int(i) for i in np.flatnonzero(counts >= max(min_pixels, 1)) if i > 0]


def count_objects(pairs: Sequence[LabelledImage], min_pixels: int = 20) -> int:
    """Number of (plane, label id) objects in ``pairs``."""
    return sum(len(object_ids(p.labels, min_pixels)) for p in pairs)


def as_label_map(labels: np.ndarray, what: str = "labels") -> np.ndarray:
    """``labels`` as an int32 label map; ValueError (naming ``what``) for fractions or negative ids."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError(f"{what}: label maps must hold whole numbers")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"{what}: label maps must be integer arrays, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what}: label maps must not contain negative ids")
    return labels.astype(np.int32, copy=False)


def pairs_from_volume(volume: np.ndarray, labels: np.ndarray, axis: int = 0, window: WindowSpec = None,
                      min_pixels: int = 20, source: str = "volume", modality: Optional[str] = None,
                      spacing: Optional[Sequence[float]] = None) -> list[LabelledImage]:
    """One :class:`LabelledImage` per plane of ``volume`` (3D, any real dtype) that holds an object.

    ``labels`` has the same shape; planes are taken along ``axis`` (0 = the first array axis). The
    window is resolved once on the whole volume and applied to every plane, as the engine's
    ``Segmenter.set_volume`` does (a uint8 volume without a window is used as it is).
    ``spacing``: the voxel size (mm) in the volume's axis order ((row, col) for a 2D image); each
    pair then carries its planes' pixel aspect, as the engine computes it from the same spacing.
    A 2D ``volume`` gives at most one pair.
    """
    volume = np.asarray(volume)
    labels = as_label_map(labels, source)
    if volume.shape != labels.shape:
        raise ValueError(f"{source}: image shape {volume.shape} and label shape {labels.shape} differ")
    aspect, ratio = 1.0, 1.0
    if spacing is not None:
        values = [float(v) for v in np.asarray(spacing, dtype=np.float64).reshape(-1)]
        if len(values) != volume.ndim:
            raise ValueError(f"{source}: spacing {values} does not match the {volume.ndim} axes of the image")
        if len(values) == 3:  # the two in-plane axes, in order, once the plane axis is removed
            between = values[axis % 3]
            values = [values[i] for i in range(3) if i != axis % 3]
            if between > 0 and values[1] > 0:
                ratio = between / values[1]
        aspect = pixel_aspect(values)
    if volume.ndim == 2:
        volume, labels, axis = volume[None], labels[None], 0
    if volume.ndim != 3:
        raise ValueError(f"{source}: expected a 2D or 3D image, got shape {volume.shape}")
    if not -3 <= axis < 3:
        raise ValueError(f"{source}: axis {axis} is out of range for a 3D volume")
    win = model_window(window, volume, modality)  # the engine's rule: "auto" on 8-bit data is as it is
    volume = np.moveaxis(volume, axis, 0)
    labels = np.moveaxis(labels, axis, 0)
    pairs = []
    for index in range(volume.shape[0]):
        plane_labels = labels[index]
        if not object_ids(plane_labels, min_pixels):
            continue
        image = volume[index] if win is None else apply_window(volume[index], win)
        pairs.append(LabelledImage(np.ascontiguousarray(image), np.ascontiguousarray(plane_labels),
                                   index, f"{source} plane {index}", aspect, slice_ratio=ratio))
    return pairs


def _strip_suffix(name: str) -> tuple[str, str]:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def _find_pair_files(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) files: ``images/`` + ``masks/`` (or ``labels/``) by name, or NAME + NAME_mask."""
    subdirs = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    pairs: list[tuple[Path, Path]] = []
    image_dir = subdirs.get("images") or subdirs.get("image")
    mask_dir = next((subdirs[k] for k in ("masks", "mask", "labels", "label") if k in subdirs), None)
    if image_dir is not None and mask_dir is not None:
        masks = {_strip_suffix(p.name)[0]: p for p in mask_dir.iterdir() if _strip_suffix(p.name)[1]}
        for image in sorted(image_dir.iterdir()):
            stem, suffix = _strip_suffix(image.name)
            if suffix and stem in masks:
                pairs.append((image, masks[stem]))
        return pairs
    tag = re.compile(r"^(?P<stem>.+?)[_\-.](?:" + "|".join(MASK_TAGS) + r")$", re.IGNORECASE)
    files = {}
    mask_files = {}
    for path in sorted(folder.iterdir()):
        stem, suffix = _strip_suffix(path.name)
        if not suffix or not path.is_file():
            continue
        match = tag.match(stem)
        if match:
            mask_files[match.group("stem")] = path
        else:
            files[stem] = path
    return [(files[stem], mask_files[stem]) for stem in sorted(files) if stem in mask_files]


def _gray(array: np.ndarray) -> np.ndarray:
    """(row, col) from (row, col), (row, col, 3|4) colour, or a (1, row, col) single plane."""
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
        return array[..., :3].astype(np.float32).mean(axis=-1)
    if array.ndim == 3 and array.shape[0] == 1:
        return array[0]
    return array


def pairs_from_folder(folder: str | Path, window: WindowSpec = None, min_pixels: int = 20,
                      axis: int = 0) -> list[LabelledImage]:
    """Pairs from a folder of image + mask files matched by name.

    Two layouts are recognised: ``images/NAME.ext`` with ``masks/NAME.ext`` (or ``labels/``), and
    ``NAME.ext`` beside ``NAME_mask.ext`` (also ``_label``, ``_labels``, ``_seg``). Files may be 2D
    (PNG, TIFF, ...) or 3D (NIfTI, NRRD, MHA); a 3D pair is cut into planes along ``axis``.
    Each pair is windowed on its own. ``plane`` numbers run across the folder in file order, so the
    block split keeps the planes of one volume together.
    """
    from napari_vfmseg.io import read_volume

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of image/mask pairs")
    found = _find_pair_files(folder)
    if not found:
        raise ValueError(
            f"{folder}: no image/mask pairs found (expected images/ + masks/ with matching names, "
            "or NAME.png beside NAME_mask.png)"
        )
    pairs: list[LabelledImage] = []
    offset = 0
    for image_path, mask_path in found:
        image = _gray(np.asarray(read_volume(image_path).array))
        mask = _gray(np.asarray(read_volume(mask_path).array))
        if mask.ndim == 3 and image.ndim == 3 and mask.shape[-1] in (3, 4) and mask.shape[:-1] == image.shape:
            mask = mask[..., 0]
        planes = pairs_from_volume(image, mask, axis=axis if image.ndim == 3 else 0, window=window,
                                   min_pixels=min_pixels, source=image_path.name)
        depth = image.shape[axis] if image.ndim == 3 else 1
        for pair in planes:
            pair.plane = offset + (pair.plane or 0)
            pairs.append(pair)
        offset += depth + 1  # a gap so planes of different files are never neighbours
    return pairs


def split_by_plane_blocks(pairs: Sequence[LabelledImage], val_fraction: float = 0.2, block_size: int = 8,
                          guard: int = 1, seed: int = 0) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Split into (train, validation) by blocks of ``block_size`` neighbouring planes.

    Planes are grouped by ``plane // block_size``; whole blocks go to validation until about
    ``val_fraction`` of the planes are there, chosen at random (``seed``) but never all blocks. Training
    planes closer than ``guard`` planes to a validation plane are dropped, so no validation plane
    has a training neighbour. Pairs without a plane number are each their own block.
    With fewer than two blocks everything is training data and validation is empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    keys = [p.plane if p.plane is not None else i * (block_size + guard + 1) for i, p in enumerate(pairs)]
    blocks: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        blocks.setdefault(key // block_size, []).append(i)
    order = sorted(blocks)
    if len(order) < 2 or val_fraction == 0.0:
        return list(pairs), []
    rng = np.random.default_rng(seed)
    target = max(1, int(round(val_fraction * len(pairs))))
    val_blocks: list[int] = []
    count = 0
    for block in rng.permutation(order):
        if count >= target or len(val_blocks) == len(order) - 1:
            break
        val_blocks.append(int(block))
        count += len(blocks[int(block)])
    val_idx = sorted(i for b in val_blocks for i in blocks[b])
    val_set = set(val_idx)
    val_planes = np.array([keys[i] for i in val_idx])
    train = [p for i, p in enumerate(pairs)
             if i not in val_set and (guard <= 0 or np.min(np.abs(val_planes - keys[i])) > guard)]
    val = [pairs[i] for i in val_idx]
    return train, val


def _resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(int), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(int), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def frame_pair(pair: LabelledImage, size: int, preprocess: str = "sam") -> FramedPair:
    """``pair`` resized for an encoder of input side ``size``: the image exactly as the engine resizes
    it (``preprocess`` "sam" or "medsam", in the plane's true proportions given by
    ``pair.pixel_aspect``), the labels by nearest neighbour to the same grid."""
    prepared = prepare_image(np.asarray(pair.image), None, size, preprocess,
                             pixel_aspect=float(getattr(pair, "pixel_aspect", 1.0) or 1.0))
    shape = prepared.geometry.input_size
    return FramedPair(prepared.pixels, _resize_nearest(np.asarray(pair.labels), shape).astype(np.int32),
                      pair.source, prepared.geometry.stretch)


def augment(pair: FramedPair, rng: np.random.Generator, flip: bool = True, intensity: float = 0.1,
            scale: float = 0.1, rotate: float = 0.0) -> FramedPair:
    """A lightly augmented copy: random flips of either axis, intensity gain / offset / gamma
    jitter of relative size ``intensity``, a zoom by a factor in [1 - scale, 1 + scale] and a rotation
    by up to ``rotate`` degrees about the centre (same shape; labels resampled nearest). The image
    stays uint8."""
    image, labels = pair.image.astype(np.float32), pair.labels
    if flip:
        if rng.random() < 0.5:
            image, labels = image[::-1], labels[::-1]
        if rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
    if scale > 0 or rotate > 0:
        factor = float(rng.uniform(1.0 - scale, 1.0 + scale)) if scale > 0 else 1.0
        angle = np.deg2rad(float(rng.uniform(-rotate, rotate))) if rotate > 0 else 0.0
        turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        centre = (np.array(image.shape) - 1) / 2.0
        matrix = turn / factor
        offset = centre - matrix @ centre
        image = ndimage.affine_transform(np.ascontiguousarray(image), matrix, offset, order=1, mode="constant")
        labels = ndimage.affine_transform(np.ascontiguousarray(labels), matrix, offset, order=0, mode="constant")
    if intensity > 0:
        gain = rng.uniform(1.0 - intensity, 1.0 + intensity)
        bias = rng.uniform(-intensity, intensity) * 255.0
        gamma = float(np.exp(rng.uniform(-intensity, intensity)))
        image = 255.0 * (np.clip(image, 0, 255) / 255.0) ** gamma * gain + bias
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return FramedPair(np.ascontiguousarray(image), np.ascontiguousarray(labels, dtype=np.int32), pair.source,
                      pair.stretch)

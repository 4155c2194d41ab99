"""3D evaluation of propagation: one box per object, propagate, 3D Dice and volume error, beside baselines.

Protocol (per object of a (plane, row, col) label volume, planes along ``axis``; an object is a
26-connected part of one label id, or with ``objects="label"`` the whole label id — a label made of
separate bodies, such as vertebrae, cannot be followed from one box):

1. the seed plane is the object's largest cross-section along ``axis`` (the first on ties); the
   prompt is the tight box of the true mask on that plane (:func:`~napari_vfmseg.training.prompts.bounding_box`);
2. the model segments the seed plane from that box, and :func:`~napari_vfmseg.engine.propagate`
   walks from it through the volume;
3. scores: 3D Dice against the true object (the 2D :func:`~napari_vfmseg.training.metrics.dice`
   applies to any shape), the volume in mL (voxel volume from ``spacing``) and its signed error,
   the extent along ``axis`` the walk covered, and time per predicted plane.

Two baselines are scored by the same code on the same objects, both built from the *true* mask of
the seed plane: repeated over the object's true extent along ``axis`` (first to last plane that
holds it) — what a perfect 2D answer plus a perfect "where does it end" gives without any 3D
shape — and repeated over every plane of the volume. On an ellipsoid-like organ the extent
baseline scores about 0.79, so a 3D Dice means something only beside it.

Objects are split by size: "large" when the longest side of their 3D bounding box exceeds
``min_size_mm`` (20 mm by default), "small" otherwise. :class:`OracleSegmenter` answers with the
true mask inside the prompt box; with it the protocol must give a 3D Dice of about 1 and stop at
each object's ends, which checks the machinery independently of any model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from napari_vfmseg.training.data import as_label_map
from napari_vfmseg.training.metrics import dice
from napari_vfmseg.training.oracle import OraclePrediction, OracleSegmenter
from napari_vfmseg.training.prompts import bounding_box

__all__ = [
    "OracleSegmenter",
    "OraclePrediction",
    "Object3DScore",
    "volume_ml",
    "object_size_mm",
    "largest_plane",
    "object_extent",
    "repeat_plane",
    "score_object_3d",
    "find_objects_3d",
    "evaluate_volume_3d",
]


# ------------------------------------------------------------------------------------ measures


def _other_axes(axis: int) -> tuple[int, int]:
    return tuple(i for i in range(3) if i != axis)  # type: ignore[return-value]


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a boolean 3D mask in millilitres (1 mL = 1000 mm³); ``spacing`` in mm per array axis."""
    return float(np.count_nonzero(mask)) * float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0


def object_size_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Longest side, in mm, of the bounding box of a boolean 3D mask (voxel footprints, so one voxel
    along an axis counts as one spacing); 0 for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0
    sides = []
    for axis in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        present = np.flatnonzero(mask.any(axis=other))
        sides.append((present[-1] - present[0] + 1) * float(spacing[axis]))
    return float(max(sides))


def largest_plane(mask: np.ndarray, axis: int = 0) -> int:
    """Index along ``axis`` of the plane where the boolean 3D ``mask`` has the most pixels (first on ties)."""
    areas = np.asarray(mask, dtype=bool).sum(axis=_other_axes(axis))
    if not areas.any():
        raise ValueError("largest_plane: the mask is empty")
    return int(np.argmax(areas))


def object_extent(mask: np.ndarray, axis: int = 0) -> tuple[int, int]:
    """(first, last) plane index along ``axis`` that holds any voxel of the boolean 3D ``mask``."""
    present = np.flatnonzero(np.asarray(mask, dtype=bool).any(axis=_other_axes(axis)))
    if present.size == 0:
        raise ValueError("object_extent: the mask is empty")
    return int(present[0]), int(present[-1])


def repeat_plane(plane_mask: np.ndarray, shape: Sequence[int], axis: int, first: int, last: int) -> np.ndarray:
    """A 3D boolean mask of ``shape`` with ``plane_mask`` (rows, cols) on planes ``first..last``
    (inclusive) along ``axis`` and nothing elsewhere."""
    stack = np.zeros((shape[axis], *np.asarray(plane_mask).shape), dtype=bool)
    stack[first : last + 1] = np.asarray(plane_mask, dtype=bool)
    out = np.moveaxis(stack, 0, axis)
    if out.shape != tuple(shape):
        raise ValueError(
            f"plane mask {np.asarray(plane_mask).shape} does not fit a volume {tuple(shape)} along axis {axis}"
        )
    return out


# ------------------------------------------------------------------------------------ protocol


@dataclass
class Object3DScore:
    """Scores of one 3D object (see the module docstring).

    Volumes in mL; ``volume_error_ml`` = predicted − true (signed). ``extent``/``predicted_extent``:
    (first, last) planes along the axis (None when the prediction is empty). ``seed_dice``: 2D Dice
    of the model's mask on the seed plane. Baseline Dice and volume errors use the true seed-plane
    mask repeated over the true extent (``extent_*``) and over all planes (``all_planes_*``).
    """

    label: int
    component: Optional[int]  # 1-based index of the connected part (largest first); None for a whole label
    name: Optional[str]
    voxels: int
    size_mm: float
    large: bool
    seed_plane: int
    box: tuple[int, int, int, int]
    extent: tuple[int, int]
    predicted_extent: Optional[tuple[int, int]]
    seed_dice: float
    dice: float
    volume_true_ml: float
    volume_pred_ml: float
    volume_error_ml: float
    extent_baseline_dice: float
    extent_baseline_volume_error_ml: float
    all_planes_baseline_dice: float
    all_planes_baseline_volume_error_ml: float
    predictions: int
    seconds: float
    seconds_per_plane: float
    stops: list[dict] = field(default_factory=list)


def score_object_3d(predicted: np.ndarray, truth: np.ndarray, axis: int, spacing: Sequence[float]) -> dict[str, Any]:
    """3D Dice, volumes (mL) and extents of one predicted boolean mask against the true one, plus
    both baselines built from the true mask on its largest plane. Shapes (plane, row, col)."""
    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    seed_plane = largest_plane(truth, axis)
    first, last = object_extent(truth, axis)
    seed_truth = np.take(truth, seed_plane, axis=axis)
    true_ml = volume_ml(truth, spacing)
    pred_ml = volume_ml(predicted, spacing)
    out: dict[str, Any] = {
        "seed_plane": seed_plane,
        "extent": (first, last),
        "predicted_extent": object_extent(predicted, axis) if predicted.any() else None,
        "dice": dice(predicted, truth),
        "volume_true_ml": true_ml,
        "volume_pred_ml": pred_ml,
        "volume_error_ml": pred_ml - true_ml,
    }
    for name, (lo, hi) in (("extent", (first, last)), ("all_planes", (0, truth.shape[axis] - 1))):
        baseline = repeat_plane(seed_truth, truth.shape, axis, lo, hi)
        out[f"{name}_baseline_dice"] = dice(baseline, truth)
        out[f"{name}_baseline_volume_error_ml"] = volume_ml(baseline, spacing) - true_ml
    return out


def find_objects_3d(labels: np.ndarray, label_ids: Optional[Sequence[int]] = None, objects: str = "component",
                    min_voxels: int = 20) -> list[tuple[int, Optional[int], np.ndarray]]:
    """The objects of a (plane, row, col) label map: (label id, component, bool mask) per object.

    ``objects`` "component": each 26-connected part of a label with at least ``min_voxels`` voxels,
    numbered 1, 2, ... from the largest; "label": each label id with at least ``min_voxels`` voxels
    (component None). ``label_ids`` limits the ids (default: all > 0); an id absent from the map is
    an error.
    """
    if objects not in ("component", "label"):
        raise ValueError(f"objects must be 'component' or 'label'; got {objects!r}")
    counts = np.bincount(labels.ravel())
    if label_ids is None:
        label_ids = [int(i) for i in np.flatnonzero(counts) if i > 0]
    found: list[tuple[int, Optional[int], np.ndarray]] = []
    for label in label_ids:
        label = int(label)
        if label <= 0 or label >= counts.size or counts[label] == 0:
            raise ValueError(f"label {label} is not in the label volume")
        mask = labels == label
        if objects == "label":
            if counts[label] >= min_voxels:
                found.append((label, None, mask))
            continue
        parts, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(parts.ravel(), minlength=n + 1)[1:]
        for rank, index in enumerate(np.argsort(-sizes, kind="stable") + 1, start=1):
            if sizes[index - 1] >= min_voxels:
                found.append((label, rank, parts == index))
    return found


def _as_segmenter(segmenter_or_model, volume: np.ndarray, axis: int, window, modality, spacing=None):
    """An engine Segmenter for a LoadedModel, or the given segmenter; its volume is set to ``volume``
    (with ``spacing``, (plane, row, col) mm, when given, so planes keep their true proportions)."""
    segmenter = segmenter_or_model
    if not hasattr(segmenter, "predict"):
        if not hasattr(segmenter, "sam"):
            raise ValueError(f"expected a Segmenter or a LoadedModel; got {type(segmenter).__name__}")
        from napari_vfmseg.engine import Segmenter

        segmenter = Segmenter(segmenter)
    if hasattr(segmenter, "set_volume"):
        extra = {} if spacing is None else {"spacing": spacing}
        segmenter.set_volume(volume, axis=axis, window=window, modality=modality, **extra)
    return segmenter


def _mean(values) -> Optional[float]:
    values = [float(v) for v in values if v is not None and v == v]
    return float(np.mean(values)) if values else None


def _group(objects: list[Object3DScore]) -> dict[str, Any]:
    dice_mean = _mean(o.dice for o in objects)
    extent_mean = _mean(o.extent_baseline_dice for o in objects)
    return {
        "n_objects": len(objects),
        "dice_mean": dice_mean,
        "seed_dice_mean": _mean(o.seed_dice for o in objects),
        "extent_baseline_dice_mean": extent_mean,
        "all_planes_baseline_dice_mean": _mean(o.all_planes_baseline_dice for o in objects),
        "dice_minus_extent_baseline": None if dice_mean is None or extent_mean is None else dice_mean - extent_mean,
        "abs_volume_error_ml_mean": _mean(abs(o.volume_error_ml) for o in objects),
        "volume_error_ml_mean": _mean(o.volume_error_ml for o in objects),
        "extent_baseline_abs_volume_error_ml_mean": _mean(abs(o.extent_baseline_volume_error_ml) for o in objects),
        "all_planes_baseline_abs_volume_error_ml_mean": _mean(abs(o.all_planes_baseline_volume_error_ml) for o in objects),
    }


def evaluate_volume_3d(
    volume_array: np.ndarray,
    labels: np.ndarray,
    segmenter,
    axis: int = 0,
    min_size_mm: float = 20.0,
    spacing: Optional[Sequence[float]] = None,
    *,
    window=None,
    modality: Optional[str] = None,
    config=None,
    label_ids: Optional[Sequence[int]] = None,
    label_names: Optional[Mapping[int, str]] = None,
    objects: str = "component",
    min_voxels: int = 20,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, Any]:
    """Run the 3D protocol (module docstring) on every object of ``labels``; returns a JSON-ready dict.

    ``volume_array``, ``labels``: (plane, row, col), same shape. ``segmenter``: an engine ``Segmenter``
    (its volume is set to ``volume_array`` along ``axis`` with ``window``/``modality``), a
    ``LoadedModel`` (a Segmenter is made for it), or a stand-in such as :class:`OracleSegmenter`
    (told each object's true mask through its ``target`` attribute). ``min_size_mm``: objects whose
    bounding box's longest side exceeds it are "large", the others "small". ``spacing``: mm per array
    axis (default 1 mm). ``config``: a :class:`~napari_vfmseg.engine.propagate.PropagationConfig`.
    ``label_ids``: the label ids to score (default all); ``label_names``: id → name for the report.
    ``objects``: "component" (default: each 26-connected part of a label is one object) or "label"
    (each label id is one object); objects with fewer than ``min_voxels`` voxels are skipped.
    ``progress(done, total)`` after each object.

    Returns ``{"axis", "spacing", "min_size_mm", "config", "n_objects", "large": {...},
    "small": {...}, "all": {...}, "seconds_per_plane", "seconds", "objects": [...]}``; each group
    holds ``dice_mean``, ``extent_baseline_dice_mean``, ``all_planes_baseline_dice_mean``,
    ``dice_minus_extent_baseline``, ``abs_volume_error_ml_mean`` and more (None where empty).
    """
    from napari_vfmseg.engine.propagate import PropagationConfig, segmenter_model, propagate

    volume_array = np.asarray(volume_array)
    labels = as_label_map(np.asarray(labels), "evaluation labels")
    if volume_array.shape != labels.shape:
        raise ValueError(f"image shape {volume_array.shape} and label shape {labels.shape} differ")
    if labels.ndim != 3:
        raise ValueError(f"evaluate_volume_3d needs (plane, row, col) volumes; got shape {labels.shape}")
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2; got {axis}")
    axis = int(axis) % 3
    spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (mm per array axis); got {spacing}")
    targets = find_objects_3d(labels, label_ids, objects, min_voxels)
    segmenter = _as_segmenter(segmenter, volume_array, axis, window, modality, spacing)
    config = config or PropagationConfig.for_model(segmenter_model(segmenter))

    scored: list[Object3DScore] = []
    total_seconds = 0.0
    total_predictions = 0
    for done, (label, component, truth) in enumerate(targets, start=1):
        seed_plane = largest_plane(truth, axis)
        seed_truth = np.take(truth, seed_plane, axis=axis)
        box = bounding_box(seed_truth)
        if hasattr(segmenter, "target"):
            segmenter.target = truth
        started = time.perf_counter()
        seed = segmenter.predict(box=box, plane=seed_plane, multimask=False)
        result = propagate(segmenter, {seed_plane: seed}, axis=axis, config=config)
        seconds = time.perf_counter() - started
        predictions = len(result.visits) + 1
        total_seconds += seconds
        total_predictions += predictions
        scores = score_object_3d(result.mask, truth, axis, spacing)
        size = object_size_mm(truth, spacing)
        scored.append(Object3DScore(
            label=int(label),
            component=component,
            name=None if label_names is None else label_names.get(int(label)),
            voxels=int(truth.sum()),
            size_mm=size,
            large=size > min_size_mm,
            box=box,
            seed_dice=dice(np.asarray(seed.mask, dtype=bool), seed_truth),
            predictions=predictions,
            seconds=seconds,
            seconds_per_plane=seconds / predictions,
            stops=[asdict(s) for s in result.stops],
            **scores,
        ))
        if progress is not None:
            progress(done, len(targets))
    if hasattr(segmenter, "target"):
        segmenter.target = None

    large = [o for o in scored if o.large]
    small = [o for o in scored if not o.large]
    return {
        "protocol": "one tight box on the largest plane, propagate; baselines from the true seed-plane mask",
        "axis": axis,
        "spacing": list(spacing),
        "min_size_mm": float(min_size_mm),
        "objects_are": objects,
        "config": config.as_dict(),
        "n_objects": len(scored),
        "large": _group(large),
        "small": _group(small),
        "all": _group(scored),
        "seconds": total_seconds,
        "seconds_per_plane": total_seconds / total_predictions if total_predictions else None,
        "objects": [_jsonable(asdict(o)) for o in scored],
    }


def _jsonable(record: dict) -> dict:
    """Tuples → lists, numpy scalars → Python numbers (json.dumps-ready)."""
    def convert(value):
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    return convert(record)

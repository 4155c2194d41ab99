"""Segmentation metrics and the standard iterative-click protocol, with trivial box baselines.

Masks are boolean (row, col) arrays; points are (row, col) and boxes (row0, col0, row1, col1)
with inclusive indices, as everywhere in napari-vfmseg.

The protocol (per object): the first interaction is a click at the object's most interior point
(or its tight box); every next click goes to the centre of the largest error region (positive on
a false negative, negative on a false positive), with the previous low-res logits fed back, up to
``max_clicks`` interactions. NoC@85 / NoC@90 is the number of interactions needed to reach IoU
0.85 / 0.90 (``max_clicks`` when never reached; those objects are counted as failures). A box
counts as one interaction. The run for an object stops early once IoU 0.90 is reached, because
neither NoC can change after that.

Baselines for box prompts, computed on the same objects with the same tight boxes: the filled box,
and Otsu's threshold inside the box keeping the class under the box centre.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from napari_vfmseg.training.data import as_label_map, object_ids
from napari_vfmseg.training.prompts import bounding_box, correction_click, interior_point

__all__ = [
    "PredictFn",
    "PlanePredictFn",
    "dice",
    "iou",
    "noc",
    "box_fill_mask",
    "otsu_threshold",
    "otsu_box_mask",
    "ObjectScore",
    "EvaluationReport",
    "interactive_protocol",
    "evaluate_object",
    "evaluate_volume",
    "segmenter_plane_predictor",
]

# predict(points (N, 2) (row, col) or None, point_labels (N,) or None, box (4,) or None,
#         mask_input low-res logits or None) -> (mask bool (row, col), score, low-res logits)
PredictFn = Callable[[Optional[np.ndarray], Optional[np.ndarray], Optional[tuple], Optional[np.ndarray]],
                     tuple[np.ndarray, float, np.ndarray]]
# The same with the plane index first: predict(plane, points, point_labels, box, mask_input).
PlanePredictFn = Callable[[int, Optional[np.ndarray], Optional[np.ndarray], Optional[tuple], Optional[np.ndarray]],
                          tuple[np.ndarray, float, np.ndarray]]


def _check(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    return pred, target


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two boolean masks; 1.0 when both are empty."""
    pred, target = _check(pred, target)
    total = int(pred.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, target).sum()) / total


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union |A∩B| / |A∪B| of two boolean masks; 1.0 when both are empty."""
    pred, target = _check(pred, target)
    union = int(np.logical_or(pred, target).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, target).sum()) / union


def noc(ious: Sequence[float], threshold: float, max_clicks: int = 20) -> tuple[int, bool]:
    """(number of clicks, reached): the first 1-based interaction with IoU >= ``threshold``, or
    (``max_clicks``, False) when none of the first ``max_clicks`` reaches it."""
    for index, value in enumerate(list(ious)[:max_clicks], start=1):
        if value >= threshold:
            return index, True
    return max_clicks, False


def box_fill_mask(shape: tuple[int, int], box: Sequence[int]) -> np.ndarray:
    """The box (row0, col0, row1, col1), inclusive, filled: bool (row, col) of ``shape``."""
    r0, c0, r1, c1 = (int(v) for v in box)
    mask = np.zeros(shape, dtype=bool)
    mask[max(r0, 0): r1 + 1, max(c0, 0): c1 + 1] = True
    return mask


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of the finite values: maximises the between-class variance of a histogram."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight0 = np.cumsum(hist).astype(np.float64)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1e-12)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def otsu_box_mask(image: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Otsu's threshold inside ``box``; the pixels of the class under the box centre, inside the box.

    ``image`` is (row, col) of any real dtype (raw intensities). Returns bool (row, col).
    """
    image = np.asarray(image)
    r0, c0, r1, c1 = (int(v) for v in box)
    crop = image[r0: r1 + 1, c0: c1 + 1].astype(np.float64)
    threshold = otsu_threshold(crop)
    above = crop > threshold
    centre = above[(r1 - r0) // 2, (c1 - c0) // 2]
    mask = np.zeros(image.shape, dtype=bool)
    mask[r0: r1 + 1, c0: c1 + 1] = above == centre
    return mask


@dataclass
class ObjectScore:
    """Scores of one object (one label id on one plane).

    ``dice``/``iou`` after the first interaction; ``dices``/``ious`` per interaction;
    ``box_fill_dice``/``otsu_dice`` the baselines with the object's tight box.
    """

    plane: Optional[int]
    label: int
    pixels: int
    dice: float
    iou: float
    dice_final: float
    iou_final: float
    clicks: int
    noc85: int
    noc90: int
    reached85: bool
    reached90: bool
    box_fill_dice: float
    otsu_dice: float
    dices: list[float] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)


def interactive_protocol(predict: PredictFn, target: np.ndarray, first: str = "point", max_clicks: int = 20,
                         stop_iou: Optional[float] = 0.90, feed_logits: bool = True
                         ) -> tuple[list[float], list[float]]:
    """Run the iterative protocol on one object; returns (dices, ious), one per interaction.

    ``first`` "point" clicks the most interior pixel; "box" gives the tight box (kept with every
    later click). Stops after ``max_clicks`` interactions, when the prediction is perfect, or once
    IoU reaches ``stop_iou`` (None: never stop early).
    """
    target = np.asarray(target, dtype=bool)
    if not target.any():
        raise ValueError("interactive_protocol: the target mask is empty")
    if first not in ("point", "box"):
        raise ValueError(f"unknown first prompt {first!r}: use 'point' or 'box'")
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    points: list[tuple[int, int]] = []
    labels: list[int] = []
    box = None
    if first == "point":
        points.append(interior_point(target))
        labels.append(1)
    else:
        box = bounding_box(target)
    logits = None
    dices: list[float] = []
    ious: list[float] = []
    for _ in range(max_clicks):
        mask, _, new_logits = predict(
            np.asarray(points, dtype=np.float64) if points else None,
            np.asarray(labels, dtype=np.int64) if labels else None,
            box,
            logits if feed_logits else None,
        )
        mask = np.asarray(mask, dtype=bool)
        dices.append(dice(mask, target))
        ious.append(iou(mask, target))
        if stop_iou is not None and ious[-1] >= stop_iou:
            break
        click = correction_click(mask, target)
        if click is None:
            break
        points.append((click.row, click.col))
        labels.append(click.label)
        logits = new_logits
    return dices, ious


def evaluate_object(predict: PredictFn, target: np.ndarray, image: Optional[np.ndarray] = None,
                    first: str = "box", max_clicks: int = 20, plane: Optional[int] = None, label: int = 1
                    ) -> ObjectScore:
    """Protocol plus baselines for one object. ``image`` (row, col, raw intensities) feeds the Otsu
    baseline (NaN without it)."""
    target = np.asarray(target, dtype=bool)
    dices, ious = interactive_protocol(predict, target, first=first, max_clicks=max_clicks)
    # An early stop happens only at IoU >= 0.90 (or a perfect mask), so both NoCs are already decided.
    n85, ok85 = noc(ious, 0.85, max_clicks)
    n90, ok90 = noc(ious, 0.90, max_clicks)
    box = bounding_box(target)
    fill = dice(box_fill_mask(target.shape, box), target)
    otsu = dice(otsu_box_mask(image, box), target) if image is not None else float("nan")
    return ObjectScore(
        plane=plane, label=int(label), pixels=int(target.sum()), dice=dices[0], iou=ious[0],
        dice_final=dices[-1], iou_final=ious[-1], clicks=len(ious), noc85=n85, noc90=n90,
        reached85=ok85, reached90=ok90, box_fill_dice=fill, otsu_dice=otsu, dices=dices, ious=ious,
    )


@dataclass
class EvaluationReport:
    """Per-object scores and their means (see :meth:`summary`)."""

    prompt: str
    max_clicks: int
    objects: list[ObjectScore]

    def summary(self, per_object: bool = False) -> dict:
        """``dice_mean`` (first interaction), ``iou_mean``, ``dice_final_mean``, ``noc85``,
        ``noc90`` (means), failures, ``n_objects``, the baselines and the means per label id."""
        objs = self.objects

        def mean(values):
            values = [v for v in values if v == v]  # drop NaN
            return float(np.mean(values)) if values else None

        out = {
            "prompt": self.prompt,
            "max_clicks": self.max_clicks,
            "n_objects": len(objs),
            "dice_mean": mean([o.dice for o in objs]),
            "iou_mean": mean([o.iou for o in objs]),
            "dice_final_mean": mean([o.dice_final for o in objs]),
            "noc85": mean([o.noc85 for o in objs]),
            "noc90": mean([o.noc90 for o in objs]),
            "noc85_failures": sum(not o.reached85 for o in objs),
            "noc90_failures": sum(not o.reached90 for o in objs),
            "baselines": {
                "box_fill_dice_mean": mean([o.box_fill_dice for o in objs]),
                "otsu_dice_mean": mean([o.otsu_dice for o in objs]),
            },
            "per_label": {
                str(label): {
                    "n_objects": sum(o.label == label for o in objs),
                    "dice_mean": mean([o.dice for o in objs if o.label == label]),
                    "noc90": mean([o.noc90 for o in objs if o.label == label]),
                }
                for label in sorted({o.label for o in objs})
            },
        }
        if per_object:
            out["objects"] = [asdict(o) for o in objs]
        return out


def evaluate_volume(predict: PlanePredictFn, volume: np.ndarray, labels: np.ndarray, axis: int = 0,
                    prompt: str = "box", max_clicks: int = 20, min_pixels: int = 20,
                    max_objects: Optional[int] = None,
                    progress: Optional[Callable[[int, int], None]] = None) -> EvaluationReport:
    """Evaluate every object (label id with >= ``min_pixels`` pixels on a plane) of a labelled volume.

    ``volume`` and ``labels`` are (plane, row, col) (or 2D); planes are taken along ``axis``, and
    ``predict(plane, points, point_labels, box, mask_input)`` answers on plane ``plane`` (an index
    along ``axis``). ``max_objects`` keeps that many objects spread evenly over the volume.
    ``progress(done, total)`` is called after each object.
    """
    volume = np.asarray(volume)
    labels = np.asarray(labels)
    if volume.shape != labels.shape:
        raise ValueError(f"image shape {volume.shape} and label shape {labels.shape} differ")
    labels = as_label_map(labels, "evaluation labels")
    if volume.ndim == 2:
        volume, labels, axis = volume[None], labels[None], 0
    volume = np.moveaxis(volume, axis, 0)
    labels = np.moveaxis(labels, axis, 0)
    objects = [(p, i) for p in range(labels.shape[0]) for i in object_ids(labels[p], min_pixels)]
    if max_objects is not None and len(objects) > max_objects:
        keep = np.unique(np.linspace(0, len(objects) - 1, max(max_objects, 1)).round().astype(int))
        objects = [objects[k] for k in keep]
    scores = []
    for done, (plane, label) in enumerate(objects, start=1):
        target = labels[plane] == label

        def predict_here(points, point_labels, box, mask_input, _plane=plane):
            return predict(_plane, points, point_labels, box, mask_input)

        scores.append(evaluate_object(predict_here, target, volume[plane], first=prompt, max_clicks=max_clicks,
                                      plane=plane, label=label))
        if progress is not None:
            progress(done, len(objects))
    return EvaluationReport(prompt=prompt, max_clicks=max_clicks, objects=scores)


def segmenter_plane_predictor(segmenter) -> PlanePredictFn:
    """Adapt an engine ``Segmenter`` (after ``set_volume``) to :data:`PlanePredictFn`."""

    def predict(plane, points, point_labels, box, mask_input):
        result = segmenter.predict(points=points, point_labels=point_labels, box=box, mask_input=mask_input,
                                   plane=plane)
        return result.mask, float(result.score), result.logits

    return predict

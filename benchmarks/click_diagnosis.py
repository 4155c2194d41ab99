"""Where a model's clicks go wrong: the pick among a click's three masks, and correction clicks.

    python benchmarks/click_diagnosis.py                      # the shipped samples, built-in model
    python benchmarks/click_diagnosis.py --phantom-seed 1     # phantoms of another seed (tuning data)
    python benchmarks/click_diagnosis.py --model vit_b --max-objects 30

For each volume, up to ``--max-objects`` 2D objects spread over axis 0 (every label id on a plane with
at least 20 pixels, as ``vfmseg evaluate`` chooses them):

- ``pick``: 1-click Dice of the mask the model scores best (the click on the object's most interior
  pixel, as ``vfmseg evaluate --prompt point``);
- ``best_of_three``: Dice of the best of the three masks, which a user reaches with the viewer's
  **M** key (``Segmenter.predict(..., candidate=k)``);
- ``stability_pick``: Dice of the mask with the best stability score instead (SAM's automatic mask
  generator's measure: pixels with logit > 1 over pixels with logit > -1, on the low-res logits);
- ``stability_plus_score_pick``: the mask with the largest predicted IoU + stability score;
- ``box`` and ``box_best_of_four``: Dice of a box's own mask, and of the best of the four masks a
  box alone returns (its own, then the three multimask masks), which a user reaches with **M**;
- ``box_then_clicks``: mean Dice after the tight box and after each of ``--clicks`` correction clicks
  (centre of the largest error, previous logits fed back, multiplied by ``--feedback-scale``; no
  early stop), and how many objects the first click made better or worse by more than 0.005;
- ``negative_first_corrections``: the first correction clicks that are negative (background, the
  box mask spilled over): how many, and their mean Dice for the box alone, box + click with the box's
  logits fed back (times ``--feedback-scale``), and box + click without them (does the click change anything?);
  ``ignored``: how many of them leave the clicked pixel inside the corrected mask.

Prints one JSON line per volume.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from napari_vfmseg.engine import Segmenter
from napari_vfmseg.models import load_model
from napari_vfmseg.training.metrics import bounding_box, correction_click, dice, interactive_protocol, object_ids
from napari_vfmseg.training.prompts import interior_point

SAMPLES = (
    ("sample_data/abdomen_ct", "sample_data/abdomen_ct_labels.nii.gz"),
    ("sample_data/brain_mr.nii.gz", "sample_data/brain_mr_labels.nii.gz"),
)


def _volumes(phantom_seed):
    """(name, volume, labels, modality, spacing) for each volume to diagnose; (plane, row, col) arrays."""
    if phantom_seed is None:
        from napari_vfmseg.io import read_volume

        for image_path, label_path in SAMPLES:
            image, labels = read_volume(image_path), read_volume(label_path)
            yield image_path, image.array, labels.array.astype(np.int64), getattr(image, "modality", None), image.spacing
        return
    from napari_vfmseg.data.phantoms import make_abdomen_ct, make_brain_mr

    for name, make, modality in (("abdomen_ct", make_abdomen_ct, "CT"), ("brain_mr", make_brain_mr, "MR")):
        volume, labels, meta = make(seed=phantom_seed)
        yield f"{name} seed {phantom_seed}", volume, labels.astype(np.int64), modality, meta["spacing"]


def _objects(labels: np.ndarray, max_objects: int) -> list[tuple[int, int]]:
    objects = [(p, i) for p in range(labels.shape[0]) for i in object_ids(labels[p], 20)]
    if len(objects) > max_objects:
        keep = np.unique(np.linspace(0, len(objects) - 1, max_objects).round().astype(int))
        objects = [objects[k] for k in keep]
    return objects


def stability(logits: np.ndarray, offset: float = 1.0) -> float:
    """SAM's stability score of low-res logits (L, L): area above +offset over area above -offset."""
    return float((logits > offset).sum() / max(int((logits > -offset).sum()), 1))


def diagnose(segmenter: Segmenter, labels: np.ndarray, max_objects: int, clicks: int,
             feedback_scale: float = 1.0) -> dict:
    pick, best, stable, stable_scored, boxed_own, boxed_best, curves = [], [], [], [], [], [], []
    negative = {"box": [], "box+click+logits": [], "box+click": []}
    ignored = 0  # negative first corrections whose pixel the corrected mask (logits fed back) still covers
    for plane, label in _objects(labels, max_objects):
        target = labels[plane] == label
        click = np.array([interior_point(target)], dtype=float)
        chosen = segmenter.predict(points=click, point_labels=[1], plane=plane)
        pick.append(dice(chosen.mask, target))
        candidates = [dice(segmenter.predict(points=click, point_labels=[1], plane=plane, candidate=k).mask, target)
                      for k in range(len(chosen.candidate_scores))]
        best.append(max(candidates))
        stabilities = np.array([stability(logits) for logits in chosen.candidate_logits])
        stable.append(candidates[int(np.argmax(stabilities))])
        stable_scored.append(candidates[int(np.argmax(stabilities + chosen.candidate_scores))])

        box = bounding_box(target)
        boxed = segmenter.predict(box=box, plane=plane)
        boxed_own.append(dice(boxed.mask, target))
        boxed_best.append(max(dice(segmenter.predict(box=box, plane=plane, candidate=k).mask, target)
                              for k in range(len(boxed.candidate_scores))))
        fix = correction_click(boxed.mask, target)
        if fix is not None and fix.label == 0:
            point = np.array([[fix.row, fix.col]], dtype=float)
            negative["box"].append(dice(boxed.mask, target))
            for key, logits in (("box+click+logits", boxed.logits * feedback_scale), ("box+click", None)):
                corrected = segmenter.predict(box=box, points=point, point_labels=[0], mask_input=logits, plane=plane)
                negative[key].append(dice(corrected.mask, target))
                if key == "box+click+logits":
                    ignored += int(corrected.mask[fix.row, fix.col])

        def predict(points, point_labels, box, mask_input, _plane=plane):
            if mask_input is not None:
                mask_input = mask_input * feedback_scale
            result = segmenter.predict(points=points, point_labels=point_labels, box=box, mask_input=mask_input, plane=_plane)
            return result.mask, result.score, result.logits

        dices, _ = interactive_protocol(predict, target, first="box", max_clicks=clicks + 1, stop_iou=None)
        curves.append(dices + [dices[-1]] * (clicks + 1 - len(dices)))  # a perfect mask ends the protocol early
    curve = np.asarray(curves)
    return {
        "objects": len(pick),
        "pick": round(float(np.mean(pick)), 3),
        "best_of_three": round(float(np.mean(best)), 3),
        "stability_pick": round(float(np.mean(stable)), 3),
        "stability_plus_score_pick": round(float(np.mean(stable_scored)), 3),
        "box": round(float(np.mean(boxed_own)), 3),
        "box_best_of_four": round(float(np.mean(boxed_best)), 3),
        "box_then_clicks": [round(float(v), 3) for v in curve.mean(axis=0)],
        "first_click_better": int((curve[:, 1] > curve[:, 0] + 0.005).sum()) if clicks else 0,
        "first_click_worse": int((curve[:, 1] < curve[:, 0] - 0.005).sum()) if clicks else 0,
        "negative_first_corrections": {"count": len(negative["box"]), "ignored": ignored,
                                       **{k: round(float(np.mean(v)), 3) for k, v in negative.items() if v}},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin", help="registry name or checkpoint path")
    parser.add_argument("--phantom-seed", type=int, default=None, help="generated phantoms of this seed instead of the samples")
    parser.add_argument("--max-objects", type=int, default=60)
    parser.add_argument("--clicks", type=int, default=5, help="correction clicks after the box")
    parser.add_argument("--feedback-scale", type=float, default=1.0,
                        help="multiply the logits fed back with each correction click (1 = as the engine does)")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    for name, volume, labels, modality, spacing in _volumes(args.phantom_seed):
        segmenter = Segmenter(model)
        segmenter.set_volume(volume, axis=0, modality=modality, spacing=spacing)
        print(json.dumps({"volume": name, "model": model.name, "feedback_scale": args.feedback_scale, **diagnose(segmenter, labels, args.max_objects, args.clicks, args.feedback_scale)}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

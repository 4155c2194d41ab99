"""Adaptation on a real scan: a round on 3 corrected planes of one axis, scored on every other plane.

The real sample (``sample_data/mni_brain_t1.nii.gz``, MNI ICBM152 2009a T1 at 2 mm, labels 1 = white
matter, 2 = the rest of the brain) is the default volume; ``--objects brain`` merges the labels into
one brain mask, ``tissues`` keeps both. The corrected planes are 3 planes of ``--axis`` spread over
the object's extent (at 30, 50 and 70 %). Before and after the round, box and 1-click Dice are
measured on every other plane along every axis (:func:`napari_vfmseg.training.adapt_eval.volume_scores`),
beside the filled-box baseline. ``--other VOLUME LABELS`` scores the same adapter on another volume
(another subject, or the shipped CT sample to show what the adapter costs outside its domain).

Prints a table and one JSON line. Timings depend on the machine's load: the script prints
``os.getloadavg()`` beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _objects(labels: np.ndarray, kind: str) -> np.ndarray:
    if kind == "brain":
        return (labels > 0).astype(np.uint8)
    return labels.astype(np.uint8)


def corrected_planes(labels: np.ndarray, axis: int, count: int = 3) -> list[int]:
    """``count`` planes along ``axis`` spread over the labelled extent (30 % .. 70 % for three)."""
    moved = np.moveaxis(labels, axis, 0)
    filled = np.flatnonzero(moved.reshape(moved.shape[0], -1).any(axis=1))
    first, last = int(filled[0]), int(filled[-1])
    fractions = np.linspace(0.3, 0.7, count) if count > 1 else np.array([0.5])
    return [int(round(first + f * (last - first))) for f in fractions]


def _table(name: str, scores: dict) -> str:
    parts = [f"axis {a}: box {s['box']:.3f} click {s['click']:.3f} (fill {s['box_fill']:.3f})" for a, s in scores.items()]
    return f"{name:<8}" + " | ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volume", default=str(ROOT / "sample_data" / "mni_brain_t1.nii.gz"))
    parser.add_argument("--labels", default=str(ROOT / "sample_data" / "mni_brain_t1_labels.nii.gz"))
    parser.add_argument("--objects", default="brain", choices=("brain", "tissues"))
    parser.add_argument("--axis", type=int, default=0)
    parser.add_argument("--planes", type=int, default=3)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-planes", type=int, default=16, help="scored planes per axis (spread evenly)")
    parser.add_argument("--other", nargs=2, action="append", default=[], metavar=("VOLUME", "LABELS"),
                        help="also score the adapter on this volume (repeatable)")
    parser.add_argument("--other-objects", default="as-is", choices=("as-is", "brain"))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a RoundConfig field (repeatable), e.g. --set steps=60")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from dataclasses import fields, replace

    from napari_vfmseg.io import read_volume
    from napari_vfmseg.models import load_model
    from napari_vfmseg.training.adapt_eval import volume_scores
    from napari_vfmseg.training.rounds import RoundConfig, gather_examples, run_round

    volume = read_volume(args.volume)
    labels = _objects(np.asarray(read_volume(args.labels).array), args.objects)
    image = np.asarray(volume.array)
    spacing = tuple(float(s) for s in volume.scale)
    modality = getattr(volume, "modality", None) or "MR"
    planes = corrected_planes(labels, args.axis, args.planes)
    config = RoundConfig(seed=args.seed)
    types = {f.name: f.type for f in fields(RoundConfig)}
    for item in args.set:
        key, value = item.split("=", 1)
        if key not in types:
            raise SystemExit(f"--set {item}: RoundConfig has no field {key!r}")
        config = replace(config, **{key: json.loads(value) if value[:1] in "0123456789-[{tfn" and value not in ("full", "decoder") else value})

    model = load_model(args.model, device="cpu")
    exclude = {args.axis: planes}
    before = {a: s.summary() for a, s in volume_scores(model, image, labels, spacing, modality=modality, exclude=exclude,
                                                         max_planes=args.max_planes).items()}
    others = []
    for other_volume, other_labels in args.other:
        vol = read_volume(other_volume)
        lab = np.asarray(read_volume(other_labels).array)
        lab = (lab > 0).astype(np.uint8) if args.other_objects == "brain" else lab
        others.append((other_volume, vol, lab))
    other_before = [{a: s.summary() for a, s in volume_scores(model, np.asarray(v.array), lab, tuple(v.scale),
                                                                modality=getattr(v, "modality", None),
                                                                max_planes=args.max_planes).items()}
                    for _, v, lab in others]

    moved_image = np.moveaxis(image, args.axis, 0)
    moved_labels = np.moveaxis(labels, args.axis, 0)
    keep = np.zeros_like(moved_labels)
    keep[planes] = moved_labels[planes]
    pairs = gather_examples(image, np.moveaxis(keep, 0, args.axis), axis=args.axis, modality=modality,
                            spacing=spacing)
    load = os.getloadavg()
    started = time.perf_counter()
    result = run_round(model, pairs, config=config)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()
    if result.improved:
        from napari_vfmseg.training.adapters import apply_adapter_tensors

        apply_adapter_tensors(model, result.tensors, result.info)
    after = {a: s.summary() for a, s in volume_scores(model, image, labels, spacing, modality=modality, exclude=exclude,
                                                        max_planes=args.max_planes).items()}
    other_after = [{a: s.summary() for a, s in volume_scores(model, np.asarray(v.array), lab, tuple(v.scale),
                                                               modality=getattr(v, "modality", None),
                                                               max_planes=args.max_planes).items()}
                   for _, v, lab in others]
    del moved_image
    print(f"corrected planes along axis {args.axis}: {planes}; round {seconds:.1f} s "
          f"(load {load[0]:.2f} → {load_after[0]:.2f}, {args.threads} threads); {result.summary()['notes']}")
    print(_table("before", before))
    print(_table("after", after))
    for (name, _, _), b, a in zip(others, other_before, other_after):
        print(f"other: {name}")
        print(_table("before", b))
        print(_table("after", a))
    print(json.dumps({"config": {f.name: getattr(config, f.name) for f in fields(config)}, "planes": planes,
                      "seconds": round(seconds, 1), "load": [round(load[0], 2), round(load_after[0], 2)],
                      "round": result.summary(), "before": before, "after": after,
                      "others": [{"volume": n, "before": b, "after": a}
                                 for (n, _, _), b, a in zip(others, other_before, other_after)]}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

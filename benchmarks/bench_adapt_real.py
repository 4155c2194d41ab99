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
REFERENCE_SECONDS = 0.32   # calibrate() on a nearly idle 2-core machine
sys.path.insert(0, str(ROOT))


def _objects(labels: np.ndarray, kind: str) -> np.ndarray:
    if kind == "brain":
        return (labels > 0).astype(np.uint8)
    return labels.astype(np.uint8)


def corrected_planes(labels: np.ndarray, axis: int, count: int = 3) -> list[int]:
    """``count`` planes along ``axis`` spread over the labelled extent (30 % .. 70 % for three); all the
    labelled planes when the structure spans no more than ``count``."""
    moved = np.moveaxis(labels, axis, 0)
    filled = np.flatnonzero(moved.reshape(moved.shape[0], -1).any(axis=1))
    first, last = int(filled[0]), int(filled[-1])
    if last - first + 1 <= count:  # a structure only a few planes long: all of them
        return [int(p) for p in filled]
    fractions = np.linspace(0.3, 0.7, count) if count > 1 else np.array([0.5])
    return [int(round(first + f * (last - first))) for f in fractions]


def simulated_subject(image: np.ndarray, labels: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in for another subject of the same kind, derived from ``image``: a smooth random
    deformation (up to about 3 voxels), a multiplicative bias field (about ±15 %), a gamma change and
    noise. Labels follow the deformation (nearest neighbour). Not a real second subject."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = image.shape
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    coords = []
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 8)
        field *= 3.0 / (np.abs(field).max() + 1e-6)
        coords.append(grid[axis] + field)
    warped = ndimage.map_coordinates(image.astype(np.float32), coords, order=1, mode="nearest")
    warped_labels = ndimage.map_coordinates(labels, coords, order=0, mode="nearest").astype(labels.dtype)
    bias = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 16)
    bias = 1.0 + 0.15 * bias / (np.abs(bias).max() + 1e-6)
    scaled = 255.0 * (np.clip(warped, 0, None) / max(float(warped.max()), 1.0)) ** 0.85 * bias
    noisy = scaled + rng.normal(0, 6.0, shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), warped_labels


def calibrate(threads: int) -> float:
    """Seconds for a fixed workload: the built-in encoder's forward and backward on 4 planes of 256 px.
    On the development machine with its 2 cores nearly idle (load 1.8) it took 0.32 s, so
    ``seconds / REFERENCE_SECONDS`` tells how much slower the machine is right now."""
    import torch

    from napari_vfmseg.models.builtin import BuiltinConfig, build_builtin_sam

    torch.set_num_threads(threads)
    encoder = build_builtin_sam(BuiltinConfig()).image_encoder.eval()
    x = torch.randn(4, 3, 256, 256)
    encoder(x).sum().backward()
    started = time.perf_counter()
    for _ in range(3):
        encoder(x).sum().backward()
    return (time.perf_counter() - started) / 3


def _table(name: str, scores: dict) -> str:
    f = lambda v: "  –  " if v is None else f"{v:.3f}"  # noqa: E731 (no object left to score on that axis)
    parts = [f"axis {a}: box {f(s['box'])} click {f(s['click'])} (fill {f(s['box_fill'])})" for a, s in scores.items()]
    return f"{name:<8}" + " | ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volume", default=str(ROOT / "sample_data" / "mni_brain_t1.nii.gz"))
    parser.add_argument("--labels", default=str(ROOT / "sample_data" / "mni_brain_t1_labels.nii.gz"))
    parser.add_argument("--objects", default=None, choices=("brain", "tissues"),
                        help="brain: merge the labels into one object; tissues: one object per label "
                             "(default: tissues for the lung cases, else brain)")
    parser.add_argument("--axis", type=int, default=0)
    parser.add_argument("--planes", type=int, default=3)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-planes", type=int, default=16, help="scored planes per axis (spread evenly)")
    parser.add_argument("--other", nargs=2, action="append", default=[], metavar=("VOLUME", "LABELS"),
                        help="also score the adapter on this volume (repeatable)")
    parser.add_argument("--other-objects", default="as-is", choices=("as-is", "brain"))
    parser.add_argument("--case", default=None,
                        help="a real case of scripts/fetch_real_cases.py (brain1, brain2, lung1, lung2, or lung1-lungs and "
                             "lung2-lungs: the chest CT with right/left lung labels) as the volume")
    parser.add_argument("--other-case", action="append", default=[],
                        help="also score the adapter on this fetched case (another subject), repeatable")
    parser.add_argument("--axes", default="0,1,2", help="axes to score (default 0,1,2)")
    parser.add_argument("--modality", default=None, help="MR or CT when the file does not say (NRRD, NIfTI)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a RoundConfig field (repeatable), e.g. --set steps=60")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--simulated-subject", action="store_true",
                        help="also score a simulated second subject (deformed, bias field, noise) before and after")
    parser.add_argument("--no-zoom", action="store_true",
                        help="score with the engine's zoom for small boxes off (and train without zoomed crops)")
    parser.add_argument("--max-planes-all", action="store_true",
                        help="score every plane with an object (overrides --max-planes)")
    parser.add_argument("--propagate", action="store_true",
                        help="also report 3D Dice of propagation from a box on each object's largest plane")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from dataclasses import fields, replace

    from napari_vfmseg.io import read_volume
    from napari_vfmseg.models import load_model
    from napari_vfmseg.training.adapt_eval import volume_scores
    from napari_vfmseg.training.rounds import RoundConfig, gather_examples, run_round

    if args.case or args.other_case:
        sys.path.insert(0, str(ROOT / "scripts"))
        from fetch_real_cases import case_paths, fetch

        folder = fetch()
        if args.case:
            args.volume, args.labels = (str(p) for p in case_paths(args.case, folder))
        args.other += [[str(p) for p in case_paths(case, folder)] for case in args.other_case]
    axes = tuple(int(a) for a in args.axes.split(","))
    args.objects = args.objects or ("tissues" if (args.case or "").endswith("-lungs") else "brain")
    volume = read_volume(args.volume)
    labels = _objects(np.asarray(read_volume(args.labels).array), args.objects)
    image = np.asarray(volume.array)
    spacing = tuple(float(s) for s in volume.scale)
    modality = args.modality or getattr(volume, "modality", None) or (
        "CT" if (args.case or "").startswith("lung") else "MR")
    planes = corrected_planes(labels, args.axis, args.planes)
    config = RoundConfig(seed=args.seed, zoom_crops=False if args.no_zoom else None)
    zoom = None if args.no_zoom else "auto"
    max_planes = None if args.max_planes_all else args.max_planes
    types = {f.name: f.type for f in fields(RoundConfig)}
    for item in args.set:
        key, value = item.split("=", 1)
        if key not in types:
            raise SystemExit(f"--set {item}: RoundConfig has no field {key!r}")
        config = replace(config, **{key: json.loads(value) if value[:1] in "0123456789-[{tfn" and value not in ("full", "decoder") else value})

    model = load_model(args.model, device="cpu")
    slowdown = max(1.0, calibrate(args.threads) / REFERENCE_SECONDS)
    exclude = {args.axis: planes}
    before = {a: s.summary() for a, s in volume_scores(model, image, labels, spacing, modality=modality, exclude=exclude,
                                                         axes=axes, max_planes=max_planes, zoom=zoom).items()}
    from napari_vfmseg.training.metrics3d import evaluate_volume_3d

    def propagate3d():
        if not args.propagate:
            return None
        from napari_vfmseg.engine import Segmenter

        report = evaluate_volume_3d(image, labels, Segmenter(model, zoom=zoom), axis=args.axis, spacing=spacing, modality=modality,
                                    objects="label")
        return {"dice": report["all"]["dice_mean"],
                "extent_baseline": report["all"]["extent_baseline_dice_mean"]}

    prop_before = propagate3d()
    others = []
    if args.simulated_subject:
        from types import SimpleNamespace

        sim_image, sim_labels = simulated_subject(image, labels, seed=args.seed + 1)
        others.append(("simulated subject", SimpleNamespace(array=sim_image, scale=spacing, modality=modality),
                       sim_labels))
    for other_volume, other_labels in args.other:
        vol = read_volume(other_volume)
        lab = np.asarray(read_volume(other_labels).array)
        lab = (lab > 0).astype(np.uint8) if args.other_objects == "brain" else lab
        others.append((other_volume, vol, lab))
    other_before = [{a: s.summary() for a, s in volume_scores(model, np.asarray(v.array), lab, tuple(v.scale),
                                                                modality=getattr(v, "modality", None) or modality,
                                                                axes=axes, max_planes=max_planes, zoom=zoom).items()}
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
                                                        axes=axes, max_planes=max_planes, zoom=zoom).items()}
    prop_after = propagate3d()
    other_after = [{a: s.summary() for a, s in volume_scores(model, np.asarray(v.array), lab, tuple(v.scale),
                                                               modality=getattr(v, "modality", None) or modality,
                                                               axes=axes, max_planes=max_planes, zoom=zoom).items()}
                   for _, v, lab in others]
    del moved_image
    print(f"corrected planes along axis {args.axis}: {planes}; round {seconds:.1f} s "
          f"(load {load[0]:.2f} → {load_after[0]:.2f}, {args.threads} threads; this machine {slowdown:.1f} x slower "
          f"than a quiet 2-core one: about {seconds / slowdown:.0f} s there); {result.summary()['notes']}")
    print(_table("before", before))
    print(_table("after", after))
    if prop_before is not None:
        print(f"3D propagation (box on each object's largest plane): Dice {prop_before['dice']:.3f} → "
              f"{prop_after['dice']:.3f} (extent baseline {prop_before['extent_baseline']:.3f})")
    for (name, _, _), b, a in zip(others, other_before, other_after):
        print(f"other: {name}")
        print(_table("before", b))
        print(_table("after", a))
    print(json.dumps({"config": {f.name: getattr(config, f.name) for f in fields(config)}, "planes": planes,
                      "seconds": round(seconds, 1), "load": [round(load[0], 2), round(load_after[0], 2)],
                      "slowdown": round(slowdown, 2), "quiet_seconds_estimate": round(seconds / slowdown, 1),
                      "propagation_3d": {"before": prop_before, "after": prop_after},
                      "round": result.summary(), "before": before, "after": after,
                      "others": [{"volume": n, "before": b, "after": a}
                                 for (n, _, _), b, a in zip(others, other_before, other_after)]}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

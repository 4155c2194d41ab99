"""Zoomed crops for small boxes: Dice on real small structures and what a zoomed box costs, beside the whole slice.

For each case (the real lesion and nodule scans of ``scripts/fetch_real_cases.py``, and the MNI
brain mask shipped in ``sample_data/``), every object on every axial plane is prompted by its
tight box and by one interior click, once on the whole slice (``zoom=None``) and once with the
engine's default zoom; the filled box is the baseline. Then the time of one box on an embedded
plane: whole slice, zoomed with a new crop (one encoder pass on the crop), and the same zoomed box
again (crop embedding from memory).

    python benchmarks/bench_zoom.py                 # all cases, built-in model, 2 threads
    python benchmarks/bench_zoom.py --cases brain2,lung1 --json
    python benchmarks/bench_zoom.py --axis 1 --max-pixel-aspect 100 --no-timing   # zoom thick-slice views too

Prints a table and one JSON line. Timings depend on the machine's load (printed beside them).
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

CASES = ("brain1", "brain2", "lung1", "lung2", "mni")


def _case(name: str):
    """(image (plane, row, col), labels as one object map, spacing, modality) of a case."""
    from napari_vfmseg.io import read_volume

    if name == "mni":
        image, labels = (ROOT / "sample_data" / f"mni_brain_t1{s}.nii.gz" for s in ("", "_labels"))
        modality = "MR"
    else:
        sys.path.insert(0, str(ROOT / "scripts"))
        from fetch_real_cases import case_paths, fetch

        image, labels = case_paths(name, fetch())
        modality = "CT" if name.startswith("lung") else "MR"
    volume = read_volume(image)
    mask = (np.asarray(read_volume(labels).array) > 0).astype(np.uint8)
    return np.asarray(volume.array), mask, tuple(float(s) for s in volume.scale), modality


def _timings(model, image, labels, spacing, modality, repeats: int = 5) -> dict:
    """Milliseconds of one box on an embedded plane: whole slice, zoomed (new crop), zoomed again."""
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.training.prompts import bounding_box

    plane = int(np.argmax(labels.reshape(labels.shape[0], -1).sum(axis=1)))
    box = np.asarray(bounding_box(labels[plane] > 0), dtype=np.float64)
    out: dict[str, list[float]] = {"whole": [], "zoom_new_crop": [], "zoom_cached_crop": []}
    whole, zoomed = Segmenter(model, zoom=None), Segmenter(model)
    for segmenter in (whole, zoomed):
        segmenter.set_volume(image, axis=0, modality=modality, spacing=spacing)
        segmenter.embedding(plane)
    for k in range(repeats):
        shifted = box + np.array([0, k % 2, 0, k % 2])  # a new crop each time (1 px moves its pixels)
        start = time.perf_counter()
        whole.predict(box=shifted, plane=plane)
        out["whole"].append(1000 * (time.perf_counter() - start))
        zoomed.memory.clear()
        zoomed.embedding(plane)
        start = time.perf_counter()
        result = zoomed.predict(box=shifted, plane=plane)
        out["zoom_new_crop"].append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        zoomed.predict(box=shifted, plane=plane)
        out["zoom_cached_crop"].append(1000 * (time.perf_counter() - start))
    return {key: round(float(np.median(values)), 1) for key, values in out.items()} | {
        "zoomed": result.crop is not None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {CASES}")
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="plane axis (default 0, axial)")
    parser.add_argument("--context", type=float, default=None, help="ZoomPolicy.context (default: the policy's)")
    parser.add_argument("--max-pixel-aspect", type=float, default=None,
                        help="ZoomPolicy.max_pixel_aspect (default: the policy's, 2)")
    parser.add_argument("--no-timing", action="store_true", help="Dice only")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.models import load_model
    from napari_vfmseg.engine.zoom import ZoomPolicy
    from napari_vfmseg.training.adapt_eval import plane_scores

    overrides = {k: v for k, v in (("context", args.context), ("max_pixel_aspect", args.max_pixel_aspect))
                 if v is not None}
    policy = ZoomPolicy(**overrides) if overrides else "auto"

    model = load_model(args.model, device="cpu")
    rows = []
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}: use some of {CASES}")
        image, labels, spacing, modality = _case(name)
        row: dict = {"case": name}
        for key, zoom in (("whole", None), ("zoomed", policy)):
            segmenter = Segmenter(model, zoom=zoom)
            segmenter.set_volume(image, axis=args.axis, modality=modality, spacing=spacing)
            scores = plane_scores(segmenter, labels, args.axis)
            row[key] = {"box": round(scores.box, 4), "click": round(scores.click, 4)}
            row["box_fill"], row["objects"] = round(scores.box_fill, 4), scores.n_objects
        if not args.no_timing:
            row["ms_per_box"] = _timings(model, image, labels, spacing, modality)
        rows.append(row)
        if not args.json:
            w, z, t = row["whole"], row["zoomed"], row.get("ms_per_box")
            timing = "" if t is None else (f"  ms/box whole {t['whole']}, zoomed {t['zoom_new_crop']} (new crop), "
                                           f"{t['zoom_cached_crop']} (cached)")
            print(f"{name:<7} {row['objects']:>3} objects  fill {row['box_fill']:.3f}  box {w['box']:.3f} → "
                  f"{z['box']:.3f}  click {w['click']:.3f} → {z['click']:.3f}{timing}", flush=True)
    print(json.dumps({"model": args.model, "threads": args.threads, "axis": args.axis, "policy": str(policy),
                      "load": os.getloadavg(), "cases": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

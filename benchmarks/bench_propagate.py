"""3D propagation benchmark: time per plane (uncached, prefetched, cached) and next-plane prompt policies.

    python benchmarks/bench_propagate.py                  # built-in architecture (random weights), timing only
    python benchmarks/bench_propagate.py --model builtin  # a registry model or checkpoint path
    python benchmarks/bench_propagate.py --policies --model builtin   # + next-plane prompt policies
    python benchmarks/bench_propagate.py --threads 1      # steadier timings on a busy machine

Data: the abdomen CT sample (48 x 192 x 192, 4 x 1.6 x 1.6 mm). Timing walks the right kidney from
its largest axial plane to both ends of the volume (stop rules relaxed, so every mode makes the same
47 predictions):

- ``uncached``: empty cache, no prefetch (the walk waits for the encoder on every plane);
- ``prefetched``: empty cache, the next planes embedded in a background thread while it decodes;
- ``cached``: every embedding already in the memory cache (a second walk);
- ``disk``: a new session on a disk cache filled beforehand (``vfmseg embed``);
- ``cached+checks``: as ``cached``, with the appearance checks measuring on every plane (a
  similarity threshold and a trim tolerance so loose that they keep the walk the same length):
  their cost per plane.

``--policies`` runs the 3D protocol (``evaluate_volume_3d``, axis 0) for each next-plane prompt
policy with the oracle (true mask inside the prompt box grown by 2 px: checks the machinery, the
same for every policy whose box margin covers the drift) and, with ``--model``, the model. Prints a
table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Optional

import numpy as np

from napari_vfmseg.data import label_names, load_sample
from napari_vfmseg.engine import PromptPolicy, PropagationConfig, Segmenter, propagate
from napari_vfmseg.training.metrics3d import OracleSegmenter, evaluate_volume_3d, largest_plane

RELAXED = dict(min_score=-np.inf, min_score_ratio=0.0, min_area=1, max_growth=1e6, min_overlap=0.0,
               min_appearance_similarity=0.0, appearance_trim=None)

POLICIES = {
    "box": PromptPolicy(box=True, points=0, logits=False),
    "box+point": PromptPolicy(box=True, points=1, logits=False),
    "box+point+logits": PromptPolicy(box=True, points=1, logits=True),
    "box+logits": PromptPolicy(box=True, points=0, logits=True),
    "point+logits": PromptPolicy(box=False, points=1, logits=True),
    "box(no margin)+point+logits": PromptPolicy(box_margin=0.0, box_margin_px=0.0, points=1, logits=True),
    "box(25%)+point+logits": PromptPolicy(box_margin=0.25, box_margin_px=3.0, points=1, logits=True),
}


def load_benchmark_model(name: Optional[str], device: str):
    """A registry model / checkpoint, or the built-in architecture with random (seeded) weights."""
    if name:
        from napari_vfmseg.models import load_model

        return load_model(name, device=device)
    import torch

    from napari_vfmseg.models.base import LoadedModel, fingerprint_state_dict
    from napari_vfmseg.models.builtin import build_builtin_sam

    torch.manual_seed(0)
    sam = build_builtin_sam().eval()
    return LoadedModel(sam=sam, name="builtin-architecture (random weights)", arch="builtin",
                       device=torch.device("cpu"), fingerprint=fingerprint_state_dict(sam.state_dict()))


def time_modes(model, image: np.ndarray, labels: np.ndarray, label: int = 4, repeat: int = 3) -> dict:
    """Median wall time per predicted plane of each mode over ``repeat`` runs (fresh segmenters each run)."""
    truth = labels == label
    key = largest_plane(truth, 0)
    seeds = {key: truth[key]}
    runs: dict[str, list] = {mode: [] for mode in ("uncached", "prefetched", "cached", "disk", "cached+checks")}
    encoder_ms = []

    def walk(mode, segmenter, **kwargs):
        started = time.perf_counter()
        result = propagate(segmenter, seeds, axis=0, **{**RELAXED, **kwargs})
        seconds = time.perf_counter() - started
        runs[mode].append((seconds / max(len(result.visits), 1), len(result.visits), result.encoder_calls))

    def fresh(cache_dir=None):
        segmenter = Segmenter(model, cache_dir=cache_dir)
        segmenter.set_volume(image, axis=0)
        return segmenter

    walk("uncached", fresh(), prefetch=False, max_planes=1)  # warm-up (first-call allocations), not recorded
    runs["uncached"].clear()
    for _ in range(repeat):
        walk("uncached", fresh(), prefetch=False)
        segmenter = fresh()
        walk("prefetched", segmenter, prefetch=True)
        walk("cached", segmenter, prefetch=True)
        walk("cached+checks", segmenter, prefetch=True, min_appearance_similarity=1e-9, appearance_trim=1e6)
        with tempfile.TemporaryDirectory() as folder:
            filler = fresh(folder)
            started = time.perf_counter()
            encoded = filler.embed_planes()
            encoder_ms.append(1000 * (time.perf_counter() - started) / max(encoded, 1))
            walk("disk", fresh(folder), prefetch=True)
    out: dict = {"label": label, "key_plane": key, "repeat": repeat,
                 "encoder_ms_per_plane": round(float(np.median(encoder_ms)), 1)}
    for mode, values in runs.items():
        out[mode] = {"planes": values[0][1], "ms_per_plane": round(1000 * float(np.median([v[0] for v in values])), 1),
                     "encoder_calls": values[0][2]}
    return out


def compare_policies(model, image, labels, spacing, names) -> dict:
    stand_ins = {"oracle": lambda: OracleSegmenter(labels, 0)}
    if model is not None:
        shared = Segmenter(model)  # one for every policy: embeddings are computed once
        stand_ins["model"] = lambda: shared
    table = {}
    for who, make in stand_ins.items():
        for policy_name, policy in POLICIES.items():
            report = evaluate_volume_3d(image, labels, make(), axis=0, spacing=spacing, label_names=names,
                                        config=PropagationConfig(policy=policy))
            objects = {o["label"]: o for o in report["objects"]}
            table[(who, policy_name)] = {
                "large_dice": report["large"]["dice_mean"],
                "extent_baseline": report["large"]["extent_baseline_dice_mean"],
                "small_dice": report["small"]["dice_mean"],
                "tube_dice": objects[7]["dice"] if 7 in objects else None,
                "ms_per_plane": round(1000 * report["seconds_per_plane"], 2),
            }
    return table


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="registry name or checkpoint (default: built-in architecture, random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--policies", action="store_true", help="also compare next-plane prompt policies")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing part")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: as loaded; 1 is steadier on a busy machine)")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per mode (median reported; default 3)")
    parser.add_argument("--label", type=int, default=4, help="object walked for timing (default 4, right kidney)")
    args = parser.parse_args(argv)

    model = load_benchmark_model(args.model, args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    image_volume, label_volume = load_sample("abdomen_ct")
    image, labels = image_volume.array, label_volume.array
    import torch

    result: dict = {"model": model.name, "shape": list(image.shape), "torch_threads": torch.get_num_threads()}
    if not args.no_timing:
        timing = time_modes(model, image, labels, args.label, args.repeat)
        result["timing"] = timing
        print(f"propagation of label {args.label} along axis 0 from plane {timing['key_plane']}, {model.name}, "
              f"median of {args.repeat}")
        print(f"{'mode':<12}{'planes':>8}{'ms/plane':>10}{'encoder calls':>15}")
        for mode in ("uncached", "prefetched", "cached", "disk", "cached+checks"):
            row = timing[mode]
            print(f"{mode:<12}{row['planes']:>8}{row['ms_per_plane']:>10}{row['encoder_calls']!s:>15}")
        print(f"encoder alone: {timing['encoder_ms_per_plane']} ms per plane")
    if args.policies:
        real = model if args.model else None
        table = compare_policies(real, image, labels, image_volume.spacing, label_names("abdomen_ct"))
        print(f"\n{'segmenter':<8} {'policy':<30}{'large 3D Dice':>14}{'extent base':>12}{'small':>8}{'tube':>8}")
        for (who, policy), row in table.items():
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"{who:<8} {policy:<30}{fmt(row['large_dice']):>14}{fmt(row['extent_baseline']):>12}"
                  f"{fmt(row['small_dice']):>8}{fmt(row['tube_dice']):>8}")
        result["policies"] = {f"{who}|{policy}": row for (who, policy), row in table.items()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

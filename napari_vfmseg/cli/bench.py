"""``vfmseg bench``: the engine against upstream segment-anything, on the same weights, slices and prompts.

Measures, in one run: the encoder per slice (upstream ``SamPredictor.set_image`` vs ``Segmenter``,
one slice at a time with its disk-cache write, and a volume plane by plane, where the writes
overlap the encoder), the per-click cost (p50/p95 of ``predict``), cache hits from memory and from disk, the bytes one
cached embedding takes, and optional approximate encoder modes (bf16, int8) as speed-up and mask IoU
against upstream fp32. Prints a table and one JSON line of figures and ratios. The model is a
random-initialised (seeded) ViT-B — the costs do not depend on the weights — or, with ``--quick``,
a tiny SAM for smoke tests. Also run by ``benchmarks/bench_engine.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Optional

from napari_vfmseg.cli.bench_inputs import Prompt, build_model, make_prompts, phantom_slices, volume_slices


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the engine against upstream segment-anything (table + one JSON line)",
        description=(
            "Compare napari-vfmseg's Segmenter with segment-anything's SamPredictor on the same "
            "random-initialised ViT-B weights, slices and prompts: encoder time per slice, time per "
            "click (p50/p95), cache hits from memory and disk, bytes per cached embedding, and the "
            "approximate encoder modes (--accelerations). Use --quick for a seconds-long smoke run "
            "with a tiny model."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="tiny model and small slices (seconds)")
    parser.add_argument(
        "--model",
        default=None,
        help="registry name or checkpoint to benchmark instead of random ViT-B weights (for agreement figures "
        "that mean something, e.g. of --accelerations)",
    )
    parser.add_argument(
        "--volume",
        default=None,
        help="take the slices from this volume (its middle planes along axis 0, window from its modality) "
        "instead of synthetic CT phantoms",
    )
    parser.add_argument("--slices", type=int, default=2, help="number of slices to encode (default 2)")
    parser.add_argument("--prompts", type=int, default=60, help="number of prompts, spread over the slices (>= 50)")
    parser.add_argument("--size", type=int, default=512, help="slice side in pixels (default 512)")
    parser.add_argument(
        "--accelerations",
        default="bf16,int8",
        help="comma-separated approximate encoder modes to measure (bf16, int8), or 'none' (default bf16,int8)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, slices and prompts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's setting)")
    parser.add_argument("--json-out", metavar="FILE", help="also write the JSON record to FILE")
    parser.set_defaults(func=run)


# --------------------------------------------------------------------------------------------- helpers


def percentile_ms(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1000.0, q))


def iou(a, b) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum()) / union


def upstream_predict(predictor, prompt: Prompt, mask_input, multimask: bool):
    import numpy as np

    from napari_vfmseg.engine.coords import rc_to_xy

    xy = None if prompt.points is None else rc_to_xy(np.asarray(prompt.points, dtype=np.float64))
    box = None  # SamPredictor takes (x0, y0, x1, y1): both corners converted
    if prompt.box is not None:
        box = rc_to_xy(np.asarray(prompt.box, dtype=np.float64).reshape(2, 2)).reshape(4)
    labels = None if prompt.labels is None else np.asarray(prompt.labels)
    masks, scores, low = predictor.predict(
        point_coords=xy, point_labels=labels, box=box,
        mask_input=None if mask_input is None else mask_input[None], multimask_output=multimask,
    )
    best = int(np.argmax(scores)) if multimask else 0
    return masks[best], float(scores[best]), low[best]


# --------------------------------------------------------------------------------------------- benchmark


def run_benchmark(
    quick: bool = False,
    slices: int = 2,
    prompts: int = 60,
    size: int = 512,
    accelerations: tuple[str, ...] = ("bf16", "int8"),
    seed: int = 0,
    log=print,
    model_name: Optional[str] = None,
    volume_path: Optional[str] = None,
) -> dict:
    """Run the comparison and return the record (also logged as a table through ``log``)."""
    import numpy as np
    import torch
    from segment_anything import SamPredictor

    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.io.windowing import CT_PRESETS, apply_window

    if prompts < 1 or slices < 1:
        raise ValueError("--slices and --prompts must be >= 1")
    if model_name is not None:
        from napari_vfmseg.models import load_model

        model = load_model(model_name, device="cpu")
    else:
        model = build_model(quick, seed)
    if volume_path is not None:
        grey, window = volume_slices(volume_path, slices)
        slices = len(grey)
        size = int(min(min(s.shape) for s in grey))
    else:
        size = min(size, 128) if quick else size
        window = CT_PRESETS["soft_tissue"]
        grey = phantom_slices(slices, size, seed)
    rgb = [np.repeat(apply_window(s, window)[..., None], 3, axis=2) for s in grey]
    plan = make_prompts(prompts, slices, size, seed)
    record: dict = {
        "bench": "engine",
        "model": model.name,
        "data": volume_path or "synthetic CT phantom",
        "torch_threads": torch.get_num_threads(),
        "slices": slices,
        "slice_size": size,
        "prompts": prompts,
    }

    import zarr  # noqa: F401 - a one-time import (about 0.25 s) on the first disk write, not a per-slice cost

    with tempfile.TemporaryDirectory(prefix="vfmseg-bench-") as cache_dir:
        # ---- encoder: upstream vs ours, one slice at a time (ours also writes each embedding to the disk cache
        # and waits for the write)
        predictors, upstream_encode, ours_encode = [], [], []
        ours = Segmenter(model, cache_dir=cache_dir, zoom=None)  # like for like with SamPredictor: no zoomed crops
        embedding_cos = []
        if quick:  # one-time kernel set-up would dominate a tiny model's first call
            SamPredictor(model.sam).set_image(rgb[0])
            Segmenter(model, zoom=None).set_image(grey[0], window=window)
        for k in range(slices):
            predictor = SamPredictor(model.sam)
            start = time.perf_counter()
            predictor.set_image(rgb[k])
            upstream_encode.append(time.perf_counter() - start)
            predictors.append(predictor)
            start = time.perf_counter()
            embedding = ours.set_image(grey[k], window=window)
            ours.flush()  # the disk write is part of this figure; the volume figure below overlaps it
            ours_encode.append(time.perf_counter() - start)
            reference = predictor.features[0].flatten().double()
            ours_flat = embedding.features.flatten().double()
            embedding_cos.append(float(torch.nn.functional.cosine_similarity(ours_flat, reference, dim=0)))
            log(f"slice {k}: upstream set_image {upstream_encode[-1]:.2f} s, ours {ours_encode[-1]:.2f} s")

        # ---- a volume embedded plane by plane, as prefetch and `vfmseg embed` do: disk writes overlap the encoder
        stacked = Segmenter(model, cache_dir=os.path.join(cache_dir, "volume"))
        stacked.set_volume(np.stack(grey), axis=0, window=window)
        start = time.perf_counter()
        stacked.embed_planes()
        stacked.flush()
        volume_encode = (time.perf_counter() - start) / slices

        # ---- per click, interleaved upstream/ours on the same prompts
        def ours_on(k: int) -> Segmenter:
            ours.set_image(grey[k], window=window)  # memory hit
            return ours

        upstream_click, ours_click, agreement, ious, score_diff = [], [], [], [], []
        upstream_masks = []
        previous_low: dict[int, np.ndarray] = {}
        for prompt in plan[:3]:  # warm-up, not timed
            upstream_predict(predictors[prompt.slice_index], prompt, None, False)
            ours_on(prompt.slice_index).predict(points=prompt.points, point_labels=prompt.labels, box=prompt.box)
        for prompt in plan:
            k = prompt.slice_index
            segmenter = ours_on(k)
            single = prompt.box is None and len(prompt.points) == 1 and not prompt.use_mask
            mask_input = previous_low.get(k) if prompt.use_mask else None
            if prompt.use_mask and mask_input is None:
                mask_input = np.zeros(tuple(model.sam.prompt_encoder.mask_input_size), dtype=np.float32)
            start = time.perf_counter()
            up_mask, up_score, up_low = upstream_predict(predictors[k], prompt, mask_input, single)
            upstream_click.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = segmenter.predict(points=prompt.points, point_labels=prompt.labels, box=prompt.box, mask_input=mask_input)
            ours_click.append(time.perf_counter() - start)
            previous_low[k] = up_low
            upstream_masks.append(up_mask)
            agreement.append(float((result.mask == up_mask).mean()))
            ious.append(iou(result.mask, up_mask))
            score_diff.append(abs(result.score - up_score))

        # ---- cache hits
        memory_hits = []
        for k in range(slices):
            start = time.perf_counter()
            ours.set_image(grey[k], window=window)
            memory_hits.append(time.perf_counter() - start)
        disk_hits = []
        for k in range(slices):
            fresh = Segmenter(model, cache_dir=cache_dir, zoom=None)
            start = time.perf_counter()
            fresh.set_image(grey[k], window=window)
            disk_hits.append(time.perf_counter() - start)
            assert fresh.encoder_calls == 0, "disk cache miss in the benchmark"
        key = ours._image.key
        memory_bytes = ours.embedding().nbytes
        disk_bytes = ours.disk.entry_bytes(key)

        # ---- approximate encoder modes: speed and mask IoU against upstream fp32
        accel: dict = {}
        for mode in accelerations:
            try:
                approx = Segmenter(model, accelerate=mode, zoom=None)
                times = []
                for k in range(slices):
                    start = time.perf_counter()
                    approx.set_image(grey[k], window=window)
                    times.append(time.perf_counter() - start)
            except (ValueError, RuntimeError) as exc:
                accel[mode] = {"error": str(exc)}
                continue
            mode_ious = []
            for prompt, up_mask in zip(plan, upstream_masks):
                if prompt.use_mask:
                    continue  # its mask_input came from upstream's previous click
                approx.set_image(grey[prompt.slice_index], window=window)
                result = approx.predict(points=prompt.points, point_labels=prompt.labels, box=prompt.box)
                mode_ious.append(iou(result.mask, up_mask))
            accel[mode] = {
                "encode_s": float(np.mean(times)),
                "speedup_vs_upstream": float(np.mean(upstream_encode) / np.mean(times)),
                "iou_mean": float(np.mean(mode_ious)),
                "iou_min": float(np.min(mode_ious)),
            }

    encode_up, encode_ours = float(np.mean(upstream_encode)), float(np.mean(ours_encode))
    record.update(
        {
            "encode_s_upstream": encode_up,
            "encode_s_ours": encode_ours,
            "encode_speedup": encode_up / encode_ours,
            "encode_s_ours_volume": volume_encode,
            "encode_speedup_volume": encode_up / volume_encode,
            "embedding_cosine_min": float(min(embedding_cos)),
            "click_p50_ms_upstream": percentile_ms(upstream_click, 50),
            "click_p95_ms_upstream": percentile_ms(upstream_click, 95),
            "click_p50_ms_ours": percentile_ms(ours_click, 50),
            "click_p95_ms_ours": percentile_ms(ours_click, 95),
            "click_ratio_p50": percentile_ms(ours_click, 50) / percentile_ms(upstream_click, 50),
            "click_ratio_p95": percentile_ms(ours_click, 95) / percentile_ms(upstream_click, 95),
            "mask_pixel_agreement_min": float(min(agreement)),
            "mask_iou_min": float(min(ious)),
            "score_abs_diff_max": float(max(score_diff)),
            "mask_foreground_fraction_mean": float(np.mean([m.mean() for m in upstream_masks])),
            "memory_hit_ms": 1000 * float(np.median(memory_hits)),
            "disk_hit_ms": 1000 * float(np.median(disk_hits)),
            "memory_hit_speedup": encode_ours / float(np.median(memory_hits)),
            "disk_hit_speedup": encode_ours / float(np.median(disk_hits)),
            "memory_bytes_per_slice": int(memory_bytes),
            "disk_bytes_per_slice": int(disk_bytes),
            "accelerations": accel,
        }
    )
    log(format_table(record))
    return record


def format_table(r: dict) -> str:
    rows = [
        ("encoder per slice (s)", f"{r['encode_s_upstream']:.3f}", f"{r['encode_s_ours']:.3f}", f"{r['encode_speedup']:.2f}x faster"),
        ("volume, per slice (s)", f"{r['encode_s_upstream']:.3f}", f"{r['encode_s_ours_volume']:.3f}", f"{r['encode_speedup_volume']:.2f}x faster"),
        ("click p50 (ms)", f"{r['click_p50_ms_upstream']:.1f}", f"{r['click_p50_ms_ours']:.1f}", f"{r['click_ratio_p50']:.2f}x upstream"),
        ("click p95 (ms)", f"{r['click_p95_ms_upstream']:.1f}", f"{r['click_p95_ms_ours']:.1f}", f"{r['click_ratio_p95']:.2f}x upstream"),
        ("cache hit, memory (ms)", "-", f"{r['memory_hit_ms']:.1f}", f"{r['memory_hit_speedup']:.0f}x faster than encoding"),
        ("cache hit, disk (ms)", "-", f"{r['disk_hit_ms']:.1f}", f"{r['disk_hit_speedup']:.0f}x faster than encoding"),
        ("bytes per embedding", "-", f"{r['memory_bytes_per_slice']} mem / {r['disk_bytes_per_slice']} disk", ""),
        ("masks vs upstream", "-", f"pixels {r['mask_pixel_agreement_min']:.5f} / IoU {r['mask_iou_min']:.4f}", f"score diff {r['score_abs_diff_max']:.1e}"),
    ]
    for mode, figures in r["accelerations"].items():
        if "error" in figures:
            rows.append((f"encoder {mode}", "-", "unavailable", figures["error"]))
        else:
            rows.append(
                (f"encoder {mode} (s)", f"{r['encode_s_upstream']:.3f}", f"{figures['encode_s']:.3f}",
                 f"{figures['speedup_vs_upstream']:.2f}x, IoU mean {figures['iou_mean']:.4f} min {figures['iou_min']:.4f}")
            )
    header = ("measure", "upstream", "ours", "ratio")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = [f"model {r['model']}, {r['slices']} slices of {r['slice_size']} px, {r['prompts']} prompts, {r['torch_threads']} torch threads"]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)


def summary_line(record: dict) -> str:
    """The one JSON line: the figures and ratios, rounded."""

    def rounded(value):
        if isinstance(value, float):
            return round(value, 5)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return value

    return json.dumps(rounded(record), sort_keys=False)


def run(args: argparse.Namespace) -> int:
    from napari_vfmseg.cli import UserError

    if args.prompts < 50 and not args.quick:
        raise UserError(f"--prompts {args.prompts}: use at least 50 prompts for stable percentiles")
    modes = tuple(m for m in (s.strip() for s in args.accelerations.split(",")) if m and m != "none")
    unknown = [m for m in modes if m not in ("bf16", "int8", "sdpa")]
    if unknown:
        raise UserError(f"--accelerations: unknown mode(s) {unknown}; choose from bf16, int8")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    record = run_benchmark(
        args.quick, args.slices, args.prompts, args.size, modes, args.seed, model_name=args.model, volume_path=args.volume
    )
    line = summary_line(record)
    print(line)
    if args.json_out:
        from napari_vfmseg.io.atomic import write_text_atomic

        write_text_atomic(args.json_out, line + "\n")
    return 0

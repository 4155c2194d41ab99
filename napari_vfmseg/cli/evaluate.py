"""``vfmseg evaluate``: Dice and NoC of a model (and adapter) on a labelled volume, beside baselines."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from napari_vfmseg.cli.segment import add_appearance_arguments, appearance_overrides


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model on a labelled volume: Dice, NoC@85/90 and trivial box baselines",
        description=(
            "Every label id on every plane of LABELS along --axis (with at least --min-pixels pixels) "
            "is one object. The first prompt is the object's tight box or its most interior point; "
            "each next click goes to the centre of the largest error region, up to --max-clicks. "
            "Reports the first-prompt Dice and IoU, NoC@85/NoC@90, and the Dice of two baselines "
            "computed on the same objects: the filled box and Otsu's threshold inside the box."
        ),
    )
    parser.add_argument("volume", metavar="VOLUME", help="image file or DICOM folder")
    parser.add_argument("labels", metavar="LABELS", help="label map with the same shape as VOLUME")
    parser.add_argument("--model", default=None, help="registry name or checkpoint path (default: official weights present on this machine, else the built-in model)")
    parser.add_argument("--adapter", default=None, help="adapter file (.safetensors) to apply to the model")
    parser.add_argument("--prompt", default="box", choices=("box", "point"), help="first prompt (default: box)")
    parser.add_argument("--max-clicks", type=int, default=20, help="interactions per object (default 20)")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="plane axis (default 0)")
    parser.add_argument("--window", default="auto",
                        help="intensity window: auto, percentile, a CT preset (soft_tissue, lung, bone, "
                             "brain) or LEVEL,WIDTH")
    parser.add_argument("--min-pixels", type=int, default=20, help="ignore smaller objects (default 20)")
    parser.add_argument("--max-objects", type=int, default=None,
                        help="evaluate at most this many objects, spread evenly over the volume")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder to use")
    parser.add_argument("--no-zoom", action="store_true",
                        help="segment small boxes on the whole slice (default: on a zoomed crop around them for "
                             "models with a small encoder, such as the built-in one)")
    parser.add_argument("--3d", dest="three_d", action="store_true",
                        help="3D protocol: one box on each object's largest plane, propagate through the "
                             "volume, 3D Dice and volume error beside the repeated-seed baselines")
    add_appearance_arguments(parser)
    parser.add_argument("--per-object", action="store_true", help="with --json: include every object's scores")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_vfmseg.cli import model_argument
    import time

    from napari_vfmseg.cli import UserError
    from napari_vfmseg.cli.embed import parse_window
    from napari_vfmseg.cli.finetune import _read_pair
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.models import load_model
    from napari_vfmseg.training.adapters import apply_adapter
    from napari_vfmseg.training.metrics import evaluate_volume, segmenter_plane_predictor

    if args.max_clicks < 1:
        raise UserError("--max-clicks must be >= 1")
    if args.max_objects is not None and args.max_objects < 1:
        raise UserError("--max-objects must be >= 1")
    appearance = appearance_overrides(args)  # checked before anything is read or loaded
    if appearance and not args.three_d:
        raise UserError("--appearance and --appearance-trim only apply with --3d")
    window = parse_window(args.window)
    volume, labels = _read_pair(args.volume, args.labels)
    array = volume.array if volume.array.ndim == 3 else volume.array[None]
    label_array = labels.array if labels.array.ndim == 3 else labels.array[None]
    axis = args.axis if volume.array.ndim == 3 else 0
    model = load_model(model_argument(args.model), device=args.device)
    if args.adapter:
        apply_adapter(model, args.adapter)
    segmenter = Segmenter(model, cache_dir=args.cache_dir, zoom=None if args.no_zoom else "auto")
    if args.three_d:
        return _run_3d(args, volume, labels, segmenter, window, model, appearance)
    segmenter.set_volume(array, axis=axis, window=window, modality=getattr(volume, "modality", None),
                         spacing=volume.spacing if volume.array.ndim == 3 else (1.0, *volume.spacing))

    bar = None
    if not args.json:
        from tqdm import tqdm

        bar = tqdm(unit="object", desc=f"evaluating ({args.prompt})")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(1)

    started = time.perf_counter()
    try:
        report = evaluate_volume(segmenter_plane_predictor(segmenter), array, label_array, axis=axis,
                                 prompt=args.prompt, max_clicks=args.max_clicks, min_pixels=args.min_pixels,
                                 max_objects=args.max_objects, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if not report.objects:
        raise UserError(f"{args.labels}: no object of at least {args.min_pixels} pixels along axis {axis}")
    summary = {
        "volume": str(args.volume),
        "labels": str(args.labels),
        "model": model.name,
        "adapter": args.adapter,
        "axis": axis,
        **report.summary(per_object=args.per_object),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if args.json:
        print(json.dumps(summary))
        return 0

    def fmt(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    base = summary["baselines"]
    print(f"{summary['n_objects']} objects, first prompt: {args.prompt}, model {model.name}"
          + (f" + adapter {args.adapter}" if args.adapter else ""))
    print(f"  Dice (first prompt)     {fmt(summary['dice_mean'])}")
    print(f"  IoU (first prompt)      {fmt(summary['iou_mean'])}")
    print(f"  Dice (last interaction) {fmt(summary['dice_final_mean'])}")
    print(f"  NoC@85 / NoC@90         {fmt(summary['noc85'], 2)} / {fmt(summary['noc90'], 2)}"
          f"  (not reached: {summary['noc85_failures']} / {summary['noc90_failures']})")
    print(f"  baseline: box filled    {fmt(base['box_fill_dice_mean'])}")
    print(f"  baseline: Otsu in box   {fmt(base['otsu_dice_mean'])}")
    for label, row in summary["per_label"].items():
        print(f"  label {label:>4}: {row['n_objects']:>4} objects, Dice {fmt(row['dice_mean'])}, "
              f"NoC@90 {fmt(row['noc90'], 2)}")
    return 0


def _run_3d(args: argparse.Namespace, volume, labels, segmenter, window, model, appearance: dict) -> int:
    """``--3d``: propagate from one box per object (``appearance``: overrides of the model's preset);
    print the 3D report (JSON or a short table)."""
    from napari_vfmseg.cli import UserError
    from napari_vfmseg.engine.propagate import PropagationConfig, segmenter_model
    from napari_vfmseg.training.metrics3d import evaluate_volume_3d

    if volume.array.ndim != 3 or getattr(volume, "is_rgb", False):
        raise UserError(f"{args.volume}: --3d needs a 3D volume, got shape {volume.array.shape}")
    config = replace(PropagationConfig.for_model(segmenter_model(segmenter)), **appearance)
    report = evaluate_volume_3d(volume.array, labels.array, segmenter, axis=args.axis, min_size_mm=20.0,
                                spacing=volume.spacing, window=window, modality=getattr(volume, "modality", None),
                                config=config)
    report = {"volume": str(args.volume), "labels": str(args.labels), "model": model.name,
              "adapter": args.adapter, "axis": args.axis, **report}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"3D evaluation along axis {args.axis}, model {model.name}")
    for group in ("large", "small", "all"):
        row = report.get(group)
        if isinstance(row, dict) and row.get("n_objects"):
            print(f"  {group:<6} {row['n_objects']:>3} objects  " + "  ".join(
                f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
    return 0

"""``vfmseg segment``: segment an object from a box (and points) on a plane; optionally propagate in 3D."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from napari_vfmseg.cli.embed import add_series_argument

_BOX_HELP = 'PLANE,ROW0,COL0,ROW1,COL1 on a plane along --axis (inclusive pixel indices); repeat for more key planes'
_POINTS_HELP = 'one or more "PLANE,ROW,COL[,LABEL]" separated by ";" (LABEL 1 = object, the default; 0 = background)'


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment an object from a box or points on a plane, optionally propagated through the volume",
        description=(
            "Segment one object of VOLUME from prompts on one or more planes along --axis (each plane with "
            "prompts is a key plane) and write the mask as a label file with the volume's exact geometry. "
            "Without --propagate only the key planes are segmented; with it the mask is carried plane by "
            "plane through the volume from the key planes until the object ends (see docs/3d.md). "
            "Coordinates are (plane, row, col) array indices in napari's order."
        ),
    )
    parser.add_argument("volume", metavar="VOLUME", help="image file or DICOM folder (anything vfmseg reads)")
    parser.add_argument("--box", action="append", default=[], metavar="P,R0,C0,R1,C1", help=_BOX_HELP)
    parser.add_argument("--points", default=None, metavar='"P,R,C[,L];..."', help=_POINTS_HELP)
    parser.add_argument("--propagate", action="store_true", help="propagate the key-plane masks through the volume")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="plane axis (0 = axial for CT; default 0)")
    parser.add_argument("--model", default=None, help="registry name or checkpoint path (default: official weights present on this machine, else the built-in model)")
    parser.add_argument("--adapter", default=None, help="adapter file (.safetensors) to apply to the model")
    parser.add_argument("--out", default=None, metavar="MASK",
                        help="label file to write (.nii.gz, .nii, .nrrd, .mha, .mhd; default: VOLUMENAME_mask.nii.gz "
                             "here), or a .dcm DICOM-SEG referencing the source series when VOLUME is a DICOM folder")
    parser.add_argument("--name", default=None, help="name of the object (the DICOM-SEG segment's label)")
    add_series_argument(parser)
    parser.add_argument("--label", type=int, default=1, help="value of the object in the written mask (default 1)")
    parser.add_argument("--window", default="auto",
                        help="intensity window: auto, percentile, a CT preset (soft_tissue, lung, bone, brain) or LEVEL,WIDTH")
    parser.add_argument("--min-score", type=float, default=None,
                        help="propagation stops where the predicted IoU falls below this (default 0.5)")
    add_appearance_arguments(parser)
    parser.add_argument("--largest-component", action="store_true", help="keep only the largest 3D connected part")
    parser.add_argument("--fill-holes", action="store_true", help="fill holes in the mask plane by plane")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder to use")
    parser.add_argument("--no-zoom", action="store_true",
                        help="segment small boxes on the whole slice (default: on a zoomed crop around them for "
                             "models with a small encoder, such as the built-in one)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary instead of text")
    parser.set_defaults(func=run)


def add_appearance_arguments(parser: argparse.ArgumentParser) -> None:
    """The propagation options on the object's intensities (shared by ``segment`` and ``evaluate --3d``)."""
    parser.add_argument("--appearance", type=float, default=None, metavar="S",
                        help="propagation stops where the mask's intensities look like neither the key plane's "
                             "object nor the previous plane's (histogram similarity below S, 0..1; 0 = off; "
                             "default: the model's preset, 0.6 for the built-in model, off for others)")
    parser.add_argument("--appearance-trim", default=None, metavar="T",
                        help="drop predicted pixels more than T spreads outside the object's intensity range, or "
                             "'off' (default: the model's preset, 0.25 for the built-in model, off for others)")


def appearance_overrides(args: argparse.Namespace) -> dict:
    """``PropagationConfig`` fields from ``--appearance`` and ``--appearance-trim`` (empty: the model's preset)."""
    from napari_vfmseg.cli import UserError

    overrides: dict = {}
    if args.appearance is not None:
        if not 0.0 <= args.appearance <= 1.0:
            raise UserError(f"--appearance must be between 0 and 1 (0 = off), got {args.appearance}")
        overrides["min_appearance_similarity"] = float(args.appearance)
    if args.appearance_trim is not None:
        text = str(args.appearance_trim).strip().lower()
        if text in ("off", "none"):
            overrides["appearance_trim"] = None
        else:
            try:
                value = float(text)
            except ValueError:
                raise UserError(f"--appearance-trim must be a number >= 0 or 'off', got {args.appearance_trim!r}") from None
            if not value >= 0:
                raise UserError(f"--appearance-trim must be a number >= 0 or 'off', got {args.appearance_trim!r}")
            overrides["appearance_trim"] = value
    return overrides


@dataclass
class KeyPlane:
    """Prompts on one plane: an optional box (row0, col0, row1, col1) and points (row, col) with labels."""

    plane: int
    box: Optional[tuple[float, float, float, float]] = None
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def _numbers(text: str, what: str, example: str) -> list[float]:
    from napari_vfmseg.cli import UserError

    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"{what} {text!r}: expected numbers separated by commas, e.g. {example}") from None
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise UserError(f"{what} {text!r}: numbers must be finite")
    return values


def _plane_index(value: float, what: str, text: str) -> int:
    from napari_vfmseg.cli import UserError

    if value != int(value):
        raise UserError(f"{what} {text!r}: the plane must be a whole number, got {value:g}")
    return int(value)


def parse_prompts(boxes: list[str], points: Optional[str]) -> dict[int, KeyPlane]:
    """``--box`` strings and the ``--points`` string → key plane index → :class:`KeyPlane`."""
    from napari_vfmseg.cli import UserError

    keys: dict[int, KeyPlane] = {}
    for text in boxes:
        values = _numbers(text, "--box", "12,40,50,90,110")
        if len(values) != 5:
            raise UserError(f"--box {text!r}: expected 5 numbers PLANE,ROW0,COL0,ROW1,COL1, got {len(values)}")
        plane = _plane_index(values[0], "--box", text)
        if plane in keys:
            raise UserError(f"--box {text!r}: plane {plane} already has a box; give one box per plane")
        r0, c0, r1, c1 = values[1:]
        keys[plane] = KeyPlane(plane, (min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1)))
    if points is not None:
        items = [item.strip() for item in points.split(";") if item.strip()]
        if not items:
            raise UserError(f"--points {points!r}: no point given")
        for item in items:
            values = _numbers(item, "--points", "12,60,70,1")
            if len(values) not in (3, 4):
                raise UserError(
                    f"--points {item!r}: expected PLANE,ROW,COL or PLANE,ROW,COL,LABEL, got {len(values)} numbers"
                )
            plane = _plane_index(values[0], "--points", item)
            label = 1 if len(values) == 3 else values[3]
            if label not in (0, 1):
                raise UserError(f"--points {item!r}: LABEL must be 1 (object) or 0 (background), got {label:g}")
            key = keys.setdefault(plane, KeyPlane(plane))
            key.points.append((values[1], values[2]))
            key.labels.append(int(label))
    if not keys:
        raise UserError("give at least one prompt: --box PLANE,ROW0,COL0,ROW1,COL1 or --points \"PLANE,ROW,COL\"")
    for key in keys.values():
        if key.box is None and key.labels and not any(key.labels):
            raise UserError(
                f"plane {key.plane}: background points alone do not define an object; add a box or a point with label 1"
            )
    return keys


def check_prompts(keys: dict[int, KeyPlane], shape: tuple[int, int, int], axis: int) -> None:
    """Every key plane and coordinate must lie inside the volume of ``shape`` seen along ``axis``."""
    from napari_vfmseg.cli import UserError

    count = shape[axis]
    rows, cols = (s for i, s in enumerate(shape) if i != axis)
    for key in keys.values():
        if not 0 <= key.plane < count:
            raise UserError(f"plane {key.plane} is outside the volume: axis {axis} has {count} planes (0..{count - 1})")
        if key.box is not None:
            r0, c0, r1, c1 = key.box
            if r0 < 0 or c0 < 0 or r1 > rows - 1 or c1 > cols - 1:
                raise UserError(
                    f"box (row0={r0:g}, col0={c0:g}, row1={r1:g}, col1={c1:g}) on plane {key.plane} is outside "
                    f"the plane of {rows} rows x {cols} cols (axis {axis})"
                )
        for row, col in key.points:
            if not (0 <= row <= rows - 1 and 0 <= col <= cols - 1):
                raise UserError(
                    f"point (row={row:g}, col={col:g}) on plane {key.plane} is outside the plane of {rows} rows x "
                    f"{cols} cols (axis {axis})"
                )


def default_output(volume_path: str) -> Path:
    """``<volume name without extensions>_mask.nii.gz`` in the current folder."""
    from napari_vfmseg.io.formats import strip_suffix

    return Path.cwd() / f"{strip_suffix(volume_path) or 'volume'}_mask.nii.gz"


def run(args: argparse.Namespace) -> int:
    from napari_vfmseg.cli import model_argument
    import numpy as np

    from napari_vfmseg.cli import UserError
    from napari_vfmseg.cli.embed import parse_window, read_scan
    from napari_vfmseg.io import SUPPORTED_LABEL_EXTENSIONS, write_labels
    from napari_vfmseg.io.formats import DICOM_SUFFIXES, path_extension

    keys = parse_prompts(args.box, args.points)
    window = parse_window(args.window)
    if not 1 <= args.label <= 2**32 - 1:
        raise UserError(f"--label must be a positive whole number, got {args.label}")
    if args.min_score is not None and not args.propagate:
        raise UserError("--min-score only applies with --propagate")
    appearance = appearance_overrides(args)
    if appearance and not args.propagate:
        raise UserError("--appearance and --appearance-trim only apply with --propagate")
    out = Path(args.out) if args.out else default_output(args.volume)
    as_seg = path_extension(out) in DICOM_SUFFIXES
    if path_extension(out) not in SUPPORTED_LABEL_EXTENSIONS and not as_seg:
        raise UserError(f"--out {out}: cannot write labels there; use one of {', '.join(SUPPORTED_LABEL_EXTENSIONS)}, "
                        "or .dcm (DICOM-SEG) for a DICOM series")

    volume = read_scan(args.volume, args.series, "segment")
    if as_seg and (volume.metadata.get("format") != "DICOM" or volume.array.ndim != 3):
        raise UserError(f"--out {out}: a DICOM-SEG references the DICOM series it was drawn on; {args.volume} is not "
                        "a DICOM series folder. Use .nii.gz, .nrrd or .mha")
    if volume.is_rgb:
        raise UserError(f"{args.volume}: segment works on grey 2D images and 3D volumes, not RGB photos")
    array = volume.array if volume.array.ndim == 3 else volume.array[None]
    axis = args.axis if volume.array.ndim == 3 else 0
    if volume.array.ndim == 2 and args.axis != 0:
        raise UserError(f"{args.volume} is a 2D image: use --axis 0 and plane 0")
    check_prompts(keys, array.shape, axis)

    from napari_vfmseg.engine import Segmenter, propagate
    from napari_vfmseg.engine.propagate import PropagationConfig, segmenter_model
    from napari_vfmseg.models import load_model

    started = time.perf_counter()
    model = load_model(model_argument(args.model), device=args.device)
    if args.adapter:
        from napari_vfmseg.training.adapters import apply_adapter

        apply_adapter(model, args.adapter)
    segmenter = Segmenter(model, cache_dir=args.cache_dir, zoom=None if args.no_zoom else "auto")
    segmenter.set_volume(array, axis=axis, window=window, modality=getattr(volume, "modality", None),
                         spacing=volume.spacing if volume.array.ndim == 3 else (1.0, *volume.spacing))

    seeds = {}
    key_scores = {}
    for plane in sorted(keys):
        key = keys[plane]
        prediction = segmenter.predict(points=key.points or None, point_labels=key.labels or None, box=key.box,
                                       plane=plane)
        seeds[plane] = prediction
        key_scores[plane] = float(prediction.score)

    result = None
    if args.propagate:
        config = replace(
            PropagationConfig.for_model(segmenter_model(segmenter)),
            largest_component=args.largest_component,
            fill_holes=args.fill_holes,
            **({} if args.min_score is None else {"min_score": args.min_score}),
            **appearance,
        )
        bar = None
        if not args.json:
            from tqdm import tqdm

            bar = tqdm(unit="plane", desc=f"propagating along axis {axis}")

        def progress(done: int, total: int, plane: int) -> None:
            if bar is not None:
                bar.total = total
                bar.n = done
                bar.refresh()

        try:
            result = propagate(segmenter, seeds, axis=axis, config=config, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        mask = result.mask
    else:
        mask = np.zeros(array.shape, dtype=bool)
        for plane, prediction in seeds.items():
            index = [slice(None)] * 3
            index[axis] = plane
            mask[tuple(index)] = prediction.mask
    seconds = time.perf_counter() - started

    labels = np.where(mask, np.uint32(args.label), np.uint32(0))  # stored as the smallest type that holds it
    if volume.array.ndim == 2:
        labels = labels[0]
    if as_seg:
        from napari_vfmseg.io.dicom_seg import write_dicom_seg

        written = write_dicom_seg(out, labels, like=volume, names={args.label: args.name or "object"},
                                  model=model.name, adapter=Path(args.adapter).name if args.adapter else None)
    else:
        written = write_labels(out, labels, like=volume)

    voxels = int(np.count_nonzero(mask))
    voxel_mm3 = float(np.prod(volume.spacing)) if volume.array.ndim == 3 else None
    summary = {
        "volume": str(args.volume),
        "out": str(written),
        "model": model.name,
        "axis": axis,
        "shape": list(volume.array.shape),
        "key_planes": sorted(keys),
        "key_plane_scores": {str(k): round(v, 4) for k, v in key_scores.items()},
        "propagated": bool(args.propagate),
        "voxels": voxels,
        "volume_ml": None if voxel_mm3 is None else round(voxels * voxel_mm3 / 1000.0, 4),
        "seconds": round(seconds, 3),
    }
    if result is not None:
        summary["propagation"] = result.summary()
    if voxels == 0:
        print(f"vfmseg segment: warning: the mask is empty (key-plane scores {summary['key_plane_scores']})",
              file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
        return 0
    planes = result.planes if result is not None else [p for p in sorted(keys) if seeds[p].mask.any()]
    extent = f"planes {planes[0]}..{planes[-1]}" if planes else "no plane"
    print(f"{voxels} voxels ({extent} along axis {axis}"
          + (f", {summary['volume_ml']} mL" if summary["volume_ml"] is not None else "") + f") → {written}")
    if result is not None:
        for stop in result.stops:
            way = "up" if stop.direction > 0 else "down"
            print(f"  from plane {stop.seed} {way}: last plane {stop.last_plane}, stopped: {stop.reason}")
    return 0

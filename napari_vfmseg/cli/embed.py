"""``vfmseg embed``: precompute a volume's plane embeddings into the disk cache."""

from __future__ import annotations

import argparse
import json
import time


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="precompute the image embeddings of a volume into a cache folder",
        description=(
            "Run the model's image encoder on every plane of VOLUME along --axis and store the "
            "embeddings (float16, zarr) in --cache-dir. Later sessions (napari, CLI, Python) that open "
            "the same planes with the same model, window and cache folder skip the encoder. Planes "
            "already in the cache are not computed again."
        ),
    )
    parser.add_argument("volume", metavar="VOLUME", help="image file or DICOM folder (anything vfmseg reads)")
    parser.add_argument("--model", default=None, help="registry name or checkpoint path (default: official weights present on this machine, else the built-in model)")
    parser.add_argument("--cache-dir", required=True, help="folder of the embedding cache (created if missing)")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="plane axis (0 = axial for CT; default 0)")
    parser.add_argument(
        "--window",
        default="auto",
        help="intensity window: auto, percentile, a CT preset (soft_tissue, lung, bone, brain) or LEVEL,WIDTH",
    )
    add_series_argument(parser)
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    parser.add_argument(
        "--accelerate",
        default="sdpa",
        choices=("sdpa", "none", "bf16", "int8"),
        help="encoder mode: sdpa (default, exact), none (upstream), bf16 or int8 (approximate)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="planes per encoder call (default 1 CPU, 4 GPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary instead of a progress bar")
    parser.set_defaults(func=run)


def add_series_argument(parser: argparse.ArgumentParser) -> None:
    """``--series UID``: which DICOM series of a folder to read (shared by ``embed`` and ``segment``)."""
    parser.add_argument("--series", default=None, metavar="UID",
                        help="SeriesInstanceUID to read when VOLUME is a DICOM folder holding several series "
                             "(default: the one with the most slices; the others are named in a warning)")


def read_scan(path: str, series, command: str):
    """``read_volume(path, series=series)``, its warnings (a missing slice, several series, an oblique
    scan) printed as one ``vfmseg COMMAND: warning: ...`` line each on stderr."""
    import sys
    import warnings

    from napari_vfmseg.io import read_volume

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        volume = read_volume(path, series=series)
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"vfmseg {command}: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return volume


def parse_window(text: str):
    """'auto', a preset or method name, or 'LEVEL,WIDTH' → the window choice the engine takes.

    "auto" becomes None, exactly what the viewer's "auto" passes, so both resolve it with
    :func:`napari_vfmseg.io.windowing.model_window` to the same pixels and the same cache entries.
    """
    from napari_vfmseg.cli import UserError

    if text is None or text.strip().lower() == "auto":
        return None

    if "," in text:
        try:
            level, width = (float(part) for part in text.split(","))
        except ValueError:
            raise UserError(f"--window {text!r}: expected LEVEL,WIDTH as two numbers, e.g. 40,400") from None
        if width <= 0:
            raise UserError(f"--window {text!r}: the width must be > 0")
        return (level, width)
    return text


def run(args: argparse.Namespace) -> int:
    from napari_vfmseg.cli import model_argument
    from napari_vfmseg.cli import UserError
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.models import load_model

    window = parse_window(args.window)
    volume = read_scan(args.volume, args.series, "embed")
    array = volume.array
    if getattr(volume, "is_rgb", False) or array.ndim != 3:
        raise UserError(f"{args.volume}: embed needs a 3D volume; got an array of shape {array.shape}")
    model = load_model(model_argument(args.model), device=args.device)
    segmenter = Segmenter(model, cache_dir=args.cache_dir, accelerate=args.accelerate, batch_size=args.batch_size)
    resolved = segmenter.set_volume(array, axis=args.axis, window=window, modality=getattr(volume, "modality", None),
                                    spacing=volume.spacing)
    count = segmenter.plane_count

    started = time.perf_counter()
    if args.json:
        encoded = segmenter.embed_planes()
    else:
        from tqdm import tqdm

        with tqdm(total=count, unit="plane", desc=f"embedding axis {args.axis}") as bar:
            encoded = segmenter.embed_planes(callback=lambda done, total, plane: bar.update(1))
    segmenter.flush()  # the last embeddings are still being written
    seconds = time.perf_counter() - started

    summary = {
        "volume": str(args.volume),
        "model": model.name,
        "cache_dir": str(segmenter.disk.root),
        "axis": args.axis,
        "planes": count,
        "encoded": encoded,
        "from_cache": count - encoded,
        "window": None if resolved is None else {"level": resolved.level, "width": resolved.width, "name": resolved.name},
        "accelerate": args.accelerate,
        "seconds": round(seconds, 2),
        "seconds_per_encoded_plane": round(seconds / encoded, 3) if encoded else None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{count} planes along axis {args.axis}: {encoded} encoded, {count - encoded} already cached "
            f"in {seconds:.1f} s → {summary['cache_dir']}"
        )
    return 0

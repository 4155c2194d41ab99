"""``vfmseg demo``: open a sample volume in napari; headless, write a screenshot and a summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="open a sample volume in napari (headless: screenshot + summary)",
        description=(
            "Open a shipped sample volume in napari. With --headless (or when no display is set) "
            "the viewer runs on a virtual display and the command writes screenshots of the viewer "
            "and a JSON summary of the loaded volume to --out."
        ),
    )
    parser.add_argument("--sample", default="abdomen_ct", help="sample name (default: abdomen_ct)")
    parser.add_argument("--headless", action="store_true", help="no window: write files and exit")
    parser.add_argument("--out", default="vfmseg-demo", help="output folder for headless runs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_vfmseg._display import has_display

    if args.headless or not has_display():
        return run_headless(args.sample, Path(args.out))
    return run_interactive(args.sample)


def run_interactive(sample: str) -> int:
    import napari

    viewer = napari.Viewer(title=f"napari-vfmseg demo: {sample}")
    _populate(viewer, sample)
    napari.run()
    return 0


def run_headless(sample: str, out: Path) -> int:
    from napari_vfmseg._display import ensure_display

    out.mkdir(parents=True, exist_ok=True)
    with ensure_display():
        import napari

        viewer = napari.Viewer(title=f"napari-vfmseg demo: {sample}", show=False)
        try:
            summary = _populate(viewer, sample)
            shots = _screenshots(viewer, out)
        finally:
            viewer.close()
    summary["screenshots"] = [str(p) for p in shots]
    summary_path = out / "volume_summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    print(json.dumps({"sample": sample, "summary": str(summary_path), "screenshots": summary["screenshots"]}))
    return 0


def _populate(viewer, sample: str) -> dict:
    """Add the sample image and its ground truth, centred on a mid plane; return the summary."""
    from napari_vfmseg._sample_data import load_sample_layers
    from napari_vfmseg.data import sample_paths
    from napari_vfmseg.io import read_volume

    for data, kwargs, layer_type in load_sample_layers(sample):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    image_path, _ = sample_paths(sample)
    summary = read_volume(image_path).summary()
    summary = json.loads(json.dumps(summary, default=_jsonable))
    summary["sample"] = sample
    return summary


def _screenshots(viewer, out: Path) -> list[Path]:
    """Axial and coronal views at the middle of the volume (the coronal one shows the mm aspect)."""
    from napari_vfmseg._screenshot import save_screenshot

    shots = []
    viewer.dims.order = (0, 1, 2)
    viewer.reset_view()
    shots.append(save_screenshot(viewer, out / "demo_axial.png"))
    viewer.dims.order = (1, 0, 2)
    viewer.reset_view()
    shots.append(save_screenshot(viewer, out / "demo_coronal.png"))
    viewer.dims.order = (0, 1, 2)
    return shots


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return str(value)

"""``vfmseg demo``: a sample volume in napari with the "Segment (VFM)" widget docked.

Interactive: the viewer opens with the sample, its ground truth and the widget. Headless
(``--headless``, or no display): the same flow on a virtual display — load the sample, put a box
around a ground-truth organ (the liver of the CT, on its largest plane, 3 px margin), segment,
propagate through the volume (3D samples), commit, and write screenshots of the real viewer, the
labels (with the scan's geometry), the object table and a JSON summary; the last stdout line is one
JSON object with the Dice against the ground truth (on the prompted plane, and in 3D), the model,
the time to embed the plane, the time per click and the time to propagate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

# The organ the headless demo segments in each sample (a name from the sample's label names).
DEMO_TARGETS = {"abdomen_ct": "liver", "brain_mr": "ventricles", "ultrasound_2d": "organ"}
BOX_MARGIN = 3  # pixels around the organ's bounding box


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="open a sample volume in napari with the segmentation widget (headless: segment, screenshot, summary)",
        description=(
            "Open a shipped sample volume in napari with the 'Segment (VFM)' widget docked. With "
            "--headless (or when no display is set) the viewer runs on a virtual display: a box is "
            "placed around a ground-truth organ, segmented and committed, and screenshots of the "
            "viewer, the labels (with the scan's geometry), the object table and a JSON summary are "
            "written to --out; the last line printed is JSON with the Dice against the ground truth."
        ),
    )
    parser.add_argument("--sample", default="abdomen_ct", help="sample name (default: abdomen_ct)")
    parser.add_argument("--headless", action="store_true", help="no window: run the flow, write files and exit")
    parser.add_argument("--out", default="vfmseg-demo", help="output folder for headless runs")
    parser.add_argument(
        "--model",
        default=None,
        help="registry model name or checkpoint file (default: official weights present on this machine, "
        "else the built-in model)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_vfmseg._display import has_display

    if args.headless or not has_display():
        code = run_headless(args.sample, Path(args.out), model=args.model)
        # Every file and the JSON line are written by now. Qt's and torch's threads sometimes abort
        # the interpreter's teardown after a headless viewer ("terminate called without an active
        # exception"); a finished run must not exit with that, so leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return run_interactive(args.sample, model=args.model)


def _model_source(model: Optional[str]):
    """The ModelSource for ``--model`` (a registry name or a file), or the default; None if there is none."""
    from napari_vfmseg.cli import UserError
    from napari_vfmseg.models import model_names
    from napari_vfmseg.annotation.model_choice import ModelSource, default_model_name

    if model is None:
        name = default_model_name()
        return None if name is None else ModelSource(name=name)
    if model in model_names():
        return ModelSource(name=model)
    if Path(model).expanduser().is_file():
        return ModelSource(checkpoint=str(Path(model).expanduser()))
    raise UserError(f"--model {model!r} is neither a registry model ({', '.join(model_names())}) nor a checkpoint file")


def _import_torch_first() -> None:
    """Load torch (and triton, through torchvision) before napari starts OpenGL: see annotation._gl_compat."""
    import napari_vfmseg.engine  # noqa: F401


def run_interactive(sample: str, model: Optional[str] = None) -> int:
    _import_torch_first()
    import napari

    source = _model_source(model) if model is not None else None
    viewer = napari.Viewer(title=f"napari-vfmseg demo: {sample}")
    _populate(viewer, sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-vfmseg", "Segment (VFM)")
    if source is not None:
        widget.load_model(source)
    napari.run()
    return 0


def run_headless(sample: str, out: Path, model: Optional[str] = None, segmenter=None) -> int:
    """The demo without a screen. ``segmenter`` (scripts, tests) replaces loading ``model``."""
    from napari_vfmseg._display import ensure_display

    source = None if segmenter is not None else _model_source(model)
    out.mkdir(parents=True, exist_ok=True)
    _import_torch_first()
    with ensure_display():
        import napari

        viewer = napari.Viewer(title=f"napari-vfmseg demo: {sample}", show=False)
        try:
            viewer.window.resize(1500, 950)
            summary = _populate(viewer, sample)
            shots = _screenshots(viewer, out)
            if segmenter is None and source is not None:
                segmenter = _load(source)
            if segmenter is None:
                from napari_vfmseg.annotation.model_choice import NO_MODEL_HELP

                result = {"segmentation": "skipped", "reason": NO_MODEL_HELP}
                print(f"vfmseg demo: segmentation skipped: {NO_MODEL_HELP}", file=sys.stderr)
            else:
                result = segment_sample(viewer, sample, segmenter, out)
                shots += [Path(result["preview_screenshot"]), Path(result["screenshot"])]
        finally:
            viewer.close()
    summary["screenshots"] = [str(p) for p in shots]
    summary_path = out / "volume_summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    print(json.dumps({"sample": sample, "summary": str(summary_path), "screenshots": summary["screenshots"], **result}))
    return 0


def _load(source):
    from napari_vfmseg.annotation.model_choice import load_engine

    return load_engine(source, cache_dir=None)


def segment_sample(viewer, sample: str, segmenter, out: Path, timeout: float = 600.0) -> dict:
    """Dock the widget, box the sample's demo organ on its largest plane, segment, commit, export.

    Returns what the demo reports: model, device, organ, plane, box, Dice on that plane, time to
    embed the plane (s), time per click (ms), and the files written.
    """
    import numpy as np

    from napari_vfmseg.data import label_names
    from napari_vfmseg._screenshot import save_screenshot
    from napari_vfmseg.widgets.annotator import AnnotatorWidget

    image = viewer.layers[sample]
    truth = np.asarray(viewer.layers[f"{sample} ground truth"].data)
    organ = DEMO_TARGETS.get(sample) or next(iter(label_names(sample).values()))
    label = next(k for k, v in label_names(sample).items() if v == organ)
    viewer.layers[f"{sample} ground truth"].visible = False   # the ground truth is for scoring, not for display
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget, name="Segment (VFM)", area="right")
    try:
        widget.set_image_layer(image)
        plane_index, box = organ_box(truth, label, BOX_MARGIN)
        if truth.ndim == 3:
            world = image.data_to_world((plane_index, 0, 0))
            axis = [a for a in viewer.dims.not_displayed][0]
            step = list(viewer.dims.point)
            step[axis] = world[axis]
            viewer.dims.point = step
        widget.use_segmenter(segmenter)
        plane = widget.current_plane()
        _wait(lambda: widget.plane_embedded(plane), timeout)
        embed_seconds = widget.stats["embed_seconds"]
        started = time.perf_counter()
        widget.add_box(box, plane)
        _wait(lambda: not widget.busy and widget.session.mask(plane) is not None, timeout)
        round_trip_ms = (time.perf_counter() - started) * 1000.0
        predicted = widget.session.mask(plane)
        expected = (truth[plane_index] if truth.ndim == 3 else truth) == label
        dice = _dice(predicted, expected)
        widget.activate_box()
        preview_shot = save_screenshot(viewer, out / "demo_preview.png")
        three_d = _propagate(widget, truth == label, timeout) if truth.ndim == 3 else {}
        record = widget.commit(name=organ)
        viewer.layers.selection.active = widget.labels_layer
        shot = save_screenshot(viewer, out / "demo_segment.png")
        if three_d.get("dice_3d") is not None:
            three_d["coronal_screenshot"] = str(_coronal_screenshot(viewer, out / "demo_segment_coronal.png"))
        exported = widget.export(out / "demo_labels.nii.gz")
    finally:
        widget.shutdown()
    model = segmenter.model
    return {
        "model": model.name,
        "device": str(model.device),
        "organ": organ,
        "label": int(label),
        "plane": plane_index if truth.ndim == 3 else None,
        "box": [round(float(v), 1) for v in box],
        "dice": round(float(dice), 4),
        "dice_scope": "the prompted plane" if truth.ndim == 3 else "the image",
        "voxels": int(record.voxels),
        "embed_seconds": None if embed_seconds is None else float(f"{float(embed_seconds):.4g}"),
        "click_ms": float(f"{float(widget.stats['predict_ms'][-1]):.4g}"),
        "click_round_trip_ms": round(round_trip_ms, 1),
        "encoder_calls": int(segmenter.encoder_calls),
        "labels": str(exported.labels),
        "objects_csv": str(exported.csv),
        "objects_json": str(exported.json),
        "screenshot": str(shot),
        "preview_screenshot": str(preview_shot),
        **three_d,
    }


def _propagate(widget, expected, timeout: float) -> dict:
    """Press Propagate on the segmented plane and wait; the 3D Dice of the preview against ``expected``
    (bool (plane, row, col)), the planes it covers, why each direction stopped and how long it took."""
    panel = widget.propagate_panel
    if not panel.propagate():
        return {"propagation": "not started: " + (panel.unavailable_reason() or "busy")}
    _wait(lambda: not widget.engine.propagating and not widget.busy, timeout)
    result = panel.last_result
    if result is None or result.cancelled:
        return {"propagation": "did not finish"}
    planes = result.planes
    return {
        "dice_3d": round(_dice(widget.session.preview != 0, expected), 4),
        "planes_3d": [planes[0], planes[-1]] if planes else None,
        "propagate_seconds": round(result.seconds, 2),
        "propagate_stops": [stop.reason for stop in result.stops],
    }


def _coronal_screenshot(viewer, path: Path) -> Path:
    """The committed object seen across the planes (a coronal view through the volume's middle)."""
    from napari_vfmseg._screenshot import save_screenshot

    order = viewer.dims.order
    viewer.dims.order = (1, 0, 2)   # the annotator turns the camera head-up itself
    viewer.reset_view()
    try:
        return save_screenshot(viewer, path)
    finally:
        viewer.dims.order = order
        viewer.reset_view()


def organ_box(truth, label: int, margin: int):
    """(plane index, box (row0, col0, row1, col1)) of ``label``'s largest plane (axis 0) with ``margin`` px.

    For a 2D label map the plane index is 0. The box is clipped to the image.
    """
    import numpy as np

    mask = np.asarray(truth) == label
    if not mask.any():
        raise ValueError(f"label {label} is absent from the ground truth")
    if mask.ndim == 3:
        plane_index = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
        plane = mask[plane_index]
    else:
        plane_index, plane = 0, mask
    rows, cols = np.nonzero(plane)
    box = (
        max(rows.min() - margin, 0),
        max(cols.min() - margin, 0),
        min(rows.max() + margin, plane.shape[0] - 1),
        min(cols.max() + margin, plane.shape[1] - 1),
    )
    return plane_index, tuple(float(v) for v in box)


def _dice(predicted, expected) -> float:
    """The project's one Dice (:func:`napari_vfmseg.training.metrics.dice`), on any boolean-like masks."""
    import numpy as np

    from napari_vfmseg.training.metrics import dice

    return dice(np.asarray(predicted, bool), np.asarray(expected, bool))


def _wait(condition, timeout: float) -> None:
    """Run the Qt event loop until ``condition()`` holds (scripts only; the widget never blocks)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + timeout
    while not condition():
        app.processEvents()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo waited more than {timeout:.0f} s for the model")
        time.sleep(0.005)


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
    from napari_vfmseg._view_orientation import show_head_up

    shots = []
    if viewer.dims.ndim < 3:
        viewer.reset_view()
        return [save_screenshot(viewer, out / "demo_image.png")]
    viewer.dims.order = (0, 1, 2)
    viewer.reset_view()
    shots.append(save_screenshot(viewer, out / "demo_axial.png"))
    viewer.dims.order = (1, 0, 2)
    show_head_up(viewer)   # no annotator yet: turn the camera as it would
    viewer.reset_view()
    shots.append(save_screenshot(viewer, out / "demo_coronal.png"))
    viewer.dims.order = (0, 1, 2)
    show_head_up(viewer)
    viewer.reset_view()
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

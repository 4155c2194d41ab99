"""The widget's life in a viewer: opened from the plugin menu of a running napari (a fresh
interpreter, so a crash fails the test instead of killing pytest), and closed by removing its
dock, after which nothing of it stays behind: no key binding, no event handler, no engine."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest

from _tiny_models import synthetic_volume, tiny_loaded_model
from napari_vfmseg.widgets.annotator import AnnotatorWidget

TIMEOUT = 10_000

PLUGIN_MENU_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    def wait(condition, seconds=240.0):
        end = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > end:
                raise SystemExit("timed out")
            QApplication.processEvents()
            time.sleep(0.01)

    viewer = napari.Viewer(show=False)          # the viewer (and OpenGL) first, as a user starts napari
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, size=(6, 64, 64)).astype(np.float32)
    image[:, 20:44, 16:40] += 80
    viewer.add_image(image, name="img")
    print("torch before the widget:", "torch" in sys.modules, flush=True)
    before = {str(k) for k in viewer.keymap}
    dock, widget = viewer.window.add_plugin_dock_widget("napari-vfmseg", "Segment (VFM)")
    wait(lambda: widget.segmenter is not None and widget.engine_ready and not widget.busy)   # loaded on a worker
    widget.add_box((18.0, 14.0, 46.0, 42.0))     # what a drag in box mode does
    wait(lambda: not widget.busy and widget.session.mask(widget.current_plane()) is not None)
    record = widget.commit()
    print("committed voxels:", record.voxels, flush=True)
    objects = widget.labels_layer
    viewer.window.remove_dock_widget(dock)
    left = sorted({str(k) for k in viewer.keymap} - before)
    print("closed:", widget.closed, "keys left:", left, flush=True)
    print("layers:", [layer.name for layer in viewer.layers], flush=True)
    widget.closing.join(60)
    print("engine closed:", not widget.closing.is_alive(), "objects kept:", int((objects.data > 0).sum()), flush=True)
    sys.exit(0 if widget.closed and not left else 1)
    """
)


def test_import_of_the_widget_module_loads_no_torch():
    code = "import sys, napari_vfmseg.widgets.annotator; print(sorted(m for m in ('torch', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_open_from_the_plugin_menu_of_a_running_viewer_segment_and_close(tmp_path):
    env = dict(os.environ, VFMSEG_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", PLUGIN_MENU_SCRIPT], capture_output=True, text=True, timeout=600,
                         env=env, cwd=tmp_path)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr[-4000:]}"
    lines = out.stdout.splitlines()
    assert "torch before the widget: False" in lines
    voxels = int(next(line for line in lines if line.startswith("committed voxels:")).split(":")[1])
    assert voxels > 0
    assert "closed: True keys left: []" in lines
    layers = next(line for line in lines if line.startswith("layers:"))
    assert "img objects" in layers and "preview" not in layers and "points" not in layers.lower()
    assert f"engine closed: True objects kept: {voxels}" in lines


@pytest.fixture(scope="module")
def model():
    return tiny_loaded_model(seed=3)


def _callbacks_of(emitter, target) -> list:
    """The callbacks of a napari event emitter that belong to ``target`` (bound methods, or closures)."""
    found = []
    for callback in list(emitter.callbacks):
        owner = callback[0]() if isinstance(callback, tuple) and isinstance(callback[0], weakref.ref) else \
            (callback[0] if isinstance(callback, tuple) else getattr(callback, "__self__", None))
        if owner is target:
            found.append(callback)
    return found


def _open_docked(viewer, qtbot, model):
    widget = AnnotatorWidget(viewer, autoload=False)
    dock = viewer.window.add_dock_widget(widget, name="Segment (VFM)")
    widget.use_model(model, cache_dir=None)
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy and not widget.prefetching, timeout=TIMEOUT)
    return dock, widget


def test_closing_the_dock_shuts_the_widget_down_and_reopening_starts_clean(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer(show=False)
    image, _ = synthetic_volume(planes=6, size=64, seed=2)
    viewer.add_image(image, name="mr")
    viewer.dims.set_current_step(0, 3)
    keys_before = {str(k) for k in viewer.keymap}
    dock, widget = _open_docked(viewer, qtbot, model)
    prompt_layers = [layer.name for layer in widget.prompts.layers()] + [widget.preview_layer.name]
    points = widget.prompts.points
    assert {str(k) for k in points.keymap} >= {"Enter", "Escape", "Ctrl+Z", "Ctrl+Shift+Z", "M", "T"}
    assert {str(k) for k in viewer.keymap} == keys_before          # nothing bound on the viewer itself
    widget.add_box((12.0, 8.0, 40.0, 38.0))
    qtbot.waitUntil(lambda: not widget.busy and widget.session.mask(widget.current_plane()) is not None, timeout=TIMEOUT)
    first = widget.commit()
    objects = widget.labels_layer
    emitters = [viewer.layers.events.inserted, viewer.layers.events.removed, viewer.dims.events.current_step,
                viewer.dims.events.order, viewer.dims.events.ndisplay, objects.events.paint]
    assert all(_callbacks_of(e, widget) for e in emitters)         # the check below can see a connection
    segmenter = weakref.ref(widget.segmenter)

    viewer.window.remove_dock_widget(dock)                         # what the dock's close button does
    assert widget.closed
    assert {str(k) for k in viewer.keymap} == keys_before
    assert not any(_callbacks_of(e, widget) for e in emitters)
    assert not any(name in viewer.layers for name in prompt_layers)
    assert "mr objects" in viewer.layers and int((objects.data == first.id).sum()) == first.voxels   # work kept
    assert widget.segmenter is None and widget.session is None
    widget.closing.join(30)
    assert not widget.closing.is_alive()
    del widget, dock
    gc.collect()
    assert segmenter() is None                                     # the engine and its caches are freed

    dock2, again = _open_docked(viewer, qtbot, model)              # re-opening starts clean
    try:
        assert again.labels_layer.unique_id == objects.unique_id and first.id in again.session.table
        again.add_box((12.0, 30.0, 40.0, 60.0))
        qtbot.waitUntil(lambda: not again.busy and again.session.mask(again.current_plane()) is not None, timeout=TIMEOUT)
        second = again.commit()
        assert second.id == first.id + 1 and int((objects.data == second.id).sum()) == second.voxels
    finally:
        viewer.window.remove_dock_widget(dock2)
    assert again.closed and {str(k) for k in viewer.keymap} == keys_before

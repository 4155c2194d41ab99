"""What the status line and notifications say when the input is odd: a scan with NaN/Inf voxels
segments where it has finite ones and names a plane that has none; damaged disk-cache entries are
recomputed and their count shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _tiny_models import synthetic_volume, tiny_loaded_model
from napari_vfmseg.annotation.planes import Plane
from napari_vfmseg.engine import Segmenter
from napari_vfmseg.widgets.annotator import AnnotatorWidget

TIMEOUT = 10_000
BOX = (12.0, 8.0, 40.0, 38.0)


@pytest.fixture(scope="module")
def model():
    return tiny_loaded_model(seed=3)


def _messages(level):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if str(n.severity).lower().endswith(level)]


def _open(viewer, qtbot, model, cache_dir=None):
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget)
    widget.use_model(model, cache_dir=cache_dir)
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy and not widget.prefetching, timeout=TIMEOUT)
    return widget


def test_nan_and_inf_voxels_segment_and_an_all_nan_plane_is_named(make_napari_viewer, qtbot, model):
    from napari.utils.notifications import notification_manager

    image, _ = synthetic_volume(planes=6, size=64, seed=2)
    image = image.astype(np.float32)
    image[3, 20:30, 15:25] = np.nan
    image[3, 0:2] = np.inf
    image[5] = np.nan
    viewer = make_napari_viewer(show=False)
    viewer.add_image(image, name="mr")
    viewer.dims.set_current_step(0, 3)
    widget = _open(viewer, qtbot, model)
    try:
        reference = Segmenter(model)
        reference.set_volume(image, axis=0)
        expected = reference.predict(box=BOX, plane=3)
        assert np.isfinite(expected.logits).all() and expected.mask.any()
        widget.add_box(BOX)
        qtbot.waitUntil(lambda: not widget.busy and widget.session.mask(Plane(0, 3)) is not None, timeout=TIMEOUT)
        np.testing.assert_array_equal(widget.session.mask(Plane(0, 3)), expected.mask)
        assert widget.commit() is not None

        notification_manager.records.clear()
        viewer.dims.set_current_step(0, 5)
        qtbot.waitUntil(lambda: "no finite voxel" in widget.model_panel.status_label.text(), timeout=TIMEOUT)
        assert widget.model_panel.status_label.text().startswith(Plane(0, 5).describe())
        widget.add_box(BOX)
        qtbot.waitUntil(lambda: not widget.busy and any("no finite pixel" in m for m in _messages("warning")), timeout=TIMEOUT)
        assert not _messages("error") and widget.session.mask(Plane(0, 5)) is None   # said, not failed
        viewer.dims.set_current_step(0, 2)                                           # still usable elsewhere
        widget.clear_prompts()
        widget.add_box(BOX)
        qtbot.waitUntil(lambda: not widget.busy and widget.session.mask(Plane(0, 2)) is not None, timeout=TIMEOUT)
        assert widget.commit() is not None
    finally:
        widget.shutdown()


def test_damaged_cache_entries_are_recomputed_and_counted_in_the_status_line(make_napari_viewer, qtbot, model, tmp_path):
    image, _ = synthetic_volume(planes=4, size=64, seed=5)
    viewer = make_napari_viewer(show=False)
    viewer.add_image(image, name="mr")
    first = _open(viewer, qtbot, model, cache_dir=tmp_path / "cache")
    assert first.segmenter.flush(30)
    assert "damaged" not in first.model_panel.status_label.text()
    first.shutdown()
    first.closing.join(30)
    chunks = [p for p in Path(tmp_path / "cache").rglob("*") if p.is_file() and "features" in p.parts and p.name != "zarr.json"]
    assert chunks
    for chunk in chunks:                                  # every stored embedding damaged on disk
        chunk.write_bytes(b"\0" * max(1, chunk.stat().st_size // 2))
    again = _open(viewer, qtbot, model, cache_dir=tmp_path / "cache")
    try:
        damaged = again.segmenter.stats.damaged_entries
        assert damaged == 4 and again.segmenter.stats.disk_hits == 0 and again.segmenter.encoder_calls == 4
        again._update_status()
        assert f"{damaged} damaged cache entries recomputed" in again.model_panel.status_label.text()
    finally:
        again.shutdown()

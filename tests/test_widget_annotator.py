"""The "Segment (VFM)" dock widget in a real napari viewer, with a tiny random SAM.

These tests check mechanics, not segmentation quality: the preview equals what the engine
returns for the same prompts on that plane, commits write it under a new id, undo restores
exactly, exports re-read identically with geometry, and the embedding cache is used.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt
from qtpy.QtTest import QTest

from _tiny_models import synthetic_volume, tiny_loaded_model
from napari_vfmseg._layer_geometry import GEOMETRY_KEY
from napari_vfmseg.engine import Segmenter
from napari_vfmseg.io import read_volume
from napari_vfmseg.widgets.annotator import AnnotatorWidget
from napari_vfmseg.annotation.objects import colour_for
from napari_vfmseg.annotation.planes import Plane

SCALE = (3.0, 0.8, 0.9)
TRANSLATE = (5.0, -2.0, 1.0)
TIMEOUT = 10_000


@pytest.fixture(scope="module")
def model():
    return tiny_loaded_model(seed=3)


@pytest.fixture(scope="module")
def volume():
    return synthetic_volume(planes=10, size=64, seed=2)


def _add_volume(viewer, image, name="mr"):
    geometry = {"spacing": list(SCALE), "origin": list(TRANSLATE), "direction": np.eye(3).tolist(), "modality": "MR"}
    return viewer.add_image(image, name=name, scale=SCALE, translate=TRANSLATE, metadata={GEOMETRY_KEY: geometry})


def _open(viewer, qtbot, model=None, wait_prefetch=True):
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget, name="Segment (VFM)")
    if model is not None:
        widget.use_model(model, cache_dir=None)
        qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy, timeout=TIMEOUT)
        if wait_prefetch and widget.session.ndim == 3:
            qtbot.waitUntil(lambda: not widget.prefetching, timeout=TIMEOUT)
    return widget


def _settle(widget, qtbot):
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)


def _reference(model, image, axis=0):
    reference = Segmenter(model)
    reference.set_volume(image, axis=axis, window=None, modality="MR", spacing=SCALE)  # as the viewer's layer
    return reference


def _messages(level=None):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if level is None or str(n.severity).lower().endswith(level)]


@pytest.fixture
def open_annotator(make_napari_viewer, qtbot, model, volume):
    """Factory: a viewer on plane 5 of the test volume with the widget docked and the tiny model loaded."""
    from napari.utils.notifications import notification_manager

    widgets = []

    def factory(show: bool = False):
        notification_manager.records.clear()
        viewer = make_napari_viewer(show=show)   # real mouse clicks need a shown canvas
        _add_volume(viewer, volume[0])
        viewer.dims.set_current_step(0, 5)
        widget = _open(viewer, qtbot, model)
        widgets.append(widget)
        return viewer, widget

    yield factory
    for widget in widgets:
        widget.shutdown()


@pytest.fixture
def annotator(open_annotator):
    return open_annotator(show=False)


def test_box_and_correction_click_preview_equals_engine_then_commit_and_undo(annotator, model, volume, qtbot):
    viewer, widget = annotator
    image, truth = volume
    plane = widget.current_plane()
    assert plane == Plane(0, 5)
    assert widget.segmenter.encoder_calls == 10 and widget.plane_embedded(plane)  # every plane, once
    reference = _reference(model, image)
    box = (12.0, 8.0, 40.0, 38.0)
    widget.add_box(box)
    _settle(widget, qtbot)
    first = reference.predict(box=box, plane=5)
    np.testing.assert_array_equal(widget.session.preview[5].astype(bool), first.mask)
    assert widget.session.preview[[0, 1, 2, 3, 4, 6, 7, 8, 9]].sum() == 0

    widget.add_point((20.0, 25.0), positive=False)  # a correction click: previous logits fed back
    _settle(widget, qtbot)
    second = reference.predict(points=[(20.0, 25.0)], point_labels=[0], box=box, mask_input=first.logits, plane=5)
    np.testing.assert_array_equal(widget.session.preview[5].astype(bool), second.mask)
    assert widget.segmenter.encoder_calls == 10  # clicks on a cached plane never run the encoder
    assert widget.stats["predict_ms"][-1] < 100  # a correction click on a cached plane (typically ~10 ms here)

    labels = widget.labels_layer.data
    before = labels.copy()
    record = widget.commit()
    assert record.id == 1 and widget.labels_layer.selected_label == 1
    np.testing.assert_array_equal(labels[5] == 1, second.mask)
    assert labels.sum() == second.mask.sum()
    assert len(widget.prompts.points.data) == 0 and len(widget.prompts.boxes.data) == 0
    assert widget.session.preview.sum() == 0
    widget.undo()
    np.testing.assert_array_equal(labels, before)
    assert widget.objects_panel.rowCount() == 0
    widget.redo()
    np.testing.assert_array_equal(labels[5] == 1, second.mask)
    assert widget.objects_panel.row_values(0)["voxels"] == f"{int(second.mask.sum()):,}"


def test_prefetching_ends_only_when_the_viewer_knows_every_embedded_plane(make_napari_viewer, qtbot, model, volume):
    viewer = make_napari_viewer(show=False)
    _add_volume(viewer, volume[0])
    widget = _open(viewer, qtbot, model, wait_prefetch=False)
    try:
        handle = widget.engine._handle
        assert handle is not None
        assert handle.wait(TIMEOUT / 1000)   # the engine is done; the UI thread has not heard it yet
        assert widget.prefetching
        qtbot.waitUntil(lambda: not widget.prefetching, timeout=TIMEOUT)
        assert widget.engine.embedded_count == 10
        assert all(widget.plane_embedded(Plane(0, k)) for k in range(10))
    finally:
        widget.shutdown()


def test_next_mask_shows_the_other_readings_of_a_single_click(annotator, model, volume, qtbot):
    viewer, widget = annotator
    image, _ = volume
    reference = _reference(model, image)
    assert not widget.next_mask_button.isEnabled() and not widget.next_mask()  # nothing to step through yet
    widget.add_point((30.0, 20.0))
    _settle(widget, qtbot)
    best = reference.predict(points=[(30.0, 20.0)], plane=5)
    plane = Plane(0, 5)
    np.testing.assert_array_equal(widget.session.mask(plane), best.mask)
    assert f"mask {best.index + 1} of 3" in widget.preview_label.text()
    assert widget.next_mask_button.isEnabled()
    distinct = {reference.predict(points=[(30.0, 20.0)], plane=5, candidate=k).mask.tobytes() for k in range(3)}
    assert len(distinct) >= 2  # the readings differ, so showing the right one is checked
    for step in (1, 2, 3):  # the button and the M key call next_mask; after the third mask, the first again
        widget.next_mask_button.click()
        _settle(widget, qtbot)
        k = (best.index + step) % 3
        expected = reference.predict(points=[(30.0, 20.0)], plane=5, candidate=k)
        np.testing.assert_array_equal(widget.session.mask(plane), expected.mask)
        np.testing.assert_array_equal(widget.session.preview[5].astype(bool), expected.mask)
        assert f"mask {k + 1} of 3" in widget.preview_label.text()
    assert "m" in [key for key, _ in widget._key_actions(toggle=False)]
    widget.add_box((12.0, 8.0, 40.0, 38.0))  # a box with the click is unambiguous: one mask, nothing to step through
    _settle(widget, qtbot)
    assert not widget.next_mask() and not widget.next_mask_button.isEnabled()
    assert any("no other mask to show" in m for m in _messages("info"))


def test_next_mask_steps_from_a_box_s_own_mask_through_its_alternatives(annotator, model, volume, qtbot):
    viewer, widget = annotator
    image, _ = volume
    reference = _reference(model, image)
    box = (12.0, 8.0, 40.0, 38.0)
    widget.add_box(box)
    _settle(widget, qtbot)
    plane = Plane(0, 5)
    own = reference.predict(box=box, plane=5)
    assert own.index == 0 and own.candidate_scores.shape == (4,)
    assert len({reference.predict(box=box, plane=5, candidate=k).mask.tobytes() for k in range(4)}) >= 2
    np.testing.assert_array_equal(widget.session.mask(plane), own.mask)  # the box's own mask comes first
    assert "mask 1 of 4" in widget.preview_label.text() and widget.next_mask_button.isEnabled()
    for step in (1, 2, 3, 4):
        assert widget.next_mask()
        _settle(widget, qtbot)
        expected = reference.predict(box=box, plane=5, candidate=step % 4)
        np.testing.assert_array_equal(widget.session.mask(plane), expected.mask)
        assert f"mask {step % 4 + 1} of 4" in widget.preview_label.text()


def _canvas_click(viewer, layer_coords, modifier=Qt.NoModifier):
    """A real Qt mouse click on the canvas at the world position of image data ``layer_coords``."""
    canvas = viewer.window._qt_viewer.canvas.native
    world = viewer.layers["mr"].data_to_world(layer_coords)
    camera = viewer.camera
    x = (world[2] - camera.center[-1]) * camera.zoom + canvas.width() / 2
    y = (world[1] - camera.center[-2]) * camera.zoom + canvas.height() / 2
    QTest.mouseClick(canvas, Qt.LeftButton, modifier, QPoint(int(round(x)), int(round(y))))


def test_mouse_clicks_and_keyboard_shortcuts(open_annotator, qtbot):
    viewer, widget = open_annotator(show=True)
    viewer.reset_view()
    qtbot.wait(50)
    canvas = viewer.window._qt_viewer.canvas.native
    _canvas_click(viewer, (5, 30, 20))
    _canvas_click(viewer, (5, 10, 50), Qt.ShiftModifier)
    qtbot.waitUntil(lambda: len(widget.prompts.points.data) == 2, timeout=TIMEOUT)
    _settle(widget, qtbot)
    prompts = widget.session.prompts(Plane(0, 5))
    np.testing.assert_allclose(prompts.points, [(30, 20), (10, 50)], atol=1.0)  # one screen pixel
    assert prompts.labels == (1, 0)  # Shift+click: background
    assert widget.prompts.positive  # and the next click is an object point again
    assert widget.session.mask(Plane(0, 5)) is not None

    QTest.keyClick(canvas, Qt.Key_T)
    assert widget.negative_radio.isChecked() and not widget.prompts.positive
    QTest.keyClick(canvas, Qt.Key_T)
    assert widget.positive_radio.isChecked()

    expected = widget.session.preview[5].astype(bool).copy()
    QTest.keyClick(canvas, Qt.Key_Return)
    np.testing.assert_array_equal(widget.labels_layer.data[5] == 1, expected)
    QTest.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier)
    assert widget.labels_layer.data.max() == 0
    QTest.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    assert widget.labels_layer.data.max() == 1

    _canvas_click(viewer, (5, 40, 40))
    qtbot.waitUntil(lambda: len(widget.prompts.points.data) == 1, timeout=TIMEOUT)
    QTest.keyClick(canvas, Qt.Key_Escape)
    assert len(widget.prompts.points.data) == 0 and widget.session.planes_with_prompts() == []
    _settle(widget, qtbot)
    assert widget.session.preview.sum() == 0


def _go_to_plane(viewer, image_layer, axis, index):
    world = image_layer.data_to_world(tuple(index if a == axis else 0 for a in range(3)))
    point = list(viewer.dims.point)
    point[axis] = world[axis]
    viewer.dims.point = point


def test_prompts_stay_on_their_plane_and_the_cache_serves_plane_changes(annotator, model, volume, qtbot):
    viewer, widget = annotator
    image, _ = volume
    layer = viewer.layers["mr"]
    widget.add_box((10.0, 10.0, 30.0, 30.0))
    _settle(widget, qtbot)
    _go_to_plane(viewer, layer, 0, 2)
    assert widget.current_plane() == Plane(0, 2)
    widget.add_box((30.0, 20.0, 50.0, 45.0))
    widget.add_point((40.0, 30.0))
    _settle(widget, qtbot)
    qtbot.wait(200)  # plane-change debounce
    assert widget.segmenter.encoder_calls == 10  # both planes came from the cache
    reference = _reference(model, image)
    np.testing.assert_array_equal(
        widget.session.preview[2].astype(bool),
        reference.predict(points=[(40.0, 30.0)], point_labels=[1], box=(30.0, 20.0, 50.0, 45.0), plane=2).mask,
    )
    np.testing.assert_array_equal(widget.session.preview[5].astype(bool), reference.predict(box=(10.0, 10.0, 30.0, 30.0), plane=5).mask)
    assert widget.session.prompts(Plane(0, 5)).box == (10.0, 10.0, 30.0, 30.0)

    viewer.dims.order = (1, 0, 2)   # slice along rows: the layers show that axis' prompts (none yet)
    _settle(widget, qtbot)
    assert widget.current_plane().axis == 1
    assert len(widget.prompts.boxes.data) == 0 and len(widget.prompts.points.data) == 0
    row_plane = widget.current_plane()
    widget.add_box((1.0, 5.0, 8.0, 40.0))
    _settle(widget, qtbot)
    coronal = _reference(model, image, axis=1).predict(box=(1.0, 5.0, 8.0, 40.0), plane=row_plane.index)
    np.testing.assert_array_equal(widget.session.mask(row_plane), coronal.mask)

    viewer.dims.order = (0, 1, 2)   # back: both axial boxes and the point are shown again
    _settle(widget, qtbot)
    assert len(widget.prompts.boxes.data) == 2 and len(widget.prompts.points.data) == 1
    assert widget.session.prompts(Plane(0, 2)).points == ((40.0, 30.0),)


def test_object_list_rename_hide_delete_and_brush_corrections(annotator, qtbot):
    viewer, widget = annotator
    for box in ((5.0, 5.0, 30.0, 30.0), (35.0, 35.0, 60.0, 60.0)):
        widget.add_box(box)
        _settle(widget, qtbot)
        assert widget.commit() is not None
    panel = widget.objects_panel
    assert panel.rowCount() == 2
    assert [panel.row_values(r)["colour"] for r in (0, 1)] == [colour_for(1), colour_for(2)]
    panel.item(1, 2).setText("kidney")   # edit the name cell, as a user would
    assert widget.session.table.get(2).name == "kidney"
    panel.item(0, 5).setCheckState(Qt.Unchecked)   # hide object 1
    assert widget.labels_layer.get_color(1)[3] == 0 and widget.labels_layer.get_color(2)[3] == 1

    layer = widget.labels_layer
    layer.selected_label = 9
    layer.paint((5, 60, 2), 9)   # napari's brush: a correction with a new id
    qtbot.waitUntil(lambda: 9 in widget.session.table, timeout=TIMEOUT)
    assert widget.session.table.get(9).voxels == (layer.data == 9).sum() > 0
    assert panel.rowCount() == 3

    panel.selectRow(1)
    with_kidney = layer.data.copy()
    widget._delete_selected()
    assert (layer.data == 2).sum() == 0 and 2 not in widget.session.table
    widget.undo()
    np.testing.assert_array_equal(layer.data, with_kidney)
    assert widget.session.table.get(2).name == "kidney"


def test_export_and_napari_writer_keep_the_scan_geometry(annotator, qtbot, tmp_path):
    from napari_vfmseg._writer import write_labels_layer

    viewer, widget = annotator
    widget.add_box((5.0, 5.0, 40.0, 40.0))
    _settle(widget, qtbot)
    widget.commit(name="organ")
    result = widget.export(tmp_path / "objects.nrrd")
    written = read_volume(result.labels)
    np.testing.assert_array_equal(written.array, widget.labels_layer.data)
    np.testing.assert_allclose(written.spacing, SCALE, rtol=1e-6)
    np.testing.assert_allclose(written.origin, TRANSLATE, atol=1e-6)
    assert "organ" in result.csv.read_text()
    layer = widget.labels_layer
    path = write_labels_layer(str(tmp_path / "saved.nii.gz"), layer.data, {"metadata": layer.metadata, "scale": layer.scale, "translate": layer.translate})[0]
    np.testing.assert_allclose(read_volume(path).spacing, SCALE, rtol=1e-6)


def test_window_preset_changes_what_the_model_and_the_user_see(annotator, qtbot, model, volume):
    from napari_vfmseg.io.windowing import CT_PRESETS

    viewer, widget = annotator
    box = (10.0, 10.0, 40.0, 40.0)
    widget.add_box(box)
    _settle(widget, qtbot)
    calls = widget.segmenter.encoder_calls
    widget.window_combo.setCurrentIndex(widget.window_combo.findData("bone"))
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy and not widget.prefetching, timeout=TIMEOUT)
    bone = CT_PRESETS["bone"]
    np.testing.assert_allclose(viewer.layers["mr"].contrast_limits, (bone.low, bone.high))
    reference = Segmenter(model)
    reference.set_volume(volume[0], axis=0, window="bone", spacing=SCALE)
    np.testing.assert_array_equal(widget.session.preview[5].astype(bool), reference.predict(box=box, plane=5).mask)
    assert widget.segmenter.encoder_calls == calls + 10   # new window, new embeddings, each plane once


@pytest.mark.parametrize("rgb", [False, True])
def test_2d_grey_and_rgb_images(make_napari_viewer, qtbot, model, rgb):
    viewer = make_napari_viewer(show=False)
    rng = np.random.default_rng(0)
    grey = (rng.random((48, 56)) * 60).astype(np.uint8)
    grey[10:30, 15:40] += 150
    image = np.stack([grey, grey // 2, 255 - grey], axis=-1) if rgb else grey
    viewer.add_image(image, name="photo", rgb=rgb, scale=(0.5, 0.5))
    widget = _open(viewer, qtbot, model)
    try:
        assert widget.current_plane() == Plane(None, 0) and widget.session.shape == (48, 56)
        assert not widget.window_combo.isEnabled() if rgb else widget.window_combo.isEnabled()
        reference = Segmenter(model)
        reference.set_image(image)
        box = (8.0, 12.0, 32.0, 44.0)
        widget.add_box(box)
        _settle(widget, qtbot)
        first = reference.predict(box=box)
        np.testing.assert_array_equal(widget.session.preview.astype(bool), first.mask)
        widget.add_point((20.0, 25.0))
        _settle(widget, qtbot)
        second = reference.predict(points=[(20.0, 25.0)], point_labels=[1], box=box, mask_input=first.logits)
        shown = widget.session.preview.astype(bool)
        np.testing.assert_array_equal(shown, second.mask)
        record = widget.commit()
        assert record.voxels == shown.sum()
        assert widget.session.table.area_mm2(record) == pytest.approx(shown.sum() * 0.25)
        assert widget.segmenter.encoder_calls == 1
    finally:
        widget.shutdown()


def test_bad_inputs_give_notifications_and_a_usable_viewer(annotator, qtbot, tmp_path, monkeypatch):
    import torch

    from napari_vfmseg.annotation.model_choice import ModelSource

    viewer, widget = annotator
    # a point outside the image is ignored with a warning
    widget.prompts.points.add([[5, 500, 10]])
    _settle(widget, qtbot)
    assert any("outside the image" in m for m in _messages("warning"))
    assert widget.session.planes_with_prompts() == []
    widget.prompts.clear()

    # a labels layer of another shape cannot be the target
    other = viewer.add_labels(np.zeros((3, 4, 5), np.uint8), name="small")
    target = widget.labels_layer
    assert not widget.set_target_labels(other)
    assert widget.labels_layer is target
    assert any("(3, 4, 5)" in m and "(10, 64, 64)" in m for m in _messages("error"))

    # an image the widget cannot segment
    four_d = viewer.add_image(np.zeros((2, 3, 8, 8), np.float32), name="4d")
    assert not widget.set_image_layer(four_d)
    assert widget.image_layer.name == "mr"
    viewer.layers.remove(four_d)

    # a model that cannot be loaded
    widget.load_model(ModelSource(checkpoint=str(tmp_path / "missing.pth")))
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    assert any("missing.pth" in m for m in _messages("error"))
    assert widget.segmenter is not None  # the previous model stays in use

    # out of memory while predicting
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(widget.segmenter, "predict", exhausted)
    widget.add_box((5.0, 5.0, 20.0, 20.0))
    _settle(widget, qtbot)
    assert any(m.startswith("out of memory while segmenting plane 5") for m in _messages("error"))
    monkeypatch.undo()

    # still usable: a new box segments and commits
    widget.clear_prompts()
    widget.add_box((5.0, 5.0, 30.0, 30.0))
    _settle(widget, qtbot)
    assert widget.commit() is not None


def test_widget_opens_from_the_plugin_manifest(make_napari_viewer, qtbot, model, volume, monkeypatch):
    from napari_vfmseg.widgets import annotator

    monkeypatch.setattr(annotator, "default_model_name", lambda: None)  # no model loads in the background
    viewer = make_napari_viewer(show=False)
    _add_volume(viewer, volume[0])
    _, widget = viewer.window.add_plugin_dock_widget("napari-vfmseg", "Segment (VFM)")
    assert isinstance(widget, AnnotatorWidget)
    assert widget.image_layer.unique_id == viewer.layers["mr"].unique_id  # napari hands plugins proxies
    assert widget.labels_layer.metadata[GEOMETRY_KEY]["spacing"] == list(SCALE)
    assert widget.segmenter is None and "no model" in widget.model_panel.status_label.text().lower()
    try:   # the same flow through the proxy napari hands to plugin widgets
        widget.use_model(model)
        qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy, timeout=TIMEOUT)
        widget.add_box((10.0, 10.0, 40.0, 40.0))
        qtbot.waitUntil(lambda: not widget.busy and widget.session.planes_with_prompts() != [], timeout=TIMEOUT)
        qtbot.waitUntil(lambda: widget.session.mask(widget.current_plane()) is not None, timeout=TIMEOUT)
        record = widget.commit()
        np.testing.assert_array_equal(viewer.layers["mr objects"].data == record.id, widget.session.labels == record.id)
        assert record.voxels == (viewer.layers["mr objects"].data > 0).sum()
    finally:
        widget.shutdown()


def test_a_click_the_model_ignores_gets_a_hint_under_the_preview(annotator, model, volume, qtbot):
    from napari_vfmseg.widgets.annotator import IGNORED_CLICK_HINT

    viewer, widget = annotator
    image, _ = volume
    reference = _reference(model, image)
    box = (12.0, 8.0, 40.0, 38.0)
    boxed = reference.predict(box=box, plane=5)
    followed = ignored = None
    for row, col in zip(*np.nonzero(boxed.mask)):   # background clicks inside the box's mask
        point = (float(row), float(col))
        corrected = reference.predict(box=box, points=[point], point_labels=[0], mask_input=boxed.logits, plane=5)
        if corrected.mask[row, col] and ignored is None:
            ignored = point
        if not corrected.mask[row, col] and followed is None:
            followed = point
        if ignored is not None and followed is not None:
            break
    assert ignored is not None and followed is not None  # this tiny model ignores some clicks and follows others

    widget.add_box(box)
    _settle(widget, qtbot)
    assert IGNORED_CLICK_HINT not in widget.preview_label.text()
    widget.add_point(ignored, positive=False)
    _settle(widget, qtbot)
    assert widget.session.mask(Plane(0, 5))[int(ignored[0]), int(ignored[1])]
    assert IGNORED_CLICK_HINT in widget.preview_label.text()
    widget.clear_prompts()
    _settle(widget, qtbot)
    widget.add_box(box)
    _settle(widget, qtbot)
    widget.add_point(followed, positive=False)
    _settle(widget, qtbot)
    assert not widget.session.mask(Plane(0, 5))[int(followed[0]), int(followed[1])]
    assert "preview:" in widget.preview_label.text() and IGNORED_CLICK_HINT not in widget.preview_label.text()


def test_switching_to_background_after_esc_keeps_working(annotator, qtbot):
    """napari keeps a selection of points that were removed; changing the kind of new points must not
    trip over it (it raised IndexError after Esc), and points already placed keep their kind."""
    viewer, widget = annotator
    widget.add_point((30.0, 20.0))
    _settle(widget, qtbot)
    widget.prompts.points.selected_data = {0}   # as after a click in napari's select mode
    widget.toggle_polarity()                     # background now: the placed point stays an object point
    assert widget.prompts.point_polarity().tolist() == [True]
    assert widget.session.prompts(Plane(0, 5)).labels == (1,)
    widget.clear_prompts()
    _settle(widget, qtbot)
    widget.toggle_polarity()
    widget.toggle_polarity()
    widget.add_point((25.0, 25.0), positive=False)
    _settle(widget, qtbot)
    assert widget.session.prompts(Plane(0, 5)).labels == (0,)


def test_small_boxes_are_zoomed_and_the_checkbox_turns_it_off(annotator, model, volume, qtbot):
    viewer, widget = annotator
    image, _ = volume
    reference = _reference(model, image)
    assert widget.model_panel.zoom_check.isChecked()          # a small encoder: zoom is on by default
    box = (20.0, 20.0, 27.0, 27.0)
    widget.add_box(box)
    _settle(widget, qtbot)
    zoomed = reference.predict(box=box, plane=5)
    assert zoomed.crop is not None
    np.testing.assert_array_equal(widget.session.preview[5].astype(bool), zoomed.mask)

    widget.model_panel.zoom_check.click()                      # the user clears it (the dock is not shown)
    assert widget.segmenter.zoom is None
    whole = reference.predict(box=box, plane=5, zoom=False)
    qtbot.waitUntil(lambda: np.array_equal(widget.session.preview[5].astype(bool), whole.mask), timeout=TIMEOUT)
    assert not np.array_equal(zoomed.mask, whole.mask)        # the two readings differ, so the test can fail

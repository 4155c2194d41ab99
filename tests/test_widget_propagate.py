"""The annotator's "3D propagation" section in a real napari viewer, with an oracle model.

The oracle answers a box on a plane with the ground-truth object inside that box, so a correct
walk reproduces the object exactly and stops where it ends; any slip in key planes, cancel,
commit or threading shows up as a mask that differs from what is expected.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from _tiny_models import tiny_loaded_model
from test_widget_oracle import OracleSegmenter, ground_truth_box
from napari_vfmseg._layer_geometry import GEOMETRY_KEY
from napari_vfmseg.widgets.annotator import AnnotatorWidget
from napari_vfmseg.annotation.planes import Plane
from napari_vfmseg.annotation.prompts import PlanePrompts
from napari_vfmseg.annotation.session import AnnotationSession

TIMEOUT = 10_000
SPACING = (2.5, 0.8, 0.9)
SEED = 6
RADII = {3: 4, 4: 7, 5: 9, 6: 10, 7: 10, 8: 9, 9: 7, 10: 4}   # plane → radius (px): the object spans planes 3–10


def _capsule(planes: int = 14, size: int = 40):
    """(image float32, labels int32) of shape (planes, size, size): one drifting disk stack (id 1)."""
    rows, cols = np.mgrid[:size, :size]
    labels = np.zeros((planes, size, size), np.int32)
    for plane, radius in RADII.items():
        labels[plane][(rows - 20 - (plane - SEED) // 2) ** 2 + (cols - 18) ** 2 <= radius**2] = 1
    image = np.random.default_rng(7).normal(40.0, 10.0, labels.shape).astype(np.float32) + 120.0 * labels
    return image, labels


class RecordingOracle(OracleSegmenter):
    """The oracle, recording the thread of each prediction; with ``hold`` set a prediction waits for ``release``."""

    def __init__(self, model, truth, label):
        super().__init__(model, truth, label)
        self.threads: set[int] = set()
        self.hold = False
        self.waiting = threading.Event()
        self.release = threading.Event()

    def predict(self, *args, **kwargs):
        self.threads.add(threading.get_ident())
        if self.hold:
            self.waiting.set()
            self.release.wait(TIMEOUT / 1000)
        return super().predict(*args, **kwargs)


@pytest.fixture(scope="module")
def model():
    return tiny_loaded_model(seed=1)


@pytest.fixture
def annotated(make_napari_viewer, qtbot, model):
    """A viewer on plane SEED of the capsule volume, the annotator docked with the oracle ready."""
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    image, truth = _capsule()
    viewer = make_napari_viewer(show=False)
    geometry = {"spacing": list(SPACING), "origin": [0.0, 0.0, 0.0], "direction": np.eye(3).tolist()}
    viewer.add_image(image, name="ct", scale=SPACING, metadata={GEOMETRY_KEY: geometry})
    viewer.dims.set_current_step(0, SEED)
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget)
    oracle = RecordingOracle(model, truth, 1)
    widget.use_segmenter(oracle)
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy, timeout=TIMEOUT)
    assert widget.current_plane() == Plane(0, SEED)
    yield SimpleNamespace(viewer=viewer, widget=widget, panel=widget.propagate_panel, oracle=oracle, truth=truth == 1)
    oracle.release.set()
    widget.shutdown()


def _box_and_wait(widget, qtbot, box, plane):
    widget.add_box(box, plane=plane)
    qtbot.waitUntil(lambda: not widget.busy and widget.session.mask(plane) is not None, timeout=TIMEOUT)


def _propagate_and_wait(panel, qtbot):
    assert panel.propagate_button.isEnabled()
    panel.propagate_button.click()
    qtbot.waitUntil(lambda: not panel.annotator.engine.propagating and not panel.annotator.busy, timeout=TIMEOUT)
    return panel.last_result


def _seed_box(ns, qtbot):
    _box_and_wait(ns.widget, qtbot, ground_truth_box(ns.truth[SEED].astype(int), 1), Plane(0, SEED))


def _messages(level):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if str(n.severity).lower().endswith(level)]


def test_box_then_propagate_reproduces_the_object_and_stops_at_its_ends(annotated, qtbot, monkeypatch):
    import napari_vfmseg.engine as engine

    ns = annotated
    panel, widget = ns.panel, ns.widget
    calls = []
    real = engine.propagate
    monkeypatch.setattr(engine, "propagate", lambda *args, **kwargs: calls.append(kwargs) or real(*args, **kwargs))
    assert (panel.min_score_spin.value(), panel.largest_component_check.isChecked()) == (
        engine.PropagationConfig().min_score, engine.PropagationConfig().largest_component)   # the engine's defaults
    panel.min_score_spin.setValue(0.35)
    panel.largest_component_check.setChecked(True)
    assert not panel.propagate_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert "segment the object" in panel.status_label.text()
    _seed_box(ns, qtbot)
    assert panel.propagate_button.isEnabled()

    result = _propagate_and_wait(panel, qtbot)
    preview = widget.session.preview.astype(bool)
    dice = 2 * np.count_nonzero(preview & ns.truth) / (preview.sum() + ns.truth.sum())
    assert dice == 1.0
    np.testing.assert_array_equal(preview, ns.truth)
    assert result.key_planes == [SEED] and result.planes == list(RADII)
    ends = sorted((s.direction, s.last_plane, s.stopped_at, s.reason) for s in result.stops)
    assert ends == [(-1, 3, 2, "vanished"), (1, 10, 11, "vanished")]   # one plane past each end, rejected
    assert sorted(result.planes_visited) == [p for p in range(2, 12) if p != SEED]   # the key plane is not predicted
    assert panel.progress_bar.value() == panel.progress_bar.maximum() == len(result.visits) == 9
    status = panel.status_label.text()
    assert "planes 3–10" in status and "plane 2 rejected: the object ended" in status and "9 planes visited" in status
    assert widget.commit_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert len(calls) == 1 and calls[0]["min_score"] == 0.35 and calls[0]["largest_component"] is True
    assert ns.oracle.threads and threading.main_thread().ident not in ns.oracle.threads   # the UI thread never predicted


def test_corrected_planes_are_kept_as_key_planes_on_repropagation(annotated, qtbot):
    ns = annotated
    panel, widget, truth = ns.panel, ns.widget, ns.truth
    _seed_box(ns, qtbot)
    _propagate_and_wait(panel, qtbot)

    # correction by prompt: a box on plane 9 around the object's left part only
    left_box = (5.0, 5.0, 35.0, 15.0)
    _box_and_wait(widget, qtbot, left_box, Plane(0, 9))
    _, cols = np.mgrid[:40, :40]
    left9 = truth[9] & (cols <= 15)
    assert 0 < left9.sum() < truth[9].sum()
    np.testing.assert_array_equal(widget.session.preview[9].astype(bool), left9)

    # correction by paint: the eraser on the preview of plane 4
    layer = widget.preview_layer
    layer.brush_size = 5
    layer.paint((4, 20, 18), 0)
    qtbot.waitUntil(lambda: 4 in widget.session.key_planes(0), timeout=TIMEOUT)
    painted4 = widget.session.preview[4].astype(bool).copy()
    assert 0 < painted4.sum() < truth[4].sum() and not (painted4 & ~truth[4]).any()

    result = _propagate_and_wait(panel, qtbot)
    preview = widget.session.preview.astype(bool)
    assert result.key_planes == [4, SEED, 9]
    np.testing.assert_array_equal(preview[4], painted4)      # the erased hole stays
    np.testing.assert_array_equal(preview[9], left9)          # the box correction stays
    np.testing.assert_array_equal(preview[SEED], truth[SEED])
    np.testing.assert_array_equal(preview[5], truth[5])       # the walks fill the planes around the hole
    assert not (preview[10] & ~truth[10]).any() and preview[10].sum() < truth[10].sum()   # walked from plane 9's left part
    np.testing.assert_array_equal(preview[:3], truth[:3])     # below the object: empty, as the truth


def test_cancel_keeps_the_previous_preview_and_errors_leave_the_viewer_usable(annotated, qtbot, monkeypatch):
    ns = annotated
    panel, widget, oracle = ns.panel, ns.widget, ns.oracle
    _seed_box(ns, qtbot)
    _propagate_and_wait(panel, qtbot)
    _box_and_wait(widget, qtbot, (5.0, 5.0, 35.0, 15.0), Plane(0, 9))
    before = widget.session.preview.copy()

    oracle.hold = True
    panel.propagate_button.click()
    assert oracle.waiting.wait(TIMEOUT / 1000)
    qtbot.waitUntil(lambda: panel.cancel_button.isEnabled(), timeout=TIMEOUT)
    assert not panel.propagate_button.isEnabled()
    panel.cancel_button.click()
    oracle.hold = False
    oracle.release.set()
    qtbot.waitUntil(lambda: not widget.engine.propagating and not widget.busy, timeout=TIMEOUT)
    assert panel.last_result.cancelled and len(panel.last_result.visits) < 8
    np.testing.assert_array_equal(widget.session.preview, before)
    assert "cancelled" in panel.status_label.text() and panel.propagate_button.isEnabled()

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(oracle, "predict", broken)
    panel.propagate_button.click()
    qtbot.waitUntil(lambda: not widget.engine.propagating and not widget.busy, timeout=TIMEOUT)
    assert any(m == "propagating through the volume failed: decoder exploded" for m in _messages("error"))
    np.testing.assert_array_equal(widget.session.preview, before)
    monkeypatch.undo()
    result = _propagate_and_wait(panel, qtbot)   # still usable
    assert not result.cancelled and result.key_planes == [SEED, 9]
    assert widget.session.preview[10].sum() > 0 and before[10].sum() > widget.session.preview[10].sum()


def test_commit_writes_the_3d_preview_as_one_object_and_undo_restores(annotated, qtbot):
    ns = annotated
    panel, widget, truth = ns.panel, ns.widget, ns.truth
    _seed_box(ns, qtbot)
    _propagate_and_wait(panel, qtbot)
    labels = widget.labels_layer.data
    record = widget.commit(name="capsule")
    np.testing.assert_array_equal(labels == record.id, truth)
    assert set(np.unique(labels)) == {0, record.id}
    assert record.voxels == truth.sum()
    assert widget.session.table.ml(record) == pytest.approx(truth.sum() * np.prod(SPACING) / 1000.0)
    assert widget.objects_panel.row_values(0)["voxels"] == f"{int(truth.sum()):,}"
    assert widget.session.preview.sum() == 0 and not panel.propagate_button.isEnabled()   # a new object starts
    widget.undo()
    assert labels.max() == 0 and len(widget.session.table) == 0
    widget.redo()
    np.testing.assert_array_equal(labels == record.id, truth)


def test_propagate_is_off_for_2d_images(make_napari_viewer, qtbot, model):
    _, truth3d = _capsule()
    truth = truth3d[SEED]
    viewer = make_napari_viewer(show=False)
    viewer.add_image((truth * 120 + 30).astype(np.uint8), name="slice")
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget)
    try:
        widget.use_segmenter(OracleSegmenter(model, truth, 1))
        qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy, timeout=TIMEOUT)
        _box_and_wait(widget, qtbot, ground_truth_box(truth, 1), Plane(None, 0))
        assert widget.session.preview.any()
        panel = widget.propagate_panel
        assert not panel.propagate_button.isEnabled()
        assert panel.unavailable_reason() == "propagation needs a 3D volume" == panel.status_label.text()
        assert not panel.propagate() and not widget.engine.propagating
    finally:
        widget.shutdown()


def test_session_composes_a_propagation_with_key_planes_and_drops_stale_results():
    session = AnnotationSession((5, 6, 7), {"spacing": (2.0, 1.0, 1.0), "origin": (0, 0, 0), "direction": np.eye(3)})
    assert session.propagation_request(0) is None and not session.has_pending_object
    mask = np.zeros((6, 7), bool)
    mask[1:4, 2:5] = True
    session.set_axis_prompts(0, {2: PlanePrompts.build(box=(0, 0, 5, 6))})
    session.accept(session.request(Plane(0, 2)), SimpleNamespace(mask=mask, logits=None, score=0.9))
    request = session.propagation_request(0)
    assert request.key_planes == [2] and request.seeds[2] is not mask
    np.testing.assert_array_equal(request.seeds[2], mask)

    volume = np.zeros((5, 6, 7), bool)
    volume[1:4, 1:5, 1:6] = True    # a walk that disagrees with the key plane there: the key plane wins
    assert session.accept_propagation(request, volume)
    expected = volume.copy()
    expected[2] = mask
    np.testing.assert_array_equal(session.preview.astype(bool), expected)
    assert session.propagation_axis == 0 and session.has_pending_object

    session.preview[3, 0, 0] = 1    # the brush on plane 3 ...
    session.preview_painted(Plane(0, 3))
    assert sorted(session.key_planes(0)) == [2, 3]
    session.set_axis_prompts(1, {0: PlanePrompts.build(box=(0, 0, 4, 6))})   # a mask on another axis adds to it
    crossing = np.zeros((5, 7), bool)
    crossing[0, 0] = True
    session.accept(session.request(Plane(1, 0)), SimpleNamespace(mask=crossing, logits=None, score=0.9))
    expected[3, 0, 0] = True
    expected[0, 0, 0] = True
    np.testing.assert_array_equal(session.preview.astype(bool), expected)

    stale = session.propagation_request(0)
    session.clear_prompts()
    assert not session.accept_propagation(stale, volume)    # cleared since: dropped
    assert session.preview.sum() == 0 and session.propagation_axis is None
    fresh = type(stale)(0, {}, session.epoch, session.generation)
    with pytest.raises(ValueError, match="shape"):
        session.accept_propagation(fresh, np.zeros((5, 6, 6), bool))


def test_every_stop_reason_has_words_in_the_status_line():
    from napari_vfmseg.engine.propagate import STOP_REASONS
    from napari_vfmseg.widgets.propagate_panel import STOP_TEXT

    assert set(STOP_TEXT) == set(STOP_REASONS)


def test_intensity_checks_follow_the_model_and_can_be_switched(annotated, qtbot):
    """The check box starts from the loaded model's propagation preset (off for the tiny model's generic
    preset, on for a model whose preset is "tight", like the built-in one) and its state reaches the walk."""
    panel, widget = annotated.panel, annotated.widget
    assert not panel.appearance_check.isChecked()  # generic preset
    assert panel.settings()["min_appearance_similarity"] == 0.0 and panel.settings()["appearance_trim"] is None
    panel.appearance_check.setChecked(True)
    assert panel.settings()["min_appearance_similarity"] == 0.6 and panel.settings()["appearance_trim"] == 0.25

    tight = RecordingOracle(tiny_loaded_model(seed=1), annotated.truth.astype(np.int32), 1)
    tight.model.info = {**(tight.model.info or {}), "propagation": "tight"}
    widget.use_segmenter(tight)
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy, timeout=TIMEOUT)
    assert panel.appearance_check.isChecked()
    assert "min_appearance_similarity" not in panel.settings()  # the preset's own values
    panel.appearance_check.setChecked(False)
    assert panel.settings()["min_appearance_similarity"] == 0.0

    _seed_box(annotated, qtbot)
    result = _propagate_and_wait(panel, qtbot)
    assert result.visits and all(visit.similarity is None for visit in result.visits)  # nothing measured when off
    panel.appearance_check.setChecked(True)
    result = _propagate_and_wait(panel, qtbot)
    assert all(visit.similarity is not None for visit in result.visits)  # measured on every plane when on
    assert result.planes == list(range(3, 11))  # the object: a bright stack on a darker background

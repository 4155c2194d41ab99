""""Adapt while I work": automatic rounds start after every k newly annotated planes, can be
cancelled like any round, switch to the version they save, and are on by default only for the
built-in model."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from _tiny_models import synthetic_volume, tiny_loaded_model
from test_widget_finetune import SwitchableOracle
from test_widget_oracle import ground_truth_box
from napari_vfmseg.annotation.planes import Plane
from napari_vfmseg.training.adapter_store import AdapterStore
from napari_vfmseg.training.adapters import active_adapter
from napari_vfmseg.widgets.annotator import AnnotatorWidget
from napari_vfmseg.widgets.auto_adapt import AUTO_STEPS

TIMEOUT = 10_000
ROUND_TIMEOUT = 60_000

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def working(make_napari_viewer, qtbot, tmp_path):
    image, truth = synthetic_volume(planes=16, size=96, seed=0)
    viewer = make_napari_viewer(show=False)
    viewer.add_image(image, name="mr")
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget)
    model = tiny_loaded_model(seed=5)
    segmenter = SwitchableOracle(model, truth)
    widget.use_segmenter(segmenter)
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy and not widget.prefetching, timeout=TIMEOUT)
    panel = widget.finetune_panel
    panel.guard_sample = None
    assert panel.set_project(tmp_path / "project")
    fast = panel.round_config
    panel.round_config = lambda: replace(fast(), lr=1e-2, images_per_step=2, prompts_per_image=2, correction_clicks=1,
                                         val_every=5, validation="held_out", schedule="constant")
    assert not panel.auto.enabled                      # not the built-in model: off until switched on
    panel.auto.every_spin.setValue(2)
    panel.auto.set_enabled(True)
    yield widget, panel, segmenter, truth
    widget.shutdown()


def _commit(widget, qtbot, segmenter, truth, plane):
    segmenter.oracle = True
    widget.add_box(ground_truth_box(truth[plane], 1), plane=Plane(0, plane))
    qtbot.waitUntil(lambda: not widget.busy and widget.session.mask(Plane(0, plane)) is not None, timeout=TIMEOUT)
    assert widget.commit() is not None
    segmenter.oracle = False


def test_rounds_start_after_every_k_planes_and_cancel_like_any_round(working, qtbot):
    widget, panel, segmenter, truth = working
    started = []
    panel.auto.started.connect(started.append)
    _commit(widget, qtbot, segmenter, truth, 4)
    qtbot.wait(600)                                     # the panel recounts 250 ms after a change
    assert started == [] and not panel.running
    with qtbot.waitSignal(panel.auto.started, timeout=TIMEOUT):
        _commit(widget, qtbot, segmenter, truth, 8)
    assert started == [2] and panel.running and panel.cancel_button.isEnabled()
    assert panel.progress_bar.maximum() in (0, min(panel.round_config().steps, AUTO_STEPS))
    with qtbot.waitSignal(panel.round_finished, timeout=ROUND_TIMEOUT) as finished:
        panel.cancel()
    result = finished.args[0]
    assert result is not None and result.cancelled and result.version is None
    assert AdapterStore(panel.store.folder).versions() == [] and active_adapter(segmenter.model) is None
    _commit(widget, qtbot, segmenter, truth, 12)        # one new plane since the last round: not yet
    qtbot.wait(600)
    assert started == [2] and not panel.running
    with qtbot.waitSignal(panel.auto.started, timeout=TIMEOUT):
        _commit(widget, qtbot, segmenter, truth, 14)
    assert started == [2, 4]
    with qtbot.waitSignal(panel.round_finished, timeout=ROUND_TIMEOUT) as finished:
        panel.cancel()
    assert finished.args[0].config.steps <= AUTO_STEPS
    panel.auto.set_enabled(False)                      # off: commits start nothing
    _commit(widget, qtbot, segmenter, truth, 2)
    _commit(widget, qtbot, segmenter, truth, 6)
    qtbot.wait(600)
    assert started == [2, 4] and not panel.running


def test_a_saved_automatic_round_is_switched_on_and_the_builtin_model_defaults_on(working, qtbot, monkeypatch):
    widget, panel, segmenter, truth = working
    activated = []
    monkeypatch.setattr(panel, "activate", lambda name: activated.append(name) or True)
    saved = SimpleNamespace(version=SimpleNamespace(name="v007"), cancelled=False)
    panel.round_finished.emit(saved)                   # a round started by hand: the user decides
    assert activated == []
    panel.auto._round_is_auto = True
    panel.round_finished.emit(SimpleNamespace(version=None, cancelled=False))   # nothing saved: nothing switched
    panel.auto._round_is_auto = True
    panel.round_finished.emit(saved)
    assert activated == ["v007"]

    fresh = AnnotatorWidget(widget.viewer, autoload=False, autosave=False).finetune_panel.auto
    try:
        fresh._on_model_changed(SimpleNamespace(model=SimpleNamespace(name="builtin")))
        assert fresh.enabled
        fresh._on_model_changed(SimpleNamespace(model=SimpleNamespace(name="vit_b")))
        assert not fresh.enabled
        fresh.set_enabled(True)                        # the user's choice wins over the model's default
        fresh._on_model_changed(SimpleNamespace(model=SimpleNamespace(name="vit_b")))
        assert fresh.enabled
    finally:
        fresh.panel.annotator.shutdown()

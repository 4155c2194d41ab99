"""The annotator's "Fine-tune" section in a real napari viewer with a tiny model.

Objects are committed through the annotator (boxes answered from the ground truth while the
segmenter's oracle switch is on); every other prediction is the real model's, so activating,
rolling back and failing are checked on the masks and logits the viewer would show.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from _tiny_models import synthetic_volume, tiny_loaded_model
from test_widget_oracle import ground_truth_box
from napari_vfmseg._layer_geometry import GEOMETRY_KEY
from napari_vfmseg.engine import Prediction, Segmenter
from napari_vfmseg.training.adapter_store import AdapterStore
from napari_vfmseg.training.adapters import AdapterInfo, active_adapter
from napari_vfmseg.training.rounds import RoundConfig, gather_examples, run_round
from napari_vfmseg.widgets.annotator import AnnotatorWidget
from napari_vfmseg.annotation.planes import Plane

TIMEOUT = 10_000
ROUND_TIMEOUT = 60_000
SHOWN = 12                       # the plane predictions are compared on
CORRECTED = list(range(1, 24, 2))
BOX = (20.0, 14.0, 50.0, 46.0)   # a prompt for comparing predictions (object 1 lies in it)


pytestmark = pytest.mark.usefixtures("one_thread")


class SwitchableOracle(Segmenter):
    """A real Segmenter; while ``oracle`` is on, a box is answered with the true object inside it.
    ``centres`` records the plane each background embedding started from."""

    def __init__(self, model, truth):
        super().__init__(model)
        self.truth = truth
        self.oracle = False
        self.axis = 0
        self.centres: list[int] = []

    def set_volume(self, volume, axis=0, window=None, modality=None, spacing=None):
        self.axis = axis
        return super().set_volume(volume, axis=axis, window=window, modality=modality, spacing=spacing)

    def prefetch(self, order=None, callback=None, center=None):
        self.centres.append(center if center is not None else self.current_plane)
        return super().prefetch(order, callback, center)

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask=None, plane=None):
        if not self.oracle:
            return super().predict(points, point_labels, box, mask_input, multimask, plane)
        truth = np.take(self.truth, plane, axis=self.axis)
        r0, c0, r1, c1 = (int(round(v)) for v in box)
        inside = np.zeros(truth.shape, bool)
        inside[r0: r1 + 1, c0: c1 + 1] = True
        label = np.bincount(truth[inside].ravel(), minlength=2)[1:].argmax() + 1
        side = int(self.sam.prompt_encoder.mask_input_size[0])
        return Prediction((truth == label) & inside, 1.0, np.zeros((side, side), np.float32), np.ones(1, np.float32),
                          np.zeros((1, side, side), np.float32), 0, False, plane)


@pytest.fixture
def annotated(make_napari_viewer, qtbot, tmp_path):
    """A viewer on plane SHOWN, the tiny model behind the switchable oracle, objects 1 and 2
    committed on the CORRECTED planes, the fine-tune panel on a project in tmp_path."""
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    image, truth = synthetic_volume(planes=24, size=96, seed=0)
    viewer = make_napari_viewer(show=False)
    geometry = {"spacing": [2.0, 1.0, 1.0], "origin": [0.0] * 3, "direction": np.eye(3).tolist(), "modality": "MR"}
    viewer.add_image(image, name="mr", metadata={GEOMETRY_KEY: geometry})
    viewer.dims.set_current_step(0, SHOWN)
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget)
    model = tiny_loaded_model(seed=5)
    segmenter = SwitchableOracle(model, truth)
    widget.use_segmenter(segmenter)
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy and not widget.prefetching, timeout=TIMEOUT)
    segmenter.oracle = True
    for label in (1, 2):
        for plane in CORRECTED:
            widget.add_box(ground_truth_box(truth[plane], label), plane=Plane(0, plane))
        qtbot.waitUntil(lambda: not widget.busy and all(widget.session.mask(Plane(0, p)) is not None
                                                        for p in CORRECTED), timeout=TIMEOUT)
        assert widget.commit() is not None
    segmenter.oracle = False
    panel = widget.finetune_panel
    panel.guard_sample = None
    assert panel.set_project(tmp_path / "project")
    fast = panel.round_config
    # held-out validation (what these tests check), not the leave-one-plane-out that few planes get by default
    panel.round_config = lambda: replace(fast(), lr=1e-2, images_per_step=2, prompts_per_image=2,
                                         correction_clicks=1, val_every=5, validation="held_out", schedule="constant")
    yield widget, panel, segmenter, model, truth
    widget.shutdown()


def _messages(level):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if str(n.severity).lower().endswith(level)]


def _run_round(panel, qtbot, mode="decoder", steps=20):
    panel.mode_combo.setCurrentIndex(panel.mode_combo.findData(mode))
    panel.steps_spin.setValue(steps)
    assert panel.start_button.isEnabled(), panel.start_button.toolTip()
    with qtbot.waitSignal(panel.round_finished, timeout=ROUND_TIMEOUT) as blocker:
        panel.start_button.click()
        assert panel.running and panel.cancel_button.isEnabled() and not panel.start_button.isEnabled()
    return blocker.args[0]


def _activate(panel, qtbot, widget, action):
    with qtbot.waitSignal(panel.activation_finished, timeout=TIMEOUT) as blocker:
        action()
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy and not widget.prefetching, timeout=TIMEOUT)
    return blocker.args


def _predict(widget, segmenter):
    assert not widget.busy and not widget.prefetching
    return segmenter.predict(box=BOX, plane=SHOWN)


def test_round_saves_a_version_that_activates_and_rolls_back_exactly(annotated, qtbot):
    widget, panel, segmenter, model, truth = annotated
    panel.guard_sample = "abdomen_ct"
    planes_with = [p for p in CORRECTED if truth[p].any()]
    objects = sum(int(np.count_nonzero(np.bincount(truth[p].ravel())[1:] >= 20)) for p in planes_with)
    assert panel.counts() == {"planes": len(planes_with), "objects": objects, "volumes": 1}
    assert f"{objects} objects on {len(planes_with)} planes" in panel.counts_label.text()
    assert "adapter: none" in panel.model_label.text() and model.name in panel.model_label.text()
    before = _predict(widget, segmenter)

    result = _run_round(panel, qtbot, steps=20)
    assert result is not None and result.version.name == "v001" and not result.cancelled
    assert panel.progress_bar.value() == panel.progress_bar.maximum() == 20      # the progress reached the end
    assert [s for s, _ in panel.plot.losses] == list(range(1, 21)) and [s for s, _ in panel.plot.dices] == [5, 10, 15, 20]
    assert result.dice_after > result.dice_before and result.guard_before is not None
    text = panel.result_label.text()
    assert f"{result.dice_before:.3f} → {result.dice_after:.3f}" in text and "original domain" in text
    assert active_adapter(model) is None and "adapter: none" in panel.model_label.text()   # trained on a copy
    store = AdapterStore(panel.store.folder)
    assert [v.name for v in store.versions()] == ["v001"] and store.adapter_path("v001").is_file()
    assert panel.versions_combo.findData("v001") > 0 and panel.use_new_check.isEnabled()
    assert "v001" in panel.use_new_check.text()

    # The switch activates the new adapter: predictions change, the label says so.
    name, ok = _activate(panel, qtbot, widget, lambda: panel.use_new_check.setChecked(True))
    assert (name, ok) == ("v001", True)
    assert active_adapter(model).fingerprint == store.get("v001").adapter_fingerprint
    assert "adapter: v001 (decoder)" in panel.model_label.text() and store.active_name(model.fingerprint) == "v001"
    with_adapter = _predict(widget, segmenter)
    assert not np.array_equal(with_adapter.logits, before.logits)

    # Rolling back to the base model from the version list restores the predictions bit for bit.
    panel.versions_combo.setCurrentIndex(panel.versions_combo.findData(None))
    assert "selected: base model" in panel.compare_label.text() and "in use: v001" in panel.compare_label.text()
    assert _activate(panel, qtbot, widget, panel.activate_button.click) == [None, True]
    after = _predict(widget, segmenter)
    assert np.array_equal(after.logits, before.logits) and np.array_equal(after.mask, before.mask)
    assert active_adapter(model) is None and not panel.use_new_check.isChecked()
    assert store.active_name(model.fingerprint) is None
    assert [e["active"] for e in store.history()] == ["v001", None]


def test_encoder_adapter_invalidates_the_cache_and_reembeds_the_plane_on_screen_first(annotated, qtbot):
    widget, panel, segmenter, model, truth = annotated
    base_key = model.cache_key
    base_embedding = segmenter.embedding(SHOWN).features.clone()
    panel.rank_spin.setValue(2)
    result = _run_round(panel, qtbot, mode="encoder-lora", steps=30)
    assert result.version.mode == "encoder-lora" and result.version.rank == 2
    calls = segmenter.encoder_calls
    segmenter.centres.clear()
    _activate(panel, qtbot, widget, lambda: panel.activate("v001"))
    assert model.cache_key != base_key and result.version.adapter_fingerprint in model.cache_key
    shown = widget.current_plane()
    assert segmenter.centres[0] == shown.index                # background embedding restarted at the plane on screen
    assert widget.plane_embedded(shown) and segmenter.has_embedding(shown.index)
    assert segmenter.encoder_calls >= calls + 24              # every plane embedded again with the new encoder
    assert not torch.equal(segmenter.embedding(SHOWN).features, base_embedding)
    # Back to the base model: the old cache entries are valid again and used as they are.
    calls = segmenter.encoder_calls
    _activate(panel, qtbot, widget, lambda: panel.activate(None))
    assert model.cache_key == base_key and segmenter.encoder_calls == calls
    assert torch.equal(segmenter.embedding(SHOWN).features, base_embedding)


def test_cancel_failure_and_a_bad_adapter_leave_the_previous_adapter_in_use(annotated, qtbot, monkeypatch):
    widget, panel, segmenter, model, truth = annotated
    store = AdapterStore(panel.store.folder)
    corrected = np.zeros_like(truth)
    corrected[CORRECTED] = truth[CORRECTED]
    pairs = gather_examples(np.asarray(widget.image_layer.data), corrected, modality="MR")
    first = run_round(model, pairs, store, RoundConfig(steps=30, lr=1e-2, images_per_step=2, prompts_per_image=2,
                                                       correction_clicks=1, validation="held_out", schedule="constant"))
    assert first.version.name == "v001"
    _activate(panel, qtbot, widget, lambda: panel.activate("v001"))
    in_use = active_adapter(model).fingerprint
    reference = _predict(widget, segmenter)

    # Cancel: nothing saved, v001 stays.
    panel.mode_combo.setCurrentIndex(panel.mode_combo.findData("decoder"))
    panel.steps_spin.setValue(2000)
    with qtbot.waitSignal(panel.round_finished, timeout=ROUND_TIMEOUT) as blocker:
        panel.start_button.click()
        qtbot.waitUntil(lambda: panel.progress_bar.value() >= 2, timeout=ROUND_TIMEOUT)
        panel.cancel_button.click()
    assert blocker.args[0].cancelled and blocker.args[0].train.steps_done < 2000
    assert [v.name for v in store.versions()] == ["v001"] and active_adapter(model).fingerprint == in_use
    assert any("cancelled" in m for m in _messages("info")) and panel.start_button.isEnabled()

    # A failing worker: an error notification, nothing saved, v001 stays.
    def broken(self):
        raise RuntimeError("simulated trainer failure")

    monkeypatch.setattr("napari_vfmseg.training.trainer.Trainer.fit", broken)
    panel.steps_spin.setValue(10)
    assert _run_round(panel, qtbot, steps=10) is None
    assert any("simulated trainer failure" in m and "unchanged" in m for m in _messages("error"))
    assert [v.name for v in store.versions()] == ["v001"] and active_adapter(model).fingerprint == in_use
    assert panel.start_button.isEnabled() and "v001" in panel.model_label.text()

    # An adapter that does not fit: the switch fails and v001 is put back.
    info = AdapterInfo(model.fingerprint, "decoder", base_name=model.name)
    store.add({"mask_decoder.iou_token.weight": torch.zeros(3, 3)}, info)
    panel.refresh()
    assert _activate(panel, qtbot, widget, lambda: panel.activate("v002")) == ["v002", False]
    assert any("could not switch to v002" in m for m in _messages("error"))
    assert active_adapter(model).fingerprint == in_use and store.active_name(model.fingerprint) == "v001"
    assert np.array_equal(_predict(widget, segmenter).logits, reference.logits)


def test_round_text_keeps_the_forgetting_warning_in_view():
    from types import SimpleNamespace

    from napari_vfmseg.widgets.finetune_panel import describe_round

    plan = SimpleNamespace(describe=lambda: "14 training planes", held_out=[1, 2])
    base = dict(plan=plan, train=SimpleNamespace(steps_done=50, best_step=40), seconds=100.0, version=None,
                config=SimpleNamespace(mode="decoder"), dice_before=0.30, dice_after=0.43)
    kept = describe_round(SimpleNamespace(**base, guard_before=0.649, guard_after=0.645, notes=[]))
    forgot = describe_round(SimpleNamespace(**base, guard_before=0.649, guard_after=0.544,
                                            notes=["original-domain Dice fell by 10.5 points"]))
    assert "0.300 → 0.430" in kept and "warning" not in kept
    assert "0.649 → 0.544" in forgot and "warning: original-domain Dice fell by 10.5 points" in forgot


def test_panel_defaults_are_the_round_defaults() -> None:
    from napari_vfmseg.training.round_config import RoundConfig
    from napari_vfmseg.widgets.finetune_panel import DEFAULT_RANK, DEFAULT_STEPS, MODES_SHOWN

    assert (DEFAULT_STEPS, DEFAULT_RANK) == (RoundConfig.steps, RoundConfig.rank)
    assert MODES_SHOWN[0] == RoundConfig.mode  # the first entry is what the panel starts with

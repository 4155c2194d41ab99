"""The fine-tune panel's "Distil" action in a real napari viewer with a tiny teacher.

The annotated volume's true labels on a few planes stand in for committed objects; a tiny
DistillConfig (nano student at 64 px, a handful of steps) keeps each run to seconds.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
from qtpy.QtCore import Qt

from _tiny_models import synthetic_volume, tiny_loaded_model
from napari_vfmseg._layer_geometry import GEOMETRY_KEY
from napari_vfmseg.engine import Segmenter
from napari_vfmseg.models import load_model
from napari_vfmseg.models.student import STUDENT_SIZES
from napari_vfmseg.training.distill import STAGES, DistillConfig
from napari_vfmseg.widgets.annotator import AnnotatorWidget
from napari_vfmseg.widgets.distill_action import DEFAULT_SIZE, SIZES_SHOWN, output_path

pytestmark = pytest.mark.usefixtures("one_thread")

TIMEOUT = 10_000
RUN_TIMEOUT = 60_000
PLANES = (2, 4, 6, 8)   # planes whose true labels play the committed objects
TINY = DistillConfig(img_size=64, embed_steps=4, mask_steps=2, label_steps=2, batch=4, mask_batch=2,
                     prompts_per_image=2, max_transfer_images=16, synthetic_fraction=0.2, objects_per_image=2,
                     min_pixels=8, checkpoint_every=2)


@pytest.fixture
def distilling(make_napari_viewer, qtbot, tmp_path):
    """The annotator on a 12-plane volume with the tiny model, objects on PLANES, a project in
    tmp_path, and the Distil action set to a nano student with TINY settings."""
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    image, truth = synthetic_volume(planes=12, size=64, seed=0)
    viewer = make_napari_viewer(show=False)
    geometry = {"spacing": [2.0, 1.0, 1.0], "origin": [0.0] * 3, "direction": np.eye(3).tolist(), "modality": "MR"}
    viewer.add_image(image, name="mr", metadata={GEOMETRY_KEY: geometry})
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget)
    model = tiny_loaded_model(seed=5)
    widget.use_segmenter(Segmenter(model))
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy and not widget.prefetching, timeout=TIMEOUT)
    labels = np.zeros_like(truth)
    labels[list(PLANES)] = truth[list(PLANES)]
    widget.session.set_labels(labels)
    panel = widget.finetune_panel
    panel.auto.set_enabled(False)
    assert panel.set_project(tmp_path / "project")
    action = panel.distil
    action.config = TINY
    action.timing_repeats = 2
    action.size_combo.setCurrentIndex(action.size_combo.findData("nano"))
    yield widget, panel, action, model, tmp_path / "project" / "students"
    widget.shutdown()


def _messages(level):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if str(n.severity).lower().endswith(level)]


def _distil(action, qtbot):
    assert action.distil_button.isEnabled(), action.distil_button.toolTip()
    with qtbot.waitSignal(action.finished, timeout=RUN_TIMEOUT) as blocker:
        action.distil_button.click()
        assert action.running and action.cancel_button.isEnabled() and not action.distil_button.isEnabled()
    return blocker.args[0]


def test_sizes_shown_are_the_student_sizes():
    assert set(SIZES_SHOWN) == set(STUDENT_SIZES) and DEFAULT_SIZE == DistillConfig().student_size


def test_distil_writes_a_student_that_the_model_list_offers_and_loads(distilling, qtbot):
    widget, panel, action, model, students = distilling
    seen = []
    action.progressed.connect(lambda p: seen.append((p.stage, p.step, p.total)))
    assert action.distil_button.isEnabled(), action.distil_button.toolTip()
    with qtbot.waitSignal(action.finished, timeout=RUN_TIMEOUT) as blocker:
        action.distil_button.click()
        # a round and a distillation never run together; nor is the adapter switched meanwhile
        assert action.running and not panel.start_button.isEnabled() and not panel.activate_button.isEnabled()
        assert panel.unavailable_reason() == "a distillation is under way" and not panel.start()
    result = blocker.args[0]
    assert result is not None and not result.cancelled
    assert [stage for stage in STAGES if any(s == stage for s, _, _ in seen)] == list(STAGES)
    assert ("embed", 4, 4) in seen and ("labels", 2, 2) in seen

    path = action.student_path
    assert path.parent == students and path.name.startswith("tiny_vit_test_5-base-nano-") and path.is_file()
    assert not list(students.glob("*.checkpoint.safetensors"))   # complete: nothing left to resume
    student = load_model(path, device="cpu")
    assert student.arch == "student" and student.info["student_card"]["teacher"]["fingerprint"] == model.fingerprint
    assert widget.segmenter.model is model   # the viewer's model is untouched

    figures = result.card["figures"]
    assert f"{figures['student_encoder_ms']:.1f} ms" in action.status_label.text()
    assert any(path.name in m and "ms" in m and "agreement" in m for m in _messages("info"))
    model_panel = widget.model_panel
    assert model_panel.model_combo.currentData() == str(path)
    source = model_panel.source()
    assert source.name is None and source.checkpoint == str(path)
    assert panel.start_button.isEnabled() and action.distil_button.isEnabled() and action.use_button.isEnabled()

    with qtbot.waitSignal(widget.model_changed, timeout=TIMEOUT):   # one click
        action.use_button.click()
    assert widget.segmenter.model.arch == "student"
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy and not widget.prefetching, timeout=TIMEOUT)


def test_cancel_writes_no_student_keeps_the_checkpoint_and_distil_resumes(distilling, qtbot):
    widget, panel, action, model, students = distilling
    action.config = replace(TINY, embed_steps=6)
    reached, gate = threading.Event(), threading.Event()

    def hold(progress):   # on the worker thread: wait at the first embedding step until Cancel is pressed
        if progress.stage == "embed" and not reached.is_set():
            reached.set()
            gate.wait(RUN_TIMEOUT / 1000)

    action.progressed.connect(hold, Qt.DirectConnection)
    with qtbot.waitSignal(action.finished, timeout=RUN_TIMEOUT) as blocker:
        action.distil_button.click()
        qtbot.waitUntil(reached.is_set, timeout=RUN_TIMEOUT)
        action.cancel_button.click()
        gate.set()
    result = blocker.args[0]
    assert result.cancelled
    assert not [p for p in students.glob("*.safetensors") if not p.name.endswith(".checkpoint.safetensors")]
    checkpoints = list(students.glob("*.checkpoint.safetensors"))
    assert len(checkpoints) == 1 and str(checkpoints[0]) == result.checkpoint
    assert "cancelled" in action.status_label.text() and "resume" in action.status_label.text()
    assert action.student_path is None and not action.use_button.isEnabled()
    assert widget.model_panel.model_combo.findText("student", Qt.MatchStartsWith) < 0

    action.progressed.disconnect(hold)
    steps = []
    action.progressed.connect(lambda p: steps.append((p.stage, p.step)))
    resumed = _distil(action, qtbot)
    assert resumed is not None and not resumed.cancelled
    assert min(step for stage, step in steps if stage == "embed") == 2   # resumed after step 1
    assert action.student_path.name == checkpoints[0].name.replace(".checkpoint", "")
    assert action.student_path.is_file() and not checkpoints[0].exists()


def test_a_failing_distillation_notifies_and_leaves_the_panel_usable(distilling, qtbot, monkeypatch):
    widget, panel, action, model, students = distilling

    def broken(model):
        raise RuntimeError("no memory for the teacher")

    monkeypatch.setattr("napari_vfmseg.widgets.distill_action.teacher_copy", broken)
    assert _distil(action, qtbot) is None
    assert any("distillation failed: no memory for the teacher" in m for m in _messages("error"))
    assert "failed" in action.status_label.text() and not action.running
    assert action.distil_button.isEnabled() and panel.start_button.isEnabled()


def test_closing_the_annotator_cancels_a_running_distillation(distilling, qtbot):
    widget, panel, action, model, students = distilling
    action.config = replace(TINY, embed_steps=400)
    started = []
    action.progressed.connect(lambda p: started.append(p.stage))
    action.distil_button.click()
    qtbot.waitUntil(lambda: "embed" in started, timeout=RUN_TIMEOUT)
    call = action._call
    widget.shutdown()
    assert not action.running
    assert call.join(RUN_TIMEOUT / 1000)   # stopped long before its 400 steps
    assert not [p for p in students.glob("*.safetensors") if not p.name.endswith(".checkpoint.safetensors")]
    assert list(students.glob("*.checkpoint.safetensors"))


def test_output_name_resumes_only_an_unfinished_run_of_the_same_teacher_and_size(tmp_path):
    fresh, resume = output_path(tmp_path, "builtin", "v002", "tiny")
    assert not resume and fresh.name.startswith("builtin-v002-tiny-") and fresh.suffix == ".safetensors"
    pending = tmp_path / "builtin-v002-tiny-20240101-000000.checkpoint.safetensors"
    pending.write_bytes(b"")
    assert output_path(tmp_path, "builtin", "v002", "tiny") == (tmp_path / "builtin-v002-tiny-20240101-000000.safetensors", True)
    assert not output_path(tmp_path, "builtin", "v002", "nano")[1] and not output_path(tmp_path, "builtin", "base", "tiny")[1]
    (tmp_path / "builtin-v002-tiny-20240101-000000.safetensors").write_bytes(b"")   # finished after all
    assert not output_path(tmp_path, "builtin", "v002", "tiny")[1]


def test_teacher_is_a_copy_with_the_adapter_in_use_merged():
    import torch

    from napari_vfmseg.models.lora import LoRAConfig, inject_lora, lora_modules
    from napari_vfmseg.training.adapters import AdapterInfo, active_adapter, adapter_fingerprint, apply_adapter_tensors
    from napari_vfmseg.widgets.distill_action import teacher_copy

    model = tiny_loaded_model(seed=0)
    lora = LoRAConfig(rank=2, alpha=2.0, encoder_targets=("qkv",), decoder_targets=())
    scratch = tiny_loaded_model(seed=0)
    inject_lora(scratch.sam, lora)
    for _, layer in lora_modules(scratch.sam):
        with torch.no_grad():
            layer.lora_B.normal_(0.0, 0.5)
    tensors = {k: v.clone() for k, v in scratch.sam.state_dict().items() if ".lora_" in k}
    info = AdapterInfo(base_fingerprint=model.fingerprint, mode="encoder-lora", lora=lora,
                       fingerprint=adapter_fingerprint(tensors, "encoder-lora"))
    apply_adapter_tensors(model, tensors, info)   # as the viewer holds it: LoRA on, not merged
    teacher = teacher_copy(model)
    assert teacher is not model and active_adapter(teacher).fingerprint == info.fingerprint
    assert all(layer.merged for _, layer in lora_modules(teacher.sam))
    assert not any(layer.merged for _, layer in lora_modules(model.sam))   # the model in use is untouched
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        adapted = model.sam.image_encoder(image)
        torch.testing.assert_close(teacher.sam.image_encoder(image), adapted, rtol=1e-4, atol=1e-5)
        base = tiny_loaded_model(seed=0).sam.image_encoder(image)
        assert not torch.allclose(base, adapted, atol=1e-3)   # the adapter does change the encoder

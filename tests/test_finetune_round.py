"""One fine-tuning round (training.rounds) on a tiny model: plan, train a copy, measure, save, replay."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_vfmseg.engine import Prediction, Segmenter
from napari_vfmseg.training.adapter_store import AdapterStore, example_key
from napari_vfmseg.training.adapters import active_adapter
from napari_vfmseg.training.data import LabelledImage
from napari_vfmseg.training.rounds import (
    RoundConfig,
    gather_examples,
    one_click_dice,
    plan_round,
    run_round,
)

from _tiny_models import synthetic_volume, tiny_loaded_model

FAST = dict(steps=30, lr=1e-2, images_per_step=2, prompts_per_image=2, correction_clicks=1, val_every=10)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def volume():
    return synthetic_volume(planes=24, size=96, seed=0)


@pytest.fixture(scope="module")
def pairs(volume):
    image, labels = volume
    return gather_examples(image, labels, window=(100, 300), source="synthetic")


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.sam.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gather_takes_only_planes_with_objects_windowed_once(volume):
    image, labels = volume
    sparse = np.zeros_like(labels)
    sparse[[3, 9, 15]] = labels[[3, 9, 15]]
    pairs = gather_examples(image, sparse, window=(100, 300), source="vol")
    assert [p.plane for p in pairs] == [3, 9, 15] and all(p.image.dtype == np.uint8 for p in pairs)
    assert np.array_equal(pairs[1].labels, labels[9]) and pairs[1].source == "vol plane 9"
    assert gather_examples(image, np.zeros_like(labels)) == []


def test_plan_splits_new_planes_and_remembers_roles_across_rounds(tmp_path, pairs):
    config = RoundConfig(held_out_fraction=0.25, block_size=4, guard_planes=1)
    plan = plan_round(pairs, None, config)
    held = {p.plane for p in plan.held_out}
    trained = {p.plane for p in plan.train}
    assert held and trained and not held & trained and plan.n_new == len(pairs) == len(plan.new_roles)
    assert min(abs(t - h) for t in trained for h in held) >= 2        # no training plane touches a held-out one
    spacers = {p.plane for p, r in zip(plan.new, plan.new_roles) if r == "spacer"}
    assert spacers and len(plan.train) + len(plan.held_out) + len(spacers) == len(pairs)
    assert all(min(abs(s - h) for h in held) == 1 for s in spacers)     # the planes next to held-out ones
    store = AdapterStore(tmp_path)
    model = tiny_loaded_model()
    tensors = {"mask_decoder.iou_token.weight": model.sam.mask_decoder.iou_token.weight.detach().clone()}
    from napari_vfmseg.training.adapters import AdapterInfo

    store.add(tensors, AdapterInfo(model.fingerprint, "decoder"), examples=plan.new, roles=plan.new_roles)
    # Next round: half of the old planes are open again (one corrected), plus nothing else.
    reopened = [LabelledImage(p.image, p.labels.copy(), p.plane, p.source) for p in pairs[::2]]
    reopened[0].labels[reopened[0].labels == 1] = 0
    again = plan_round(reopened, store, RoundConfig(replay_limit=100))
    assert {p.plane for p in again.held_out} == held                    # every old held-out plane is measured
    assert {p.plane for p in again.train} == trained                    # open ones + the replayed rest
    assert not spacers & {p.plane for p in again.train + again.held_out}   # spacers stay unused
    assert {p.plane for p in again.replay} == trained - {p.plane for p in reopened}
    assert again.n_new == 1 and again.new[0].plane == reopened[0].plane  # only the corrected plane is new
    with pytest.raises(ValueError, match="nothing to train on"):
        plan_round(pairs, None, RoundConfig(min_pixels=10**6))           # no object is big enough

def test_round_trains_a_copy_measures_and_saves_a_version(tmp_path, pairs):
    model = tiny_loaded_model()
    before = _state(model)
    store = AdapterStore(tmp_path)
    phases, steps = [], []
    guard = pairs[:2]

    def progress(p):
        phases.append(p.phase)
        if p.phase == "training":
            steps.append(p.step)

    result = run_round(model, pairs, store, RoundConfig(mode="decoder", **FAST), guard=guard, progress=progress)
    assert _same(before, _state(model)) and active_adapter(model) is None   # the caller's model is untouched
    assert steps == list(range(1, 31)) and phases[0] == "measuring before" and phases[-1] == "saving"
    assert result.improved and not result.cancelled and result.version.name == "v001"
    assert result.dice_after > result.dice_before + 0.1                     # the tiny model learns the blobs
    version = store.get("v001")
    assert (version.dice_before, version.dice_after) == (result.dice_before, result.dice_after)
    assert (version.guard_before, version.guard_after) == (result.guard_before, result.guard_after)
    assert version.n_planes == len(result.plan.train) and version.n_held_out == len(result.plan.held_out)
    assert version.parent is None and version.mode == "decoder" and version.rank is None
    assert version.base_fingerprint == model.fingerprint and version.adapter_fingerprint == result.info.fingerprint
    assert len(store.known_examples()) == len(pairs)
    # The saved adapter reproduces the measured "after" figure on the caller's model.
    store.apply(model, "v001")
    assert one_click_dice(model, result.plan.held_out) == pytest.approx(result.dice_after, abs=1e-9)
    assert one_click_dice(model, guard) == pytest.approx(result.guard_after, abs=1e-9)


def test_next_round_starts_from_the_active_adapter_and_replays(tmp_path, pairs):
    model = tiny_loaded_model()
    store = AdapterStore(tmp_path)
    first = run_round(model, pairs[:12], store, RoundConfig(mode="encoder-lora", rank=2, **FAST))
    store.apply(model, first.version.name)
    on_model = _state(model)
    second = run_round(model, pairs[12:], store, RoundConfig(mode="encoder-lora", rank=2, **FAST))
    assert _same(on_model, _state(model))                           # still v001 on the caller's model
    assert second.parent == "v001" and second.version.parent == "v001"
    assert len(second.plan.replay) == len([r for r in first.plan.new_roles if r == "train"]) > 0
    assert second.version.n_replayed == len(second.plan.replay)
    # It started from v001: its "before" is v001's Dice on the (old + new) held-out planes.
    assert second.dice_before == pytest.approx(one_click_dice(model, second.plan.held_out), abs=1e-9)
    assert active_adapter(model).fingerprint == first.version.adapter_fingerprint


def test_cancel_and_no_improvement_save_nothing(tmp_path, pairs):
    model = tiny_loaded_model()
    before = _state(model)
    store = AdapterStore(tmp_path)
    cancel = threading.Event()

    def progress(p):
        if p.phase == "training" and p.step == 3:
            cancel.set()

    result = run_round(model, pairs, store, RoundConfig(mode="decoder", **FAST), progress=progress, cancel=cancel)
    assert result.cancelled and result.version is None and result.train.steps_done == 3
    assert store.versions() == [] and not (tmp_path / "adapters.json").exists()
    assert any("cancelled" in n for n in result.notes)
    stalled = run_round(model, pairs, store, RoundConfig(mode="decoder", **{**FAST, "lr": 1e-12, "steps": 10}))
    assert not stalled.improved and stalled.version is None and store.versions() == []
    assert any("did not beat" in n for n in stalled.notes)
    assert _same(before, _state(model))


class _Perfect(Segmenter):
    """Answers a click with the connected label under it: 1-click Dice is exactly 1."""

    def set_image(self, image, window=None, modality=None):
        self.labels = self.truth[example_key(np.asarray(image))]
        return super().set_image(image, window, modality)

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask=None, plane=None):
        row, col = (int(round(v)) for v in points[0])
        mask = self.labels == self.labels[row, col]
        return Prediction(mask, 1.0, np.zeros((32, 32), np.float32), np.ones(1), np.zeros((1, 32, 32)), 0, False)


def test_one_click_dice_scores_each_object_at_full_resolution(pairs):
    perfect = _Perfect(tiny_loaded_model())
    perfect.truth = {example_key(p.image): p.labels for p in pairs}
    assert one_click_dice(perfect, pairs[:3]) == 1.0
    # Object 2 painted over with background: its click now returns the background region.
    perfect.truth = {example_key(p.image): np.where(p.labels == 2, 0, p.labels) for p in pairs}
    plane = pairs[10].labels
    two = plane == 2
    expected = np.mean([1.0, 2 * two.sum() / ((plane != 1).sum() + two.sum())])
    assert one_click_dice(perfect, [pairs[10]]) == pytest.approx(expected)
    assert one_click_dice(perfect, []) is None

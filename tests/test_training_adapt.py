"""The adaptation loop on few planes: same pixels as inference, leave-one-plane-out, a round that
learns on a real scan, a round that cannot improve, and the continuous-adaptation policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vfmseg.training.continuous import ContinuousAdaptation
from napari_vfmseg.training.data import frame_pair, pairs_from_volume
from napari_vfmseg.training.lopo import leave_one_plane_out, pair_scores
from napari_vfmseg.training.rounds import RoundConfig, gather_examples, run_round

from _tiny_models import synthetic_volume, tiny_loaded_model

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
# The fast option (cached early stages, cosine, one correction click): these tests check the round's
# mechanics in seconds on a tiny model; the default recipe's figures are in docs/finetuning.md.
QUICK = dict(steps=30, lr=3e-3, images_per_step=2, prompts_per_image=2, cache_views=4, cache_early=True,
             rotate_degrees=15.0, schedule="cosine", correction_clicks=1)


def _real_planes(planes=(0.3, 0.5, 0.7)):
    """Three axial planes (brain mask) of the shipped real T1 scan, and the volume, labels, spacing."""
    from napari_vfmseg.io import read_volume

    volume = read_volume(SAMPLE / "mni_brain_t1.nii.gz")
    labels = (np.asarray(read_volume(SAMPLE / "mni_brain_t1_labels.nii.gz").array) > 0).astype(np.uint8)
    filled = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    chosen = [int(round(filled[0] + f * (filled[-1] - filled[0]))) for f in planes]
    pairs = pairs_from_volume(np.asarray(volume.array), labels, modality="MR", spacing=tuple(volume.scale))
    return [p for p in pairs if p.plane in chosen], volume, labels


def test_training_and_inference_see_the_same_pixels():
    """Non-square pixels and a CT window: the trainer's frame and embedding equal the engine's."""
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.training.forward import embed_images

    image, labels = synthetic_volume(planes=6, size=64, seed=1)
    spacing = (1.0, 2.5, 1.0)                                   # rows 2.5 x taller than columns are wide
    pairs = pairs_from_volume(image, labels, axis=0, window=(100, 300), spacing=spacing)
    assert pairs and all(p.pixel_aspect == pytest.approx(2.5) for p in pairs)
    sagittal = pairs_from_volume(image, labels, axis=2, window=(100, 300), spacing=spacing)
    assert sagittal and all(p.pixel_aspect == pytest.approx(1.0 / 2.5) for p in sagittal)  # (plane, row) planes
    model = tiny_loaded_model()
    pair = pairs[len(pairs) // 2]
    framed = frame_pair(pair, model.image_size)
    assert framed.image.shape[0] > framed.image.shape[1]       # stretched along its rows, as inference does
    segmenter = Segmenter(model)
    segmenter.set_volume(image, axis=0, window=(100, 300), spacing=spacing)
    engine = segmenter.embedding(pair.plane)
    assert tuple(engine.input_size) == framed.image.shape
    with torch.no_grad():
        trained = embed_images(model.sam, [framed.image])
    assert torch.allclose(trained[0].float(), torch.as_tensor(engine.features).float().reshape(trained[0].shape),
                          atol=1e-5)
    segmenter.close()


def test_leave_one_plane_out_scores_each_plane_after_training_on_the_others():
    image, labels = synthetic_volume(planes=24, size=96, seed=0)
    pairs = [p for p in pairs_from_volume(image, labels, window=(100, 300)) if p.plane in (6, 12, 18)]
    model = tiny_loaded_model()
    state = {k: v.clone() for k, v in model.sam.state_dict().items()}
    config = RoundConfig(mode="full", **QUICK).train_config()
    seen = []
    report = leave_one_plane_out(model, pairs, config, folds=3, fold_steps=20, progress=lambda d, t: seen.append((d, t)))
    assert [f.source for f in report.folds] == [p.source for p in pairs] and seen == [(1, 3), (2, 3), (3, 3)]
    from napari_vfmseg.engine import Segmenter

    base = Segmenter(model)
    for fold, pair in zip(report.folds, pairs):      # "before" is the untouched model on that plane
        assert (fold.box_before, fold.click_before) == pytest.approx(pair_scores(base, pair))
    base.close()
    assert report.click_after > report.click_before and report.gain > 0
    assert all(torch.equal(model.sam.state_dict()[k], v) for k, v in state.items())  # the caller's model was only read
    assert leave_one_plane_out(model, pairs[:1], config).folds == []   # one plane: nothing to leave out


def test_a_round_on_three_planes_of_a_real_scan_improves_planes_it_did_not_see():
    pairs, volume, labels = _real_planes()
    model = tiny_loaded_model()
    result = run_round(model, pairs, config=RoundConfig(**QUICK, lopo_folds=2, lopo_steps=15))
    assert result.plan.validation == "lopo" and len(result.plan.train) == 3 and not result.plan.held_out
    assert result.lopo is not None and len(result.lopo.folds) == 2
    assert result.improved and any("leave-one-plane-out" in n for n in result.notes)
    # Planes nobody corrected, along the other two axes: box Dice before < after.
    from napari_vfmseg.training.adapt_eval import volume_scores
    from napari_vfmseg.training.adapters import apply_adapter_tensors

    before = volume_scores(model, np.asarray(volume.array), labels, tuple(volume.scale), modality="MR",
                           axes=(1, 2), max_planes=4, clicks=False)
    apply_adapter_tensors(model, result.tensors, result.info)
    after = volume_scores(model, np.asarray(volume.array), labels, tuple(volume.scale), modality="MR",
                          axes=(1, 2), max_planes=4, clicks=False)
    for axis in (1, 2):
        assert after[axis].box > before[axis].box, axis


def test_a_round_that_cannot_improve_keeps_the_base_and_says_so(tmp_path):
    from napari_vfmseg.training.adapter_store import AdapterStore
    from napari_vfmseg.training.adapters import active_adapter

    image, labels = synthetic_volume(planes=24, size=96, seed=0)
    pairs = [p for p in gather_examples(image, labels, window=(100, 300)) if p.plane in (6, 12, 18)]
    model = tiny_loaded_model()
    state = {k: v.clone() for k, v in model.sam.state_dict().items()}
    store = AdapterStore(tmp_path)
    result = run_round(model, pairs, store, RoundConfig(**{**QUICK, "lr": 1e-12, "steps": 6}, lopo_steps=3))
    assert not result.improved and result.version is None and store.versions() == []
    note = next(n for n in result.notes if "leave-one-plane-out" in n)
    assert "not kept" in note and "→" in note and active_adapter(model) is None
    assert all(torch.equal(model.sam.state_dict()[k], v) for k, v in state.items())


def test_continuous_adaptation_starts_a_round_every_k_committed_planes():
    policy = ContinuousAdaptation(every=2, min_planes=3)
    assert policy.planes_committed([(0, 1)]) is None and policy.planes_committed([(0, 5)]) is None
    config = policy.planes_committed([(0, 9)])
    assert config is not None and config.steps <= RoundConfig().steps
    policy.round_started()
    assert policy.planes_committed([(0, 12), (0, 15)]) is None           # never two rounds at once
    policy.round_finished(None)                                          # failed or cancelled: count kept
    assert policy.pending == 5 and policy.planes_committed([]) is not None
    policy.round_started()
    policy.round_finished(object())                                      # finished: its planes are used
    assert policy.pending == 0 and policy.planes_committed([(0, 20)]) is None
    assert policy.planes_committed([(0, 22)]) is not None
    policy.cancel_pending()
    assert policy.pending == 0
    off = ContinuousAdaptation(enabled=False)
    assert off.planes_committed([(0, i) for i in range(10)]) is None
    assert ContinuousAdaptation.for_model(tiny_loaded_model()).enabled

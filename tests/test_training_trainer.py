"""The fine-tuning loop on tiny SAM-shaped models: learning, determinism, cancel, modes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_vfmseg.models.lora import LoRAConfig, lora_modules
from napari_vfmseg.training.adapters import active_adapter, current_adapter_tensors
from napari_vfmseg.training.data import pairs_from_volume, split_by_plane_blocks
from napari_vfmseg.training.trainer import TrainConfig, Trainer, embed_images, fine_tune

from _tiny_models import synthetic_volume, tiny_loaded_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split():
    image, labels = synthetic_volume(planes=24, size=96, seed=0)
    pairs = pairs_from_volume(image, labels, window=(100, 300), source="synthetic")
    return split_by_plane_blocks(pairs, val_fraction=0.25, block_size=4, guard=1, seed=0)


FAST = dict(images_per_step=2, prompts_per_image=2, correction_clicks=1, lr=1e-2)


def _embedding(model, image):
    """The encoder's embedding of a uint8 plane (zero-padded to the input size)."""
    with torch.no_grad():
        return embed_images(model.sam, [image])


def test_short_finetune_lowers_loss_and_raises_val_dice(split):
    train, val = split
    model = tiny_loaded_model()
    seen = []
    result = fine_tune(model, train, val, TrainConfig(mode="decoder", steps=60, val_every=20,
                                                      early_stop_patience=0, **FAST),
                       progress=seen.append)
    losses = [h["loss"] for h in result.history[1:]]
    assert len(losses) == 60 and [p.step for p in seen] == list(range(1, 61))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert result.val_dice_after > result.val_dice_before + 0.3
    assert result.improved and result.best_step in (20, 40, 60)
    assert [p.val_dice is not None for p in seen].count(True) == 3
    # The model now carries the best state as a decoder adapter; the encoder is untouched.
    info = active_adapter(model)
    assert info.mode == "decoder" and info.val_dice_after == result.val_dice_after
    assert model.adapter_fingerprint is None
    assert result.parameters.by_part["image_encoder"] == 0 and 0 < result.parameters.share < 1
    assert all(not p.requires_grad for p in model.sam.parameters())


def test_seeded_runs_are_identical_on_cpu(split):
    train, val = split
    config = TrainConfig(mode="encoder-lora", steps=4, val_every=2, **FAST)
    runs = []
    for _ in range(2):
        model = tiny_loaded_model()
        result = fine_tune(model, train, val, config)
        runs.append((result, current_adapter_tensors(model) or result.tensors))
    (a, ta), (b, tb) = runs
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.val_dice_after == b.val_dice_after
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    other = fine_tune(tiny_loaded_model(), train, val, TrainConfig(mode="encoder-lora", steps=4, val_every=2,
                                                                   seed=1, **FAST))
    assert [h["loss"] for h in other.history] != [h["loss"] for h in a.history]


def test_cancel_keeps_the_previous_adapter(split):
    train, val = split
    model = tiny_loaded_model()
    first = fine_tune(model, train, val, TrainConfig(mode="decoder", steps=20, val_every=10, **FAST))
    assert first.improved
    previous = current_adapter_tensors(model)
    previous_fp = active_adapter(model).fingerprint

    cancel = threading.Event()

    def stop_at_three(progress):
        if progress.step == 3:
            cancel.set()

    second = fine_tune(model, train, val, TrainConfig(mode="decoder", steps=50, val_every=10, **FAST),
                       progress=stop_at_three, cancel=cancel)
    assert second.cancelled and second.steps_done == 3 and not second.improved
    assert active_adapter(model).fingerprint == previous_fp
    now = current_adapter_tensors(model)
    assert now.keys() == previous.keys() and all(torch.equal(now[k], previous[k]) for k in now)

    # Cancelling a run of another mode also puts the previous (decoder) adapter back.
    cancel.clear()
    third = fine_tune(model, train, val, TrainConfig(mode="encoder-lora", steps=50, val_every=10, **FAST),
                      progress=stop_at_three, cancel=cancel)
    assert third.cancelled and third.steps_done == 3
    assert active_adapter(model).mode == "decoder" and not list(lora_modules(model.sam))
    now = current_adapter_tensors(model)
    assert all(torch.equal(now[k], previous[k]) for k in previous)
    assert model.adapter_fingerprint is None


def test_cancel_before_first_step_on_a_base_model_changes_nothing(split):
    train, val = split
    model = tiny_loaded_model()
    base = {k: v.clone() for k, v in model.sam.state_dict().items()}
    cancel = threading.Event()
    cancel.set()
    result = fine_tune(model, train, val, TrainConfig(mode="encoder-lora", steps=10, **FAST), cancel=cancel)
    assert result.cancelled and result.steps_done == 0
    assert active_adapter(model) is None and not list(lora_modules(model.sam))
    after = model.sam.state_dict()
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)


def test_encoder_lora_changes_embeddings_and_the_cache_key(split):
    train, _ = split
    model = tiny_loaded_model()
    image = train[0].image
    base_key = model.cache_key
    base_embedding = _embedding(model, image)
    result = fine_tune(model, train, [], TrainConfig(mode="encoder-lora", steps=6, **FAST))
    assert result.val_dice_before is None and result.best_step == 6     # no validation: last step kept
    assert model.adapter_fingerprint == result.info.fingerprint
    assert model.cache_key != base_key and model.cache_key.startswith(model.fingerprint)
    assert not torch.allclose(_embedding(model, image), base_embedding)
    names = set(result.tensors)
    assert any(".lora_A" in n and n.startswith("image_encoder.") for n in names)
    assert not any(n.startswith("image_encoder.") and ".lora_" not in n for n in names)
    assert result.parameters.by_part["image_encoder"] > 0

    # Decoder mode (with decoder LoRA) leaves embeddings bit-identical.
    other = tiny_loaded_model()
    fine_tune(other, train, [], TrainConfig(mode="decoder", steps=3,
                                            lora=LoRAConfig(rank=2, alpha=2, encoder_targets=(),
                                                            decoder_targets=("q_proj", "v_proj")), **FAST))
    assert other.adapter_fingerprint is None
    assert torch.equal(_embedding(other, image), base_embedding)
    assert any("transformer" in n and ".lora_B" in n for n in current_adapter_tensors(other))


def test_full_mode_and_conv_encoder_with_grad_accumulation(split):
    train, _ = split
    model = tiny_loaded_model(conv=True)
    result = fine_tune(model, train, [], TrainConfig(mode="encoder-lora", steps=3, grad_accum=2, augment=True,
                                                     **FAST))
    assert result.steps_done == 3 and len(result.history) == 4
    assert {n.split(".")[1] for n in result.tensors if n.startswith("image_encoder.")} == {"pw1", "pw2"}
    full = fine_tune(tiny_loaded_model(), train, [], TrainConfig(mode="full", steps=2, **FAST))
    assert full.parameters.share == 1.0
    assert full.info.changes_encoder


def test_bad_configurations_are_rejected(split):
    train, _ = split
    with pytest.raises(ValueError, match="mode"):
        TrainConfig(mode="everything")
    with pytest.raises(ValueError, match="decoder mode never changes"):
        TrainConfig(mode="decoder", lora=LoRAConfig(encoder_targets=("qkv",)))
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    empty = [type(train[0])(train[0].image, np.zeros_like(train[0].labels), 0, "empty")]
    with pytest.raises(ValueError, match="no training plane"):
        Trainer(tiny_loaded_model(), empty, [], TrainConfig())


def _write_volume_pair(tmp_path, planes=16, spacing=(1.0, 1.0, 1.0)):
    """A synthetic volume and its labels as NIfTI files; ``spacing`` (x, y, z) mm."""
    import SimpleITK as sitk

    image, labels = synthetic_volume(planes=planes, size=96, seed=2)
    image_path, labels_path = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    for array, path in ((image, image_path), (labels.astype(np.uint8), labels_path)):
        written = sitk.GetImageFromArray(array)
        written.SetSpacing(spacing)
        sitk.WriteImage(written, str(path))
    return image_path, labels_path


def test_cli_finetune_then_evaluate_with_the_adapter(tmp_path, monkeypatch, capsys):
    import json

    import napari_vfmseg.models as models
    from napari_vfmseg.cli import main

    monkeypatch.setattr(models, "load_model", lambda name, device="auto", **kw: tiny_loaded_model())
    image_path, labels_path = _write_volume_pair(tmp_path)
    out = tmp_path / "adapter.safetensors"
    code = main(["finetune", str(image_path), str(labels_path), "--out", str(out), "--mode", "decoder",
                 "--steps", "60", "--lr", "1e-2", "--schedule", "cosine", "--correction-clicks", "1",
                 "--images-per-step", "2", "--prompts-per-image", "2", "--val-every", "20", "--block-size", "4",
                 "--window", "100,300", "--patience", "0", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.exists() and summary["adapter"] == str(out) and summary["mode"] == "decoder"
    assert summary["val_dice_after"] > summary["val_dice_before"]
    assert summary["n_val_planes"] > 0 and summary["n_train_examples"] > 0

    common = [str(image_path), str(labels_path), "--window", "100,300", "--max-clicks", "3", "--json"]
    assert main(["evaluate", *common]) == 0
    base = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["evaluate", *common, "--adapter", str(out)]) == 0
    tuned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for report in (base, tuned):
        assert {"dice_mean", "noc85", "noc90", "n_objects", "baselines"} <= set(report)
        assert report["n_objects"] == base["n_objects"] > 0
    assert tuned["dice_mean"] > base["dice_mean"] + 0.3
    # The engine's box Dice on all planes agrees with the trainer's validation Dice (same frames).
    assert abs(tuned["dice_mean"] - summary["val_dice_after"]) < 0.25
    assert tuned["baselines"] == base["baselines"]            # same objects, same boxes

    # Human-readable output and bad input.
    assert main(["finetune", str(image_path), str(labels_path), "--out", str(tmp_path / "a.pt")]) == 2
    assert "safetensors" in capsys.readouterr().err


def test_an_error_mid_run_restores_the_starting_model(split):
    train, val = split
    model = tiny_loaded_model()
    base = {k: v.clone() for k, v in model.sam.state_dict().items()}

    def explode(progress):
        if progress.step == 2:
            raise RuntimeError("viewer closed")

    with pytest.raises(RuntimeError, match="viewer closed"):
        fine_tune(model, train, val, TrainConfig(mode="encoder-lora", steps=5, **FAST), progress=explode)
    assert active_adapter(model) is None and model.adapter_fingerprint is None
    after = model.sam.state_dict()
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)


def test_encoder_training_uses_a_throwaway_cache_key_while_it_runs(split):
    train, _ = split
    model = tiny_loaded_model()
    keys = []
    fine_tune(model, train, [], TrainConfig(mode="encoder-lora", steps=2, **FAST),
              progress=lambda p: keys.append(model.cache_key))
    assert all("training-" in k for k in keys) and "training-" not in model.cache_key
    assert model.adapter_fingerprint == active_adapter(model).fingerprint


def test_cli_finetune_trains_each_plane_of_a_thick_slice_scan_also_across_its_slices_unless_told_not_to(tmp_path, monkeypatch, capsys):
    import json

    import napari_vfmseg.models as models
    from napari_vfmseg.cli import main

    monkeypatch.setattr(models, "load_model", lambda name, device="auto", **kw: tiny_loaded_model())
    image_path, labels_path = _write_volume_pair(tmp_path, planes=6, spacing=(1.0, 1.0, 2.5))   # thick slices
    counts = {}
    for flag in (["--no-thick-views"], []):
        out = tmp_path / f"a{len(flag)}.safetensors"   # default: on
        assert main(["finetune", str(image_path), str(labels_path), "--out", str(out), "--mode", "decoder",
                     "--steps", "2", "--validation", "held_out", "--block-size", "2", "--val-every", "1",
                     "--json", *flag]) == 0
        counts[not flag] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_train_examples"]
    assert counts[True] > counts[False] > 0     # the thick views add objects to train on

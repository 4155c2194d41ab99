"""Adapter files: round trip, base mismatch, removal, merge, atomic writes, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vfmseg.models.base import fingerprint_state_dict
from napari_vfmseg.models.lora import lora_modules
from napari_vfmseg.training import adapters as adapters_module
from napari_vfmseg.training.adapters import (
    ADAPTER_FORMAT_VERSION,
    AdapterError,
    AdapterInfo,
    active_adapter,
    apply_adapter,
    read_adapter,
    remove_adapter,
    save_adapter,
)
from napari_vfmseg.training.data import pairs_from_volume, split_by_plane_blocks
from napari_vfmseg.training.trainer import TrainConfig, decode, embed_images, fine_tune
from napari_vfmseg.training.prompts import PromptSet

from _tiny_models import synthetic_volume, tiny_loaded_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split():
    image, labels = synthetic_volume(planes=16, size=96, seed=1)
    pairs = pairs_from_volume(image, labels, window=(100, 300))
    return split_by_plane_blocks(pairs, val_fraction=0.25, block_size=4, seed=0)


FAST = dict(images_per_step=2, prompts_per_image=2, correction_clicks=1, lr=1e-2)


def _outputs(model, image: np.ndarray):
    """Embedding, low-res logits and IoU predictions for fixed box and point prompts."""
    sam = model.sam
    with torch.no_grad():
        emb = embed_images(sam, [image])
        box = PromptSet(None, None, np.array([[20, 20, 70, 60]], dtype=np.float32))
        point = PromptSet(np.array([[[40, 40]]], dtype=np.float32), np.array([[1]]), None)
        low_b, iou_b = decode(sam, emb, box)
        low_p, iou_p = decode(sam, emb, point, multimask=True)
    return emb, low_b, iou_b, low_p, iou_p


def _all_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("mode", ["decoder", "encoder-lora"])
def test_save_and_load_round_trip_gives_identical_outputs(split, tmp_path, mode):
    train, _ = split
    image = train[0].image
    trained = tiny_loaded_model()
    base_outputs = _outputs(trained, image)
    # Without validation data the last step is kept, so the adapter surely differs from the base.
    result = fine_tune(trained, train, [], TrainConfig(mode=mode, steps=6, **FAST))
    trained_outputs = _outputs(trained, image)
    path = result.save(tmp_path / f"{mode}.safetensors")
    assert path.exists()

    fresh = tiny_loaded_model()
    assert fresh.fingerprint == trained.fingerprint
    returned = apply_adapter(fresh, path)
    assert returned is fresh
    assert _all_equal(_outputs(fresh, image), trained_outputs)
    assert not _all_equal(trained_outputs, base_outputs)
    assert torch.equal(trained_outputs[0], base_outputs[0]) == (mode == "decoder")
    info = active_adapter(fresh)
    assert info.mode == mode and fresh.info["adapter"]["fingerprint"] == info.fingerprint
    assert (fresh.adapter_fingerprint is not None) == (mode == "encoder-lora")

    # Removing the adapter restores the base model bit for bit.
    remove_adapter(fresh)
    assert _all_equal(_outputs(fresh, image), base_outputs)
    assert fingerprint_state_dict(fresh.sam.state_dict()) == fresh.fingerprint
    assert active_adapter(fresh) is None and fresh.adapter_fingerprint is None and "adapter" not in fresh.info


def test_merged_adapter_matches_and_removal_is_exact(split, tmp_path):
    train, _ = split
    image = train[0].image
    model = tiny_loaded_model()
    result = fine_tune(model, train, [], TrainConfig(mode="encoder-lora", steps=5, **FAST))
    path = result.save(tmp_path / "lora.safetensors")
    unmerged = _outputs(model, image)
    merged_model = apply_adapter(tiny_loaded_model(), path, merge=True)
    assert all(layer.merged for _, layer in lora_modules(merged_model.sam))
    for a, b in zip(_outputs(merged_model, image), unmerged):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    remove_adapter(merged_model)
    assert fingerprint_state_dict(merged_model.sam.state_dict()) == merged_model.fingerprint


def test_base_mismatch_names_both_fingerprints(split, tmp_path):
    train, _ = split
    model = tiny_loaded_model(seed=0)
    path = fine_tune(model, train, [], TrainConfig(mode="decoder", steps=2, **FAST)).save(tmp_path / "a.safetensors")
    other = tiny_loaded_model(seed=1)
    before = fingerprint_state_dict(other.sam.state_dict())
    with pytest.raises(AdapterError) as excinfo:
        apply_adapter(other, path)
    message = str(excinfo.value)
    assert model.fingerprint in message and other.fingerprint in message and "a.safetensors" in message
    assert fingerprint_state_dict(other.sam.state_dict()) == before and active_adapter(other) is None


def test_metadata_fields(split, tmp_path):
    train, val = split
    model = tiny_loaded_model()
    result = fine_tune(model, train, val, TrainConfig(mode="encoder-lora", steps=4, val_every=2, **FAST))
    path = result.save(tmp_path / "meta.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "napari-vfmseg-adapter" and meta["format_version"] == str(ADAPTER_FORMAT_VERSION)
    assert meta["base_fingerprint"] == model.fingerprint and meta["mode"] == "encoder-lora"
    assert meta["rank"] == "4" and float(meta["alpha"]) == 4.0 and json.loads(meta["targets"]) == ["qkv"]
    assert int(meta["n_train_examples"]) == result.n_train_examples > 0
    assert float(meta["val_dice_before"]) == pytest.approx(result.val_dice_before)
    assert float(meta["val_dice_after"]) == pytest.approx(result.val_dice_after)
    assert meta["created"][:4].isdigit() and meta["adapter_fingerprint"] == result.info.fingerprint
    tensors, info = read_adapter(path)
    assert info.lora.rank == 4 and info.changes_encoder and set(tensors) == set(result.tensors)


def test_atomic_write_keeps_the_previous_file(split, tmp_path, monkeypatch):
    train, _ = split
    result = fine_tune(tiny_loaded_model(), train, [], TrainConfig(mode="decoder", steps=2, **FAST))
    path = result.save(tmp_path / "adapter.safetensors")
    original = path.read_bytes()

    import safetensors.torch

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half-written")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        result.save(path)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors"]


def test_bad_files_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(AdapterError, match="not a napari-vfmseg adapter"):
        read_adapter(plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 20)
    with pytest.raises(AdapterError, match="garbage.safetensors"):
        read_adapter(garbage)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        read_adapter(tmp_path / "missing.safetensors")

    model = tiny_loaded_model()
    info = AdapterInfo(base_fingerprint=model.fingerprint, mode="decoder")
    wrong = save_adapter(tmp_path / "wrong.safetensors", {"mask_decoder.nonexistent": torch.zeros(3)}, info)
    with pytest.raises(AdapterError, match="nonexistent"):
        apply_adapter(model, wrong)
    assert active_adapter(model) is None
    # Tampered tensors no longer match the recorded fingerprint.
    tensors, info = read_adapter(wrong)
    info.fingerprint = "0" * 16
    save_file({"mask_decoder.nonexistent": torch.zeros(3)}, str(tmp_path / "tampered.safetensors"),
              metadata=info.to_metadata())
    with pytest.raises(AdapterError, match="fingerprint"):
        read_adapter(tmp_path / "tampered.safetensors")
    with pytest.raises(ValueError, match=".safetensors"):
        save_adapter(tmp_path / "adapter.pt", {"a": torch.zeros(1)}, info)
    assert adapters_module.MODES == ("decoder", "encoder-lora", "full")

"""Loading what the user picked in the widget: registry model, checkpoint file, adapter, errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from _tiny_models import build_tiny_sam
from napari_vfmseg.models import ModelSpec, register_model, unregister_model, weights_dir
from napari_vfmseg.annotation.model_choice import NO_MODEL_HELP, ModelSource, load_engine


@pytest.fixture
def tiny_registry_model(tmp_path, monkeypatch):
    """A registry entry whose (tiny, random) weights are present in a private VFMSEG_HOME."""
    monkeypatch.setenv("VFMSEG_HOME", str(tmp_path / "home"))
    weights = weights_dir() / "tiny_choice.safetensors"
    weights.parent.mkdir(parents=True)
    save_file(build_tiny_sam(seed=1).state_dict(), str(weights))
    register_model(ModelSpec(name="tiny_choice", arch="tiny", builder=lambda: build_tiny_sam(seed=1), image_size=128,
                             filename=weights.name, url="https://example.invalid/tiny_choice.safetensors",
                             licence="test only", description="tiny random SAM"))
    yield "tiny_choice"
    unregister_model("tiny_choice")


def test_registry_model_loads_into_a_segmenter_with_its_adapter(tiny_registry_model, tmp_path):
    from napari_vfmseg.training.adapters import AdapterInfo, save_adapter

    plain = load_engine(ModelSource(name=tiny_registry_model, device="cpu"), download=False)
    assert plain.model.name == "tiny_choice" and plain.model.device == torch.device("cpu")
    assert plain.disk is None   # no cache_dir: memory cache only

    token = plain.sam.mask_decoder.iou_token.weight.detach().clone() + 0.5
    adapter = save_adapter(tmp_path / "decoder.safetensors", {"mask_decoder.iou_token.weight": token},
                           AdapterInfo(base_fingerprint=plain.model.fingerprint, mode="decoder"))
    adapted = load_engine(ModelSource(name=tiny_registry_model, adapter=str(adapter)), cache_dir=tmp_path / "cache", download=False)
    assert torch.equal(adapted.sam.mask_decoder.iou_token.weight.detach(), token)
    assert adapted.model.info["adapter"]["mode"] == "decoder"
    assert adapted.disk is not None and adapted.disk.folder.parent == tmp_path / "cache"


def test_bad_choices_raise_clear_errors(tiny_registry_model, tmp_path):
    from napari_vfmseg.training.adapters import AdapterError, AdapterInfo, save_adapter

    with pytest.raises(ValueError, match="no model weights"):
        load_engine(ModelSource())
    assert "choose a registry model" in NO_MODEL_HELP
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_engine(ModelSource(checkpoint=str(tmp_path / "missing.pth")))
    foreign = save_adapter(tmp_path / "foreign.safetensors", {"mask_decoder.iou_token.weight": torch.zeros(1, 32)},
                           AdapterInfo(base_fingerprint="0123456789abcdef", mode="decoder"))
    with pytest.raises(AdapterError, match="0123456789abcdef"):
        load_engine(ModelSource(name=tiny_registry_model, adapter=str(foreign)), download=False)
    assert ModelSource(name="vit_b", adapter="a.safetensors").describe() == "vit_b + adapter a.safetensors"

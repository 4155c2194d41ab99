"""No stale embeddings: an adapter that changes the encoder re-embeds a 2D image and volume planes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vfmseg.engine import Segmenter
from napari_vfmseg.training.adapters import AdapterInfo, apply_adapter, remove_adapter, save_adapter

from _tiny_models import engine_loaded_model


def _encoder_adapter(model, folder):
    """A "full" adapter file that rewrites the encoder's neck (so every embedding changes)."""
    state = model.sam.state_dict()
    generator = torch.Generator().manual_seed(7)
    tensors = {
        name: state[name] + 0.5 * torch.randn(state[name].shape, generator=generator)
        for name in state
        if name.startswith("image_encoder.neck.")
    }
    info = AdapterInfo(base_fingerprint=model.fingerprint, mode="full")
    assert info.changes_encoder
    return save_adapter(folder / "encoder.safetensors", tensors, info)


@pytest.fixture
def image():
    return np.random.default_rng(5).integers(0, 255, (60, 80, 3), dtype=np.uint8)


def test_apply_adapter_then_predict_gives_the_new_model_s_mask_on_a_2d_image(tmp_path, image):
    model = engine_loaded_model(seed=21)
    path = _encoder_adapter(model, tmp_path)
    segmenter = Segmenter(model)
    base_embedding = segmenter.set_image(image)
    box = (10, 12, 45, 60)
    before = segmenter.predict(box=box)
    assert segmenter.encoder_calls == 1

    apply_adapter(model, path)
    after = segmenter.predict(box=box)
    assert segmenter.encoder_calls == 2  # the image was embedded again, by the adapted encoder

    # what a segmenter built on the adapted model from scratch answers
    reference = Segmenter(engine_loaded_model(seed=21))
    apply_adapter(reference.model, path)
    expected_embedding = reference.set_image(image)
    expected = reference.predict(box=box)
    np.testing.assert_array_equal(after.mask, expected.mask)
    assert after.score == pytest.approx(expected.score, abs=1e-5)
    torch.testing.assert_close(segmenter.embedding().features, expected_embedding.features)
    assert not torch.allclose(expected_embedding.features, base_embedding.features, atol=1e-3)
    assert not np.allclose(after.logits, before.logits, atol=1e-3)

    remove_adapter(model)  # back to the base: the base embedding comes from the memory cache
    again = segmenter.predict(box=box)
    assert segmenter.encoder_calls == 2 and segmenter.stats.memory_hits >= 1
    np.testing.assert_array_equal(again.mask, before.mask)
    np.testing.assert_allclose(again.logits, before.logits, atol=1e-5)


def test_volume_planes_are_keyed_again_after_an_adapter(tmp_path):
    model = engine_loaded_model(seed=22)
    path = _encoder_adapter(model, tmp_path)
    volume = np.random.default_rng(6).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    segmenter = Segmenter(model)
    segmenter.set_volume(volume)
    first = segmenter.embedding(plane=1).features
    apply_adapter(model, path)
    adapted = segmenter.embedding(plane=1).features
    assert segmenter.encoder_calls == 2 and not torch.allclose(first, adapted, atol=1e-3)
    assert not segmenter.has_embedding(0) and segmenter.has_embedding(1)


def test_a_decoder_adapter_keeps_the_embedding(tmp_path, image):
    """An adapter that leaves the encoder alone keeps the cache key: nothing is embedded again."""
    model = engine_loaded_model(seed=23)
    state = model.sam.state_dict()
    tensors = {name: state[name] * 1.5 for name in state if name.startswith("mask_decoder.iou_prediction_head")}
    path = save_adapter(tmp_path / "decoder.safetensors", tensors,
                        AdapterInfo(base_fingerprint=model.fingerprint, mode="decoder"))
    segmenter = Segmenter(model)
    segmenter.set_image(image)
    before = segmenter.predict(points=[(30, 40)])
    apply_adapter(model, path)
    after = segmenter.predict(points=[(30, 40)])
    assert segmenter.encoder_calls == 1
    assert not np.allclose(after.candidate_scores, before.candidate_scores)  # the new decoder answered

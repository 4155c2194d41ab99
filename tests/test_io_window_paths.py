"""One meaning for each window: for every choice the widget offers, the viewer's path and the CLI's
path put the same pixels into the encoder, and training builds its examples from the same 8-bit
planes; the layer is shown with the window the model sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _tiny_models import engine_loaded_model
from napari_vfmseg._layer_geometry import image_layer_kwargs
from napari_vfmseg.cli.embed import parse_window
from napari_vfmseg.engine import Segmenter
from napari_vfmseg.engine.preprocess import to_uint8
from napari_vfmseg.io import Volume
from napari_vfmseg.io.windowing import AS_IS, WINDOW_CHOICES, apply_window, display_window, model_window
from napari_vfmseg.training.data import pairs_from_volume


@pytest.fixture(scope="module")
def model():
    return engine_loaded_model(seed=2)


def _volume(kind: str) -> tuple[np.ndarray, str | None]:
    rng = np.random.default_rng(4)
    if kind == "uint8":  # e.g. an ultrasound sweep or a PNG stack: dim, so a stretch would change it
        return rng.integers(10, 90, (3, 24, 20)).astype(np.uint8), None
    if kind == "ct":
        return rng.integers(-1000, 1500, (3, 24, 20)).astype(np.int16), "CT"
    return rng.normal(400.0, 120.0, (3, 24, 20)).astype(np.float32), "MR"


def _encoder_input(model, volume, window, modality, plane=1) -> torch.Tensor:
    """The tensor the image encoder receives for ``plane`` (captured by a forward pre-hook)."""
    seen = []
    handle = model.sam.image_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        segmenter = Segmenter(model, accelerate="none")
        segmenter.set_volume(volume, axis=0, window=window, modality=modality)
        segmenter.embedding(plane)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("kind", ["uint8", "ct", "mr"])
@pytest.mark.parametrize("label, value", WINDOW_CHOICES)
def test_viewer_cli_and_training_feed_the_same_pixels(model, kind, label, value):
    volume, modality = _volume(kind)
    viewer = _encoder_input(model, volume, value, modality)  # the widget passes the menu's value
    cli = _encoder_input(model, volume, parse_window(value or "auto"), modality)  # --window TEXT
    torch.testing.assert_close(viewer, cli, rtol=0, atol=0)

    labels = np.zeros(volume.shape, np.uint8)
    labels[:, 5:15, 4:12] = 1
    pairs = pairs_from_volume(volume, labels, window=parse_window(value or "auto"), modality=modality, min_pixels=1)
    window = model_window(value, volume, modality)
    for pair in pairs:
        np.testing.assert_array_equal(pair.image, to_uint8(volume[pair.plane], window))


def test_auto_on_8bit_data_is_the_pixels_as_they_are():
    volume, _ = _volume("uint8")
    assert model_window(None, volume) is None and model_window("auto", volume) is None
    assert display_window("auto", volume) == AS_IS
    np.testing.assert_array_equal(apply_window(volume, AS_IS), volume)  # the identity on 8-bit data
    assert model_window("percentile", volume).name == "mr_percentile"  # an explicit stretch still stretches


def test_layer_shows_the_window_the_model_sees():
    for kind in ("uint8", "ct", "mr"):
        array, modality = _volume(kind)
        kwargs = image_layer_kwargs(Volume(array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), modality=modality))
        window = display_window(None, array, modality)
        assert kwargs["contrast_limits"] == (window.low, window.high)
    assert kwargs["contrast_limits"] != (0.0, 255.0)
    uint8_kwargs = image_layer_kwargs(Volume(_volume("uint8")[0], spacing=(1.0,) * 3, origin=(0.0,) * 3))
    assert uint8_kwargs["contrast_limits"] == (0.0, 255.0)

"""Non-square pixels: planes of a thick-slice volume reach the encoder in their true proportions, and
prompts and masks still land on the right pixels of the plane."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vfmseg.engine import Segmenter
from napari_vfmseg.engine.preprocess import Geometry, pixel_aspect, prepare_image, upscale_logits

from _tiny_models import engine_loaded_model


@pytest.fixture(scope="module")
def model():
    return engine_loaded_model(seed=1)


def test_pixel_aspect_from_spacing():
    assert pixel_aspect(None) == 1.0
    assert pixel_aspect((4.0, 1.6)) == pytest.approx(2.5)
    assert pixel_aspect((0.7031, 0.70312)) == 1.0  # header rounding is not an aspect
    assert pixel_aspect((1.0, 2.0)) == 0.5
    for bad in ((1.0,), (0.0, 1.0), (-1.0, 1.0), (np.nan, 1.0)):
        with pytest.raises(ValueError, match="two positive numbers"):
            pixel_aspect(bad)


def test_geometry_maps_prompts_by_each_axis_own_factor():
    square = Geometry.for_shape(48, 192, 256)
    assert square.input_size == (64, 256)  # squashed 2.5 x: what the encoder saw before
    coronal = Geometry.for_shape(48, 192, 256, pixel_aspect=2.5)
    assert coronal.input_size == (160, 256)  # 120 mm x 307 mm in its true proportions
    np.testing.assert_allclose(coronal.points_to_sam([(24.0, 96.0), (0.0, 0.0)]), [[128.0, 80.0], [0.0, 0.0]])
    np.testing.assert_allclose(coronal.box_to_sam((12, 48, 36, 144)), [64.0, 40.0, 192.0, 120.0])
    tall = Geometry.for_shape(100, 50, 256, pixel_aspect=0.25)  # wide pixels: the columns are the long side
    assert tall.input_size == (128, 256)
    medsam = Geometry.for_shape(48, 192, 256, stretch=True, pixel_aspect=2.5)
    assert medsam.input_size == (256, 256) and medsam.pixel_aspect == 1.0  # MedSAM stretches anyway


def test_prepared_pixels_and_masks_keep_the_plane_s_grid():
    plane = np.zeros((48, 192), np.uint8)
    plane[12:36, 48:144] = 200  # a block in the middle
    prepared = prepare_image(plane, None, 256, pixel_aspect=2.5)
    assert prepared.pixels.shape == (160, 256)
    rows = np.flatnonzero(prepared.pixels.max(axis=1) > 100)
    cols = np.flatnonzero(prepared.pixels.max(axis=0) > 100)
    assert abs(rows[0] - 40) <= 1 and abs(rows[-1] - 119) <= 1  # 12..35 x 160/48
    assert abs(cols[0] - 64) <= 1 and abs(cols[-1] - 191) <= 1  # 48..143 x 256/192
    # logits drawn on the encoder frame come back on the plane's own pixels
    low = torch.full((1, 1, 64, 64), -10.0)
    low[..., 10:30, 16:48] = 10.0  # encoder frame rows 40..119, cols 64..191 (4 px per low-res pixel)
    mask = (upscale_logits(low, prepared.geometry)[0, 0] > 0).numpy()
    assert mask.shape == (48, 192)
    assert abs(np.flatnonzero(mask.any(axis=1))[0] - 12) <= 1 and abs(np.flatnonzero(mask.any(axis=1))[-1] - 35) <= 1
    assert abs(np.flatnonzero(mask.any(axis=0))[0] - 48) <= 1 and abs(np.flatnonzero(mask.any(axis=0))[-1] - 143) <= 1


def test_square_pixels_change_nothing(model):
    volume = np.random.default_rng(0).integers(-200, 200, (6, 24, 32)).astype(np.int16)
    plain, isotropic = Segmenter(model), Segmenter(model)
    plain.set_volume(volume, axis=0, modality="CT")
    isotropic.set_volume(volume, axis=0, modality="CT", spacing=(3.0, 0.8, 0.8))
    torch.testing.assert_close(plain.embedding(2).features, isotropic.embedding(2).features, rtol=0, atol=0)


def test_volume_spacing_gives_planes_their_proportions(model):
    volume = np.random.default_rng(1).integers(-200, 200, (12, 40, 40)).astype(np.int16)
    spacing = (4.0, 1.6, 1.6)
    segmenter = Segmenter(model)
    segmenter.set_volume(volume, axis=1, modality="CT", spacing=spacing)  # planes (12 planes x 40 cols) of 4 x 1.6 mm
    proportional = segmenter.embedding(5)
    single = Segmenter(model).set_image(volume[:, 5, :], window=segmenter._volume.window, spacing=(4.0, 1.6))
    torch.testing.assert_close(proportional.features, single.features, rtol=0, atol=1e-6)
    squashed = Segmenter(model).set_image(volume[:, 5, :], window=segmenter._volume.window)
    assert not torch.allclose(proportional.features, squashed.features)  # another input, another cache key
    prediction = segmenter.predict(box=(2, 5, 9, 30), plane=5)
    assert prediction.mask.shape == (12, 40)
    with pytest.raises(ValueError, match="three numbers"):
        segmenter.set_volume(volume, axis=0, spacing=(1.0, 1.0))

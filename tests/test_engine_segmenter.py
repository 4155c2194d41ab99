"""Segmenter behaviour on the tiny SAM: multimask choice, prompts, windows, volumes, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vfmseg.engine import Prediction, Segmenter
from napari_vfmseg.engine.preprocess import Geometry, upscale_logits
from napari_vfmseg.io.windowing import CT_PRESETS, apply_window, resolve_window

from _tiny_models import engine_loaded_model


@pytest.fixture(scope="module")
def model():
    return engine_loaded_model(seed=1)


def ct_volume(planes: int = 5, rows: int = 48, cols: int = 40, seed: int = 0) -> np.ndarray:
    """int16 HU-like volume (plane, row, col): air, a soft-tissue body, a dense 'bone' blob."""
    rng = np.random.default_rng(seed)
    volume = np.full((planes, rows, cols), -1000, dtype=np.int16)
    rr, cc = np.mgrid[:rows, :cols]
    for k in range(planes):
        body = (rr - rows / 2) ** 2 / (rows * 0.4) ** 2 + (cc - cols / 2) ** 2 / (cols * 0.4) ** 2 < 1
        volume[k][body] = 40
        volume[k][(rr - rows / 2 - k) ** 2 + (cc - cols / 2) ** 2 < 16] = 700
    return (volume + rng.integers(-20, 20, size=volume.shape)).astype(np.int16)


def test_single_point_returns_best_of_three(model):
    segmenter = Segmenter(model)
    segmenter.set_image(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    prediction = segmenter.predict(points=[(30, 40)])
    assert isinstance(prediction, Prediction)
    assert prediction.multimask is True
    assert prediction.candidate_scores.shape == (3,)
    assert prediction.candidate_logits.shape == (3, 64, 64)
    assert prediction.index == int(np.argmax(prediction.candidate_scores))
    assert prediction.score == pytest.approx(float(prediction.candidate_scores.max()))
    np.testing.assert_array_equal(prediction.logits, prediction.candidate_logits[prediction.index])
    geometry = Geometry.for_shape(60, 80, 256)
    expected = upscale_logits(torch.as_tensor(prediction.logits[None, None]), geometry)[0, 0].numpy() > 0
    np.testing.assert_array_equal(prediction.mask, expected)
    assert prediction.mask.dtype == bool and prediction.mask.shape == (60, 80)
    np.testing.assert_array_equal(np.asarray(prediction), prediction.mask)


def test_candidate_chooses_another_reading_of_a_single_click(model):
    segmenter = Segmenter(model)
    segmenter.set_image(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    best = segmenter.predict(points=[(30, 40)])
    geometry = Geometry.for_shape(60, 80, 256)
    for k in range(3):
        chosen = segmenter.predict(points=[(30, 40)], candidate=k)
        assert chosen.index == k and chosen.multimask
        assert chosen.score == pytest.approx(float(best.candidate_scores[k]))
        np.testing.assert_array_equal(chosen.candidate_logits, best.candidate_logits)  # same decoder call
        np.testing.assert_array_equal(chosen.logits, best.candidate_logits[k])
        expected = upscale_logits(torch.as_tensor(best.candidate_logits[k][None, None]), geometry)[0, 0].numpy() > 0
        np.testing.assert_array_equal(chosen.mask, expected)
    assert segmenter.predict(points=[(30, 40)], candidate=best.index).mask.tolist() == best.mask.tolist()
    with pytest.raises(ValueError, match="candidate 3 does not exist: this prompt gives 3 mask"):
        segmenter.predict(points=[(30, 40)], candidate=3)
    with pytest.raises(ValueError, match="candidate 1 does not exist: this prompt gives 1 mask"):
        segmenter.predict(points=[(30, 40), (10, 10)], point_labels=[1, 0], candidate=1)  # two points: one mask
    assert segmenter.predict(points=[(30, 40), (10, 10)], point_labels=[1, 0], candidate=0).index == 0


def test_a_box_alone_keeps_its_mask_and_offers_the_multimask_masks_as_alternatives(model):
    image = np.random.default_rng(3).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    segmenter = Segmenter(model)
    segmenter.set_image(image)
    box = segmenter.predict(box=(10, 10, 40, 50))
    assert box.index == 0 and box.multimask is False and box.candidate_scores.shape == (4,)
    single = segmenter.predict(box=(10, 10, 40, 50), multimask=False)  # what a box gave before: unchanged
    np.testing.assert_array_equal(box.mask, single.mask)
    assert box.score == pytest.approx(single.score) and single.candidate_scores.shape == (1,)
    np.testing.assert_allclose(box.candidate_logits[0], single.logits, atol=1e-5)
    forced = segmenter.predict(box=(10, 10, 40, 50), multimask=True)
    np.testing.assert_allclose(box.candidate_logits[1:], forced.candidate_logits, atol=1e-5)
    np.testing.assert_allclose(box.candidate_scores[1:], forced.candidate_scores, atol=1e-6)
    geometry = Geometry.for_shape(60, 80, 256)
    for k in range(4):
        chosen = segmenter.predict(box=(10, 10, 40, 50), candidate=k)
        assert chosen.index == k and chosen.score == pytest.approx(float(box.candidate_scores[k]))
        expected = upscale_logits(torch.as_tensor(box.candidate_logits[k][None, None]), geometry)[0, 0].numpy() > 0
        np.testing.assert_array_equal(chosen.mask, expected)
    with pytest.raises(ValueError, match="candidate 4 does not exist: this prompt gives 4 mask"):
        segmenter.predict(box=(10, 10, 40, 50), candidate=4)
    assert segmenter.predict(box=(10, 10, 40, 50), points=[(20, 30)]).candidate_scores.shape == (1,)
    upstream = Segmenter(model, accelerate="none")  # segment-anything's own decoder, called per output kind
    upstream.set_image(image)
    reference = upstream.predict(box=(10, 10, 40, 50))
    np.testing.assert_allclose(reference.candidate_logits, box.candidate_logits, atol=1e-4)
    np.testing.assert_allclose(reference.candidate_scores, box.candidate_scores, atol=1e-5)


def test_several_prompts_give_one_mask_and_multimask_overrides(model):
    segmenter = Segmenter(model)
    segmenter.set_image(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    two_points = segmenter.predict(points=[(30, 40), (10, 10)], point_labels=[1, 0])
    assert two_points.multimask is False and two_points.candidate_scores.shape == (1,)
    box = segmenter.predict(box=(10, 10, 40, 50))
    assert box.multimask is False and box.index == 0
    forced = segmenter.predict(box=(10, 10, 40, 50), multimask=True)
    assert forced.multimask is True and forced.candidate_scores.shape == (3,)
    single = segmenter.predict(points=[(30, 40)], multimask=False)
    assert single.candidate_scores.shape == (1,)
    with_mask = segmenter.predict(points=[(30, 40)], mask_input=single.logits)
    assert with_mask.multimask is False  # a correction click is not ambiguous
    assert segmenter.encoder_calls == 1


def test_point_labels_default_to_positive(model):
    segmenter = Segmenter(model)
    segmenter.set_image(np.random.default_rng(2).integers(0, 255, (50, 50, 3), dtype=np.uint8))
    implicit = segmenter.predict(points=[(20, 20), (30, 35)])
    explicit = segmenter.predict(points=[(20, 20), (30, 35)], point_labels=[1, 1])
    negative = segmenter.predict(points=[(20, 20), (30, 35)], point_labels=[1, 0])
    np.testing.assert_array_equal(implicit.logits, explicit.logits)
    assert not np.allclose(implicit.logits, negative.logits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(points=[(60, 10)]), "point 0 at (row=60, col=10) is outside the image of 50 rows x 70 cols"),
        (dict(points=[(10, 10), (5, -3)]), "point 1 at (row=5, col=-3) is outside the image of 50 rows x 70 cols"),
        (dict(box=(0, 0, 51, 20)), "box (row0=0, col0=0, row1=51, col1=20) is outside the image of 50 rows x 70 cols"),
        (dict(box=(0, 0, 10)), "box must be (row0, col0, row1, col1)"),
        (dict(points=[(10, 10)], point_labels=[1, 0]), "got 1 points but 2 point labels"),
        (dict(points=[(10, 10)], point_labels=[2]), "point labels must be 1 (object) or 0 (background)"),
        (dict(), "at least one prompt"),
        (dict(point_labels=[1], box=(0, 0, 5, 5)), "point_labels were given without points"),
        (dict(mask_input=np.zeros((256, 256))), "mask_input must be low-resolution logits of shape (64, 64)"),
        (dict(points=[(10, 10)], plane=0), "plane= is only valid after set_volume"),
    ],
)
def test_prompt_validation_names_prompt_and_image_size(model, kwargs, message):
    segmenter = Segmenter(model)
    segmenter.set_image(np.zeros((50, 70, 3), dtype=np.uint8))
    with pytest.raises(ValueError) as info:
        segmenter.predict(**kwargs)
    assert message in str(info.value)


def test_prompts_on_the_napari_pixel_extent_are_accepted(model):
    segmenter = Segmenter(model)
    segmenter.set_image(np.zeros((50, 70, 3), dtype=np.uint8))
    segmenter.predict(points=[(-0.5, -0.5), (49.5, 69.5)])
    segmenter.predict(box=(-0.5, -0.5, 50, 70))


def test_predict_before_an_image_and_bad_images_raise(model):
    segmenter = Segmenter(model)
    with pytest.raises(ValueError, match="no image is set"):
        segmenter.predict(points=[(1, 1)])
    with pytest.raises(ValueError, match="RGB image must be uint8"):
        segmenter.set_image(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(rows, cols\) or \(rows, cols, 3\)"):
        segmenter.set_image(np.zeros((10,), dtype=np.uint8))
    with pytest.raises(ValueError, match="do not pass a window"):
        segmenter.set_image(np.zeros((10, 10, 3), dtype=np.uint8), window="lung")
    with pytest.raises(ValueError, match="unknown window"):
        segmenter.set_image(np.zeros((10, 10), dtype=np.int16), window="liver-ish")


def test_grey_slice_is_windowed_and_window_changes_the_embedding(model):
    slice_hu = ct_volume(1)[0]
    segmenter = Segmenter(model)
    soft = segmenter.set_image(slice_hu, window="soft_tissue")
    lung = segmenter.set_image(slice_hu, window="lung")
    assert segmenter.encoder_calls == 2
    assert not torch.allclose(soft.features, lung.features)
    # the same windowed pixels given as RGB uint8 give the same embedding
    rgb = np.repeat(apply_window(slice_hu, CT_PRESETS["soft_tissue"])[..., None], 3, axis=2)
    reference = Segmenter(model).set_image(rgb)
    torch.testing.assert_close(soft.features, reference.features, rtol=0, atol=1e-6)
    # an explicit (level, width) pair equal to the preset reuses its embedding from the cache
    segmenter.set_image(slice_hu, window=(40, 400))
    assert segmenter.encoder_calls == 2 and segmenter.stats.memory_hits == 1


def test_uint8_grey_slice_is_used_as_it_is(model):
    grey = np.random.default_rng(3).integers(0, 255, (40, 30), dtype=np.uint8)
    a = Segmenter(model).set_image(grey)
    b = Segmenter(model).set_image(np.repeat(grey[..., None], 3, axis=2))
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_volume_planes_along_each_axis(model, axis):
    volume = ct_volume(planes=6, rows=20, cols=16)
    segmenter = Segmenter(model)
    window = segmenter.set_volume(volume, axis=axis, window=None, modality="CT")
    assert window == resolve_window(None, volume, "CT")
    assert segmenter.plane_count == volume.shape[axis]
    assert segmenter.current_plane == volume.shape[axis] // 2
    assert segmenter.encoder_calls == 0  # lazy
    plane = 3
    plane_image = np.take(volume, plane, axis=axis)
    rows, cols = plane_image.shape
    prediction = segmenter.predict(points=[(rows // 2, cols // 2)], plane=plane)
    assert prediction.mask.shape == plane_image.shape
    assert prediction.plane == plane and segmenter.current_plane == plane
    assert segmenter.encoder_calls == 1
    # the plane's embedding is the 2D embedding of that plane under the volume's window
    single = Segmenter(model).set_image(plane_image, window=window)
    torch.testing.assert_close(segmenter.embedding(plane).features, single.features, rtol=0, atol=1e-6)
    segmenter.predict(points=[(1, 1)], plane=plane)
    segmenter.predict(points=[(1, 1)])  # current plane
    assert segmenter.encoder_calls == 1


def test_volume_window_is_computed_once_for_all_planes(model):
    volume = ct_volume(planes=4).astype(np.float32) * 0.1 + 7.0  # not HU: a percentile window
    volume[0] *= 3.0  # one plane much brighter: a per-plane window would rescale it
    segmenter = Segmenter(model)
    window = segmenter.set_volume(volume)
    assert window == resolve_window(None, volume, None)
    first = segmenter._plane_item(0).image().pixels
    per_plane = resolve_window(None, volume[0], None)
    assert per_plane != window
    from napari_vfmseg.engine.preprocess import prepare_image

    np.testing.assert_array_equal(first, prepare_image(volume[0], window, 256).pixels)


def test_volume_errors(model):
    segmenter = Segmenter(model)
    with pytest.raises(ValueError, match="3D array"):
        segmenter.set_volume(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        segmenter.set_volume(np.zeros((4, 4, 4)), axis=3)
    segmenter.set_volume(ct_volume(planes=3))
    with pytest.raises(ValueError, match="plane 3 is outside the volume: axis 0 has 3 planes"):
        segmenter.predict(points=[(1, 1)], plane=3)


def test_accelerate_modes(model):
    image = np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    exact = Segmenter(model, accelerate="none")
    fast = Segmenter(model, accelerate="sdpa")
    a, b = exact.set_image(image), fast.set_image(image)
    torch.testing.assert_close(a.features, b.features, rtol=1e-4, atol=1e-4)
    assert exact.numerics == fast.numerics == "fp32"
    quantized = Segmenter(model, accelerate="int8")
    assert quantized.numerics == "int8"
    c = quantized.set_image(image)
    cosine = torch.nn.functional.cosine_similarity(c.features.flatten(), a.features.flatten(), dim=0)
    assert 0.9 < cosine < 1.0
    assert Segmenter(model, accelerate="bf16").numerics == "bfloat16"
    with pytest.raises(ValueError, match="unknown encoder acceleration"):
        Segmenter(model, accelerate="turbo")


def test_remembered_planes_keep_keys_not_pixels(model):
    segmenter = Segmenter(model)
    segmenter.set_volume(ct_volume(planes=4))
    fresh = segmenter._plane_item(2)
    remembered = segmenter._plane_item(2)
    assert fresh.prepared is not None and remembered.prepared is None
    assert remembered.key == fresh.key and remembered.geometry == fresh.geometry
    np.testing.assert_array_equal(remembered.image().pixels, fresh.prepared.pixels)

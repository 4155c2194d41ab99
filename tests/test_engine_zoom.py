"""Zoomed crops for small boxes: where the crop lies, that the engine predicts on it, carries logits
between frames, keeps crops out of the disk cache, and that training cuts the same crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vfmseg.engine import Segmenter
from napari_vfmseg.engine.zoom import Crop, ZoomPolicy, crop_for_box, default_zoom, reframe_logits
from napari_vfmseg.engine.preprocess import Geometry
from napari_vfmseg.training.data import LabelledImage
from napari_vfmseg.training.zoom_crops import with_zoomed_crops, zoomed_crops
from tests._tiny_models import engine_loaded_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _scene(shape=(200, 240), center=(70, 150), radius=6, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A grey uint8 image with texture and a small bright disc; returns (image, disc mask)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    disc = (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius ** 2
    image = (60 + 40 * np.sin(rows / 9.0) * np.cos(cols / 13.0) + rng.normal(0, 5, shape)).clip(0, 255)
    image[disc] = 220
    return image.astype(np.uint8), disc


# ---------------------------------------------------------------------------------------- crop_for_box


def test_a_small_box_gets_a_crop_centred_on_it_with_the_policy_context():
    crop = crop_for_box((100, 100, 109, 109), (512, 512), policy=ZoomPolicy(context=5.0))
    assert crop is not None
    assert crop.shape == (50, 50)                        # 5 x the 10-pixel box
    assert crop.row0 <= 100 and crop.row1 - 1 >= 109 and crop.col0 <= 100 and crop.col1 - 1 >= 109
    assert abs((crop.row0 + crop.row1 - 1) / 2 - 104.5) <= 1 and abs((crop.col0 + crop.col1 - 1) / 2 - 104.5) <= 1


def test_a_crop_near_the_border_moves_inside_the_slice_and_keeps_its_size():
    crop = crop_for_box((0, 230, 9, 239), (240, 240), policy=ZoomPolicy(context=5.0))
    assert crop == Crop(0, 190, 50, 240)


def test_a_large_box_or_a_thick_slice_view_is_not_zoomed():
    assert crop_for_box((20, 20, 180, 200), (256, 256)) is None                   # zoom would be < 1.5
    assert crop_for_box((100, 100, 102, 112), (25, 256), pixel_aspect=8.3) is None  # thick-slice coronal
    assert crop_for_box((100, 100, 109, 109), (512, 512), policy=ZoomPolicy(context=5.0, min_zoom=30)) is None


def test_a_middling_box_gets_less_context_rather_than_no_zoom():
    crop = crop_for_box((100, 100, 139, 139), (256, 256), policy=ZoomPolicy(context=5.0, min_context=2.5))
    assert crop is not None and crop.shape == (171, 171)         # 256 / 1.5, not 5 x 40
    assert crop_for_box((100, 100, 179, 179), (256, 256), policy=ZoomPolicy(context=5.0, min_context=2.5)) is None


def test_the_crop_is_square_in_millimetres_on_non_square_pixels():
    crop = crop_for_box((100, 100, 109, 119), (400, 400), pixel_aspect=2.0, policy=ZoomPolicy(context=4.0))
    rows, cols = crop.shape
    assert cols == 80 and rows == 40                     # box 20 mm tall (10 rows x 2) and 20 px wide


def test_clicks_outside_the_box_grow_the_crop_to_hold_them():
    points = np.array([[100.0, 180.0]])
    crop = crop_for_box((100, 100, 109, 109), (512, 512), policy=ZoomPolicy(context=5.0), points=points)
    assert crop.col0 <= 100 and crop.col1 - 1 >= 180


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="context"):
        ZoomPolicy(context=0.5)
    with pytest.raises(ValueError, match="min_context"):
        ZoomPolicy(context=3.0, min_context=4.0)


def test_zoom_is_on_by_default_for_small_encoders_only():
    small = engine_loaded_model().sam
    assert default_zoom(small) == ZoomPolicy()
    big = torch.nn.Module()
    big.image_encoder = torch.nn.Linear(5000, 5000)      # 25 M parameters: a second pass costs seconds
    assert default_zoom(big) is None


# ---------------------------------------------------------------------------------------- the engine


def test_a_small_box_is_segmented_on_its_crop_exactly_as_the_crop_alone_would_be():
    image, disc = _scene()
    model = engine_loaded_model()
    segmenter = Segmenter(model)
    segmenter.set_image(image)
    box = (64, 144, 76, 156)
    zoomed = segmenter.predict(box=box)
    assert zoomed.crop is not None and zoomed.mask.shape == image.shape
    crop = zoomed.crop
    assert not zoomed.mask[: crop.row0].any() and not zoomed.mask[crop.row1:].any()
    assert not zoomed.mask[:, : crop.col0].any() and not zoomed.mask[:, crop.col1:].any()

    alone = Segmenter(model, zoom=None)
    alone.set_image(np.ascontiguousarray(crop.cut(image)))
    expected = alone.predict(box=(box[0] - crop.row0, box[1] - crop.col0, box[2] - crop.row0, box[3] - crop.col0))
    np.testing.assert_array_equal(crop.cut(zoomed.mask), expected.mask)
    np.testing.assert_allclose(zoomed.candidate_scores, expected.candidate_scores, rtol=1e-5, atol=1e-6)


def test_zoom_false_and_a_segmenter_without_zoom_use_the_whole_slice():
    image, _ = _scene()
    model = engine_loaded_model()
    on, off = Segmenter(model), Segmenter(model, zoom=None)
    on.set_image(image)
    off.set_image(image)
    box = (64, 144, 76, 156)
    whole = on.predict(box=box, zoom=False)
    assert whole.crop is None
    np.testing.assert_array_equal(whole.mask, off.predict(box=box).mask)
    assert off.predict(box=box, zoom=True).crop is not None     # asked for explicitly


def test_crops_stay_out_of_the_disk_cache(tmp_path):
    image, _ = _scene()
    segmenter = Segmenter(engine_loaded_model(), cache_dir=tmp_path / "cache")
    segmenter.set_image(image)
    before = segmenter.encoder_calls
    segmenter.predict(box=(64, 144, 76, 156))
    assert segmenter.encoder_calls == before + 1                 # the crop was encoded
    segmenter.predict(box=(64, 144, 76, 156), points=[[70, 150]], point_labels=[1])
    assert segmenter.encoder_calls == before + 1                 # the same crop, from memory
    assert segmenter.flush(30)
    entries = list(segmenter.disk.folder.glob("*/*.zarr"))
    assert len(entries) == 1                                     # only the whole image


def test_a_correction_click_on_a_zoomed_mask_stays_on_its_crop():
    image, _ = _scene()
    segmenter = Segmenter(engine_loaded_model())
    segmenter.set_image(image)
    first = segmenter.predict(box=(64, 144, 76, 156))
    # no box: the click corrects the mask made on the crop, so it is decoded there too
    click = segmenter.predict(points=[[70, 150]], point_labels=[1], mask_input=first.logits)
    assert click.crop == first.crop
    forced = segmenter.predict(points=[[70, 150]], point_labels=[1], mask_input=first.logits, zoom=first.crop)
    np.testing.assert_array_equal(click.mask, forced.mask)
    # a click outside that crop goes to the whole slice, with the logits carried over (no shape error)
    far = segmenter.predict(points=[[10, 10]], point_labels=[1], mask_input=first.logits)
    assert far.crop is None and far.logits.shape == first.logits.shape


def test_a_small_box_on_a_volume_plane_is_zoomed_and_a_thick_slice_view_is_not():
    image, disc = _scene(shape=(120, 160), center=(60, 80), radius=5)
    volume = np.stack([image] * 6).astype(np.float32)
    segmenter = Segmenter(engine_loaded_model())
    segmenter.set_volume(volume, axis=0, window=(128, 256), spacing=(6.0, 0.8, 0.8))
    assert segmenter.predict(box=(54, 74, 66, 86), plane=2).crop is not None
    segmenter.set_volume(volume, axis=1, window=(128, 256), spacing=(6.0, 0.8, 0.8))   # pixels 7.5 x taller
    assert segmenter.predict(box=(1, 74, 3, 86), plane=60).crop is None


# ---------------------------------------------------------------------------------------- logits


def test_reframed_logits_draw_the_same_mask_in_the_other_frame():
    size, plane_shape = 64, (200, 240)
    whole = Geometry.for_shape(*plane_shape, encoder_size=256)
    crop = Crop(40, 120, 100, 180)
    part = Geometry.for_shape(*crop.shape, encoder_size=256)
    # a disc of radius 20 px centred at (70, 150) in the crop's low-res frame
    scale = size / 256 * 256 / 60                                   # crop pixels → low-res cells
    yy, xx = np.mgrid[:size, :size]
    logits = np.where((yy - 30 * scale) ** 2 + (xx - 30 * scale) ** 2 <= (20 * scale) ** 2, 8.0, -8.0).astype(np.float32)
    carried = reframe_logits(logits, (part, crop), (whole, None), plane_shape)
    assert carried.shape == (size, size)
    from napari_vfmseg.engine.preprocess import upscale_logits
    mask = upscale_logits(torch.as_tensor(carried)[None, None], whole)[0, 0].numpy() > 0
    rows, cols = np.mgrid[: plane_shape[0], : plane_shape[1]]
    truth = (rows - 70) ** 2 + (cols - 150) ** 2 <= 20 ** 2
    overlap = (mask & truth).sum() / (mask | truth).sum()
    assert overlap > 0.8
    back = reframe_logits(carried, (whole, None), (part, crop), plane_shape)
    assert np.mean((back > 0) == (logits > 0)) > 0.95


# ---------------------------------------------------------------------------------------- training


def test_training_cuts_the_crop_the_engine_would_segment_on():
    image, disc = _scene()
    labels = disc.astype(np.uint8)
    pair = LabelledImage(image, labels, plane=3, source="scan.nii.gz plane 3")
    crops = zoomed_crops(pair, ZoomPolicy())
    assert len(crops) == 1
    crop = crop_for_box((64, 144, 76, 156), image.shape, policy=ZoomPolicy())
    np.testing.assert_array_equal(crops[0].image, crop.cut(image))
    np.testing.assert_array_equal(crops[0].labels, crop.cut(labels))
    assert crops[0].labels.sum() == labels.sum() and crops[0].plane == 3 and "zoom" in crops[0].source
    assert crops[0].crop == crop.as_tuple() and pair.crop is None
    assert with_zoomed_crops([pair], None) == [pair]
    big = LabelledImage(image, np.pad(np.ones((150, 150), np.uint8), ((25, 25), (45, 45))))
    assert zoomed_crops(big, ZoomPolicy()) == []                  # nothing small to zoom


def test_the_trainer_adds_zoomed_crops_for_a_model_the_engine_zooms():
    from napari_vfmseg.training.train_config import TrainConfig
    from napari_vfmseg.training.trainer import Trainer

    image, disc = _scene()
    pair = LabelledImage(image, disc.astype(np.uint8))
    model = engine_loaded_model()
    assert len(Trainer(model, [pair], [], TrainConfig(mode="full", steps=1)).train_pairs) == 2
    assert len(Trainer(model, [pair], [], TrainConfig(mode="full", steps=1, zoom_crops=False)).train_pairs) == 1


def test_a_plane_embedder_is_never_asked_for_a_zoomed_crop():
    """The CLI's decoder mode embeds planes through the engine by plane index; a crop of that plane
    must get its own embedding, not the whole plane's."""
    from napari_vfmseg.training.train_config import TrainConfig
    from napari_vfmseg.training.trainer import Trainer

    image, disc = _scene()
    pair = LabelledImage(image, disc.astype(np.uint8), plane=0)
    model = engine_loaded_model()
    segmenter = Segmenter(model, zoom=None)
    segmenter.set_image(image)
    asked = []

    def embedder(source):
        asked.append(source)
        return segmenter.embedding().features

    trainer = Trainer(model, [pair], [], TrainConfig(mode="decoder", steps=1, val_every=0), embedder=embedder)
    trainer.fit()
    assert asked == [pair]                                         # the whole plane only
    crop_example = next(e for e in trainer.train_examples if e.source.crop is not None)
    alone = Segmenter(model, zoom=None)
    alone.set_image(np.ascontiguousarray(Crop(*crop_example.source.crop).cut(image)))
    np.testing.assert_allclose(crop_example.embedding[0].numpy(), alone.embedding().features.numpy(), atol=1e-4)

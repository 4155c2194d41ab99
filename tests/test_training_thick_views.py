"""Thick views: a corrected plane of a thick-slice scan also trains as that scan's other views look."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_vfmseg.training.data import LabelledImage, pairs_from_volume
from napari_vfmseg.training.thick_views import thick_views, with_thick_views

SPACING = (5.0, 0.5, 0.625)   # (plane, row, col) mm: 5 mm slices of 0.5 x 0.625 mm pixels


def _blob_volume(shape=(10, 128, 80), seed=0):
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(0, 1, shape), (1, 6, 6))
    image = (image - image.min()) / (image.max() - image.min()) * 4000 - 1000   # HU-like, float
    labels = (ndimage.gaussian_filter(rng.normal(0, 1, shape), (1, 8, 8)) > 0.02).astype(np.uint8)
    return image.astype(np.float32), labels


def test_thick_views_have_the_shape_and_proportions_of_the_through_plane_views():
    image, labels = _blob_volume()
    axial = pairs_from_volume(image, labels, axis=0, spacing=SPACING, window=(1000, 4000))[4]
    coronal = pairs_from_volume(image, labels, axis=1, spacing=SPACING, window=(1000, 4000))[0]
    sagittal = pairs_from_volume(image, labels, axis=2, spacing=SPACING, window=(1000, 4000))[0]
    assert axial.slice_ratio == 8.0 and coronal.slice_ratio == 0.8 and sagittal.slice_ratio == 1.25
    rows, columns = thick_views(axial)
    # 128 rows of 0.5 mm in slabs of 5 mm: 12 slabs; 80 columns of 0.625 mm: 10 slabs (rows of the view)
    assert rows.image.shape == (12, 80) and columns.image.shape == (10, 128)
    assert rows.pixel_aspect == coronal.pixel_aspect == 8.0      # what the engine uses for a coronal plane
    assert columns.pixel_aspect == sagittal.pixel_aspect == 10.0
    assert (rows.view, columns.view) == ("thick rows", "thick columns") and rows.plane == axial.plane == 4
    assert not rows.own_pixels and axial.own_pixels
    np.testing.assert_array_equal(rows.labels, axial.labels[5::10][:12])   # each slab's centre line
    assert thick_views(coronal) == [] and thick_views(sagittal) == []   # their own other views are fine
    assert thick_views(rows) == []                                # a view is never thinned again


def test_objects_only_a_few_slices_across_are_left_out_of_thick_views():
    image = np.full((128, 128), 60, np.uint8)
    labels = np.zeros((128, 128), np.int32)
    labels[10:110, 5:95] = 1           # 100 rows and 90 columns: 10 and 9 slabs of 10 pixels
    labels[20:60, 100:125] = 2         # 40 rows and 25 columns: a lesion-sized object, 4 and 2 slabs
    pair = LabelledImage(image, labels, plane=0, slice_ratio=10.0)
    rows, columns = thick_views(pair)
    assert set(np.unique(rows.labels)) == set(np.unique(columns.labels)) == {0, 1}   # the small one is no target there
    assert [p.view for p in with_thick_views([pair])] == [None, "thick rows", "thick columns"]
    small = LabelledImage(image, np.where(labels == 2, 2, 0), plane=0, slice_ratio=10.0)
    assert [p.view for p in with_thick_views([small])] == [None]   # a lesion's plane trains as before


def test_a_thick_view_of_a_fine_plane_is_the_through_plane_view_of_the_thick_scan_made_from_it():
    """Slice a fine isotropic volume into a thick-slice scan (slab means, labels of each slab's centre
    plane); the coronal view of that scan is what thick_views makes of the fine coronal plane."""
    fine, fine_labels = _blob_volume(shape=(80, 48, 48), seed=3)
    pixels = np.clip(np.rint((fine + 1000) / 4000 * 255), 0, 255).astype(np.uint8)
    slab = 8
    thick = np.stack([pixels[k:k + slab].astype(np.float32).mean(axis=0) for k in range(0, 80, slab)])
    thick = np.clip(np.rint(thick), 0, 255).astype(np.uint8)
    thick_labels = fine_labels[slab // 2::slab]
    fine_coronal = LabelledImage(pixels[:, 20, :], fine_labels[:, 20, :], plane=20, slice_ratio=float(slab))
    view = thick_views(fine_coronal)[0]
    np.testing.assert_array_equal(view.image, thick[:, 20, :])
    np.testing.assert_array_equal(view.labels, thick_labels[:, 20, :])


def test_the_trainer_adds_thick_views_of_thick_slice_planes_only_and_never_asks_an_embedder_for_them():
    import torch

    from _tiny_models import engine_loaded_model
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.training.train_config import TrainConfig
    from napari_vfmseg.training.trainer import Trainer

    image, labels = _blob_volume()
    pairs = pairs_from_volume(image, labels, axis=0, spacing=SPACING, window=(1000, 4000))[4:5]
    iso = pairs_from_volume(image, labels, axis=0, spacing=(0.5, 0.5, 0.625), window=(1000, 4000))[4:5]
    model = engine_loaded_model()
    on = TrainConfig(mode="full", steps=1, zoom_crops=False)
    widening = Trainer(model, pairs, [], TrainConfig(mode="full", steps=1, zoom_crops=False, thick_views_widen=True))
    turns = Trainer(model, pairs, [], on)                     # the default: a step costs what it costs without views
    assert len(widening.train_pairs) == len(turns.train_pairs) == 3
    rng = np.random.default_rng(0)
    for trainer in (widening, turns):
        trainer.train_examples = trainer._examples(trainer.train_pairs)
    assert len(widening._sample(rng)) == 3                    # the plane and both views in one step
    drawn = [turns._sample(rng) for _ in range(30)]           # one image per plane and step
    assert all(len(batch) == 1 for batch in drawn) and len({b[0][0].image.shape for b in drawn}) >= 2
    assert len(Trainer(model, iso, [], on).train_pairs) == 1
    assert with_thick_views(pairs, enabled=False) == pairs
    assert len(Trainer(model, pairs, [], TrainConfig(mode="full", steps=1, zoom_crops=False, thick_views=False)).train_pairs) == 1

    segmenter = Segmenter(model, zoom=None)
    segmenter.set_image(pairs[0].image, spacing=(pairs[0].pixel_aspect, 1.0))
    asked = []

    def embedder(source):
        asked.append(source)
        return segmenter.embedding().features

    trainer = Trainer(model, pairs, [], TrainConfig(mode="decoder", steps=1, val_every=0, zoom_crops=False,
                                                          thick_views=True),
                      embedder=embedder)
    trainer.fit()
    assert asked == pairs                                   # the plane itself only
    view = next(e for e in trainer.train_examples if e.source.view == "thick rows")
    alone = Segmenter(model, zoom=None)
    alone.set_image(view.source.image, spacing=(view.source.pixel_aspect, 1.0))
    assert torch.allclose(view.embedding[0], alone.embedding().features.float(), atol=1e-4)


def test_leave_one_plane_out_folds_let_thick_views_take_turns_with_their_planes(monkeypatch):
    import napari_vfmseg.training.trainer as trainer_module
    from _tiny_models import engine_loaded_model
    from napari_vfmseg.training.lopo import leave_one_plane_out
    from napari_vfmseg.training.train_config import TrainConfig

    configs = []
    real = trainer_module.Trainer

    class Recording(real):
        def __init__(self, model, train, val=(), config=TrainConfig(), *args, **kwargs):
            configs.append(config)
            super().__init__(model, train, val, config, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "Trainer", Recording)
    image, labels = _blob_volume()
    pairs = pairs_from_volume(image, labels, axis=0, spacing=SPACING, window=(1000, 4000))[3:5]
    report = leave_one_plane_out(engine_loaded_model(), pairs,
                                 TrainConfig(mode="full", steps=1, zoom_crops=False, thick_views_widen=True),
                                 folds=2, fold_steps=1)
    assert len(report.folds) == 2 and len(configs) == 2
    assert all(c.thick_views and not c.thick_views_widen for c in configs)


def test_round_settings_reach_the_trainer():
    from napari_vfmseg.training.round_config import RoundConfig

    default = RoundConfig().train_config()
    assert default.thick_views and not default.thick_views_widen
    chosen = RoundConfig(thick_views=False, thick_views_widen=True).train_config()
    assert not chosen.thick_views and chosen.thick_views_widen

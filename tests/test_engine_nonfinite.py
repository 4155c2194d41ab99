"""NaN and infinite voxels: masks and logits stay finite, the appearance checks ignore them, and a
plane without a finite voxel gives a clear error (the walk ends there)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vfmseg.engine import NonFiniteImageError, PropagationConfig, Segmenter, propagate
from napari_vfmseg.engine.appearance import Appearance

from _tiny_models import engine_loaded_model, synthetic_volume

pytestmark = pytest.mark.usefixtures("one_thread")


def _damaged_volume():
    """synthetic_volume with NaN and ±inf voxels in planes 4..9 and plane 10 entirely NaN."""
    image, labels = synthetic_volume(planes=12, size=48, seed=2)
    image = image.copy()
    image[4:10, 2:6, :] = np.nan
    image[5, 30, 30] = np.inf
    image[6, 31, 31] = -np.inf
    image[10] = np.nan
    return image, labels


def test_predict_on_a_volume_with_nan_voxels_gives_finite_results():
    image, labels = _damaged_volume()
    segmenter = Segmenter(engine_loaded_model(seed=51))
    window = segmenter.set_volume(image)
    assert np.isfinite(window.level) and np.isfinite(window.width)
    for plane in (5, 6):
        prediction = segmenter.predict(box=(8, 8, 40, 40), plane=plane)
        assert prediction.mask.dtype == bool and prediction.mask.shape == (48, 48)
        assert np.isfinite(prediction.score) and np.all(np.isfinite(prediction.logits))
        assert np.all(np.isfinite(prediction.candidate_scores))
        assert np.all(np.isfinite(segmenter.embedding(plane).features.numpy()))
    # a NaN voxel reads as the window's low end, like a voxel far below it
    filled = np.where(np.isnan(image), -1e6, image)
    twin = Segmenter(engine_loaded_model(seed=51))
    twin.set_volume(filled, window=window)
    np.testing.assert_allclose(twin.embedding(5).features.numpy(), segmenter.embedding(5).features.numpy(), atol=1e-5)


def test_a_plane_without_a_finite_voxel_gives_a_clear_error():
    image, _ = _damaged_volume()
    segmenter = Segmenter(engine_loaded_model(seed=52))
    segmenter.set_volume(image)
    with pytest.raises(NonFiniteImageError, match=r"plane 10 along axis 0 has no finite pixel"):
        segmenter.predict(box=(8, 8, 40, 40), plane=10)
    assert not segmenter.has_embedding(10)
    assert segmenter.embed_planes() == 11  # every plane but the empty one
    handle = segmenter.prefetch(order=[9, 10, 11])
    assert handle.wait(60) and handle.error is None
    with pytest.raises(NonFiniteImageError, match="all NaN or infinite"):
        Segmenter(engine_loaded_model(seed=52)).set_image(np.full((20, 20), np.nan, np.float32))
    with pytest.raises(NonFiniteImageError, match=r"volume of shape \(2, 20, 20\)"):
        Segmenter(engine_loaded_model(seed=52)).set_volume(np.full((2, 20, 20), np.inf, np.float32))
    assert isinstance(NonFiniteImageError("x"), ValueError)  # the CLI reports it as bad input


def test_appearance_ignores_non_finite_voxels():
    rng = np.random.default_rng(0)
    values = rng.normal(100.0, 5.0, (30, 30))
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    clean = Appearance.of(values, mask)
    damaged = values.copy()
    damaged[0:3, :] = np.nan  # outside the mask: must not move the bins
    damaged[10, 10], damaged[11, 11], damaged[12, 12] = np.nan, np.inf, -np.inf  # inside it
    look = Appearance.of(damaged, mask)
    inside = mask.copy()
    inside[10, 10] = inside[11, 11] = inside[12, 12] = False
    assert look is not None and np.all(np.isfinite(look.histogram)) and look.histogram.sum() == pytest.approx(1.0)
    assert np.isfinite([look.low, look.high, look.spread]).all()
    reference = clean.like(values, inside)
    assert clean.like(damaged, mask).histogram == pytest.approx(reference.histogram)
    assert 0.0 <= clean.similarity(damaged, mask) <= 1.0
    plausible = clean.plausible(damaged, tolerance=10.0)
    assert not plausible[10, 10] and not plausible[11, 11] and not plausible[12, 12] and plausible[15, 15]
    assert Appearance.of(np.full((30, 30), np.nan), mask) is None


@pytest.mark.parametrize("preset_name", ["generic", "tight"])
def test_propagate_through_nan_voxels_stops_at_the_plane_without_data(preset_name):
    from napari_vfmseg.engine import preset

    image, labels = _damaged_volume()
    segmenter = Segmenter(engine_loaded_model(seed=53))
    segmenter.set_volume(image)
    seed = labels[6] == 1
    loose = dict(min_score=-np.inf, min_area=1, max_growth=1e6, min_overlap=0.0, min_score_ratio=0.0)
    config: PropagationConfig = preset(preset_name)
    result = propagate(segmenter, {6: seed}, config=config, **loose, min_appearance_similarity=0.0)
    assert result.mask.dtype == bool and result.mask.shape == image.shape
    up = [s for s in result.stops if s.direction == +1][0]
    assert up.stopped_at == 10 and up.reason == "vanished" and up.last_plane == 9
    assert not result.mask[10].any() and not result.mask[11].any()
    visit = [v for v in result.visits if v.plane == 10][0]
    assert not visit.accepted and visit.area == 0
    assert all(np.isfinite(v.score) for v in result.visits if v.plane != 10)
    if config.uses_appearance:  # the checks measured planes with NaN voxels and gave numbers
        measured = [v.similarity for v in result.visits if v.plane in (7, 8, 9)]
        assert all(s is not None and 0.0 <= s <= 1.0 for s in measured)

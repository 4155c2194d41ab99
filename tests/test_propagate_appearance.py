"""3D propagation's appearance checks: intensity histograms stop a box-filling model at an object's end
(a vertebral body's walk at the disc) and trim what it spills into neighbours of another intensity."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vfmseg.engine import PromptPolicy, PropagationConfig, Segmenter, propagate
from napari_vfmseg.engine.appearance import Appearance, surroundings
from napari_vfmseg.engine.propagate import stop_reason, trim_to_appearance
from napari_vfmseg.training.metrics import dice

from _tiny_models import synthetic_volume, tiny_loaded_model


TIGHT = PromptPolicy(box_margin=0.0, box_margin_px=0.0, points=1, logits=False)  # the built-in model's walk


def spine(shape=(30, 40, 40), seed=0):
    """Two bone cylinders (planes 4..11 and 14..21, 260 HU with a 600 HU shell) split by a 100 HU disc
    (planes 12..13), in 40 HU muscle with 10 HU noise. Returns (image float32, lower body bool, upper bool)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    radius = np.hypot(y - 20, x - 20)
    disc_shape = radius <= 9
    lower = disc_shape & (z >= 4) & (z <= 11)
    upper = disc_shape & (z >= 14) & (z <= 21)
    image = np.full(shape, 40.0)
    image[disc_shape & (z >= 12) & (z <= 13)] = 100.0
    bone = lower | upper
    image[bone] = np.where(radius[bone] >= 7.5, 600.0, 260.0)
    image += rng.normal(0, 10, shape)
    return image.astype(np.float32), lower, upper


class BoxFiller:
    """A model that fills the box it is given, everywhere, with score 1: the worst case a walk can meet.
    ``plane_image`` gives the stored intensities, as the engine's Segmenter does."""

    def __init__(self, volume: np.ndarray) -> None:
        self.volume, self.volume_axis = volume, 0

    @property
    def plane_count(self) -> int:
        return self.volume.shape[0]

    def plane_image(self, plane: int) -> np.ndarray:
        return self.volume[plane]

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask=None, plane=None):
        mask = np.zeros(self.volume.shape[1:], bool)
        r0, c0, r1, c1 = (int(round(v)) for v in box)
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
        return type("P", (), {"mask": mask, "score": 1.0, "logits": None})()


def test_appearance_histograms_compare_tissues():
    image, lower, _ = spine()
    bone = Appearance.of(image[6], lower[6])
    assert bone is not None and bone.histogram.sum() == pytest.approx(1.0)
    assert bone.similarity(image[9], lower[9]) > 0.9  # the same body two planes on
    assert bone.similarity(image[12], lower[9]) < 0.1  # the disc under the same footprint: nothing in common
    muscle = np.zeros_like(lower[6])
    muscle[:5, :5] = True
    assert bone.similarity(image[6], muscle) < 0.1
    assert bone.similarity(image[6], np.zeros_like(muscle)) == 0.0
    assert Appearance.of(image[6], np.zeros_like(muscle)) is None
    assert Appearance.of(image[6][:5], lower[6]) is None  # shapes differ
    plausible = bone.plausible(image[6], tolerance=0.5)
    assert plausible[lower[6]].mean() > 0.95 and plausible[~lower[6]].mean() < 0.05


def test_box_filler_crosses_the_disc_without_the_check_and_stops_at_it_with_it():
    image, lower, upper = spine()
    box_filler = BoxFiller(image)
    seed = {7: lower[7]}
    plain = propagate(box_filler, seed, axis=0, config=PropagationConfig(policy=TIGHT, min_overlap=0.0))
    assert plain.planes == list(range(30))  # runs through the disc, the next body and beyond

    checked = propagate(box_filler, seed, axis=0, config=PropagationConfig(policy=TIGHT, min_appearance_similarity=0.7))
    assert checked.planes == list(range(4, 12))  # exactly the body
    assert {s.reason for s in checked.stops} == {"appearance"}
    assert [s.stopped_at for s in checked.stops] == [3, 12]
    assert dice(checked.mask, lower) > 0.8  # squares around a round body: the box filler's own error


def test_trim_removes_what_the_box_holds_besides_the_object():
    image, lower, _ = spine()  # a round body inside a square box: the box's corners are muscle
    config = PropagationConfig(policy=TIGHT, min_appearance_similarity=0.5)
    untrimmed = propagate(BoxFiller(image), {7: lower[7]}, axis=0, config=config)
    trimmed = propagate(BoxFiller(image), {7: lower[7]}, axis=0,
                        config=PropagationConfig(policy=TIGHT, min_appearance_similarity=0.5, appearance_trim=0.5))
    assert dice(untrimmed.mask, lower) < 0.9
    assert dice(trimmed.mask, lower) > 0.97


def test_trim_keeps_the_parts_that_touch_the_previous_mask_and_fills_holes():
    values = np.full((20, 20), 40.0)
    values[2:10, 2:10] = 200.0
    values[5, 5] = 40.0  # a vessel of another intensity inside the object
    values[14:18, 14:18] = 200.0  # another object of the same intensity, apart
    reference = Appearance.of(values, values > 100)
    previous = np.zeros((20, 20), bool)
    previous[3:9, 3:9] = True
    everything = np.ones((20, 20), bool)
    trimmed = trim_to_appearance(everything, values, reference, 0.5, previous)
    expected = np.zeros((20, 20), bool)
    expected[2:10, 2:10] = True  # the hole filled, the far object dropped
    np.testing.assert_array_equal(trimmed, expected)
    elsewhere = np.zeros((20, 20), bool)
    elsewhere[0, 19] = True  # nothing plausible touches it: every plausible part is kept, so "lost" can fire
    both = expected.copy()
    both[14:18, 14:18] = True
    np.testing.assert_array_equal(trim_to_appearance(everything, values, reference, 0.5, elsewhere), both)
    inside_prediction = np.zeros((20, 20), bool)
    inside_prediction[2:10, 2:6] = True  # holes are filled only inside what the model predicted
    assert not trim_to_appearance(inside_prediction, values, reference, 0.5, previous)[2:10, 6:].any()


def test_appearance_stop_rule_and_validation():
    config = PropagationConfig(min_appearance_similarity=0.6)
    mask = np.ones((6, 6), bool)
    assert stop_reason(mask, 0.9, mask, config, appearance_similarity=0.7) is None
    assert stop_reason(mask, 0.9, mask, config, appearance_similarity=0.5) == "appearance"
    # below the threshold, but clearly more like the object than like what surrounded it: go on
    assert stop_reason(mask, 0.9, mask, config, appearance_similarity=0.5, surroundings_similarity=0.2) is None
    assert stop_reason(mask, 0.9, mask, config, appearance_similarity=0.5, surroundings_similarity=0.47) == "appearance"
    assert stop_reason(mask, 0.9, mask, config, appearance_similarity=0.0, surroundings_similarity=0.0) == "appearance"
    assert stop_reason(mask, 0.9, mask, config, appearance_similarity=None) is None  # not measured
    assert stop_reason(mask, 0.9, mask, PropagationConfig(), appearance_similarity=0.0) is None  # off
    with pytest.raises(ValueError, match="min_appearance_similarity"):
        PropagationConfig(min_appearance_similarity=1.5)
    with pytest.raises(ValueError, match="appearance_trim"):
        PropagationConfig(appearance_trim=-1.0)


def test_stand_ins_without_plane_image_walk_without_the_checks():
    class NoImages(BoxFiller):
        plane_image = None  # like a stand-in that cannot give intensities

    image, lower, _ = spine()
    result = propagate(NoImages(image), {7: lower[7]}, axis=0, config=PropagationConfig(policy=TIGHT, min_appearance_similarity=0.7,
                                                                             min_overlap=0.0))
    assert result.planes == list(range(30))


def test_engine_segmenter_gives_raw_planes_along_its_axis():
    image, _ = synthetic_volume(planes=6, size=20)
    segmenter = Segmenter(tiny_loaded_model(seed=1))
    with pytest.raises(ValueError, match="no volume"):
        segmenter.plane_image(0)
    hu = image.astype(np.float32) * 3.0 - 1000.0  # units the window would change
    segmenter.set_volume(hu, axis=2)
    np.testing.assert_array_equal(segmenter.plane_image(4), hu[:, :, 4])
    with pytest.raises(ValueError, match="outside"):
        segmenter.plane_image(hu.shape[2])


def test_surroundings_is_a_ring_around_the_mask():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True  # equivalent radius 5.6 px: the ring is 3 px wide
    ring = surroundings(mask)
    assert not (ring & mask).any()
    assert ring[7:23, 7:23].sum() == 16 * 16 - 100 and ring.sum() == 16 * 16 - 100
    big = np.zeros((200, 200), bool)
    big[50:150, 50:150] = True  # radius 56 px: 11 px wide
    assert surroundings(big).sum() == 122 * 122 - 100 * 100
    edge = np.zeros((10, 10), bool)
    edge[:4, :4] = True  # clipped at the image border
    assert surroundings(edge).sum() == 7 * 7 - 16
    assert not surroundings(np.zeros((5, 5), bool)).any()


def test_a_blurred_key_plane_at_an_object_s_end_does_not_stop_the_walk():
    """A key plane on the partial-volume end of an object looks unlike the object's core, but the next
    plane looks still less like the surroundings: the walk goes on (MR ventricles in the phantom)."""
    rng = np.random.default_rng(3)
    shape = (16, 40, 40)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    core = (np.hypot(y - 20, x - 20) <= 7) & (z >= 3) & (z <= 12)
    image = np.full(shape, 800.0)
    image[core] = 240.0
    blurred = core[3] & (rng.random(core[3].shape) < 0.8)
    image[3][blurred] = 420.0  # 80 % of the end plane mixed with its neighbour
    image += rng.normal(0, 10, shape)

    class DarkInBox(BoxFiller):
        def predict(self, box=None, plane=None, **prompts):
            prediction = super().predict(box=box, plane=plane)
            prediction.mask &= self.volume[plane] < 600
            return prediction

    walker = DarkInBox(image.astype(np.float32))
    key = core[3]
    assert 0.05 < Appearance.of(image[3], key).similarity(image[4], core[4]) < 0.6
    result = propagate(walker, {3: key}, axis=0, config=PropagationConfig(policy=TIGHT, min_appearance_similarity=0.6))
    assert result.planes == list(range(3, 13))
    assert all(v.surroundings is not None and v.surroundings < 0.05 for v in result.visits if v.accepted)

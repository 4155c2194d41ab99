"""3D propagation: prompt policy, stop rules, reconciliation, ends of objects, axes, cancel, key planes, engine."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_vfmseg.engine import PromptPolicy, PropagationConfig, Segmenter, propagate
from napari_vfmseg.engine.propagate import next_plane_prompt, reconcile, stop_reason
from napari_vfmseg.training.metrics import dice

from _tiny_models import synthetic_volume, tiny_loaded_model


# ------------------------------------------------------------------------------------ stand-ins


def phantom(shape=(24, 48, 64)):
    """Dark volume with a bright ellipsoid (planes 5..17) and a thin tube wandering through planes 2..19.

    Returns (image float32, ellipsoid bool, tube bool), all (plane, row, col).
    """
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    ellipsoid = ((z - 11) / 6.4) ** 2 + ((y - 24) / 14.0) ** 2 + ((x - 48) / 11.0) ** 2 <= 1.0
    centre_r = 24 + 9 * np.sin(z / 3.5)
    centre_c = 6 + 0.9 * z
    tube = ((y - centre_r) ** 2 + (x - centre_c) ** 2 <= 2.6**2) & (z >= 2) & (z <= 19)
    image = np.full(shape, 20.0, dtype=np.float32)
    image[ellipsoid] = 200.0
    image[tube] = 150.0
    return image, ellipsoid, tube


class ThresholdSegmenter:
    """Deterministic fake: pixels brighter than ``threshold`` inside the box (inclusive); with points, only
    the connected parts that hold a positive point (when one lands on the object). Score 1 if non-empty."""

    def __init__(self, volume: np.ndarray, axis: int = 0, threshold: float = 100.0) -> None:
        self.volume, self.volume_axis, self.threshold = volume, axis, threshold
        self.calls: list[int] = []
        self.mask_inputs: list = []

    @property
    def plane_count(self) -> int:
        return self.volume.shape[self.volume_axis]

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask=None, plane=None):
        from scipy import ndimage

        self.calls.append(plane)
        self.mask_inputs.append(mask_input)
        image = np.take(self.volume, plane, axis=self.volume_axis)
        mask = image > self.threshold
        if box is not None:
            r0, c0, r1, c1 = (int(round(v)) for v in box)
            inside = np.zeros_like(mask)
            inside[r0 : r1 + 1, c0 : c1 + 1] = True
            mask &= inside
        if points is not None:
            labelled, _ = ndimage.label(mask)
            hit = {labelled[int(r), int(c)] for r, c in points} - {0}
            if hit:
                mask = np.isin(labelled, list(hit))
        logits = np.where(mask[::4, ::4], 5.0, -5.0).astype(np.float32)
        return _Prediction(mask, 1.0 if mask.any() else 0.0, logits)


class _Prediction:
    def __init__(self, mask, score, logits):
        self.mask, self.score, self.logits = mask, score, logits


class ScriptedSegmenter:
    """Answers each plane with a given (mask, score); planes not listed get an empty mask."""

    def __init__(self, count: int, shape, answers: dict) -> None:
        self.plane_count, self.shape, self.answers = count, shape, answers
        self.volume_axis = 0

    def predict(self, plane=None, **prompts):
        mask, score = self.answers.get(plane, (np.zeros(self.shape, bool), 0.0))
        return _Prediction(mask, score, None)


def planes_of(mask: np.ndarray, axis: int) -> list[int]:
    other = tuple(i for i in range(3) if i != axis)
    return [int(p) for p in np.flatnonzero(mask.any(axis=other))]


# ------------------------------------------------------------------------------------ policy


def test_next_plane_prompt_box_margin_points_and_logits():
    mask = np.zeros((40, 50), bool)
    mask[10:30, 20:25] = True  # 20 rows x 5 cols
    mask[2:4, 45:49] = True  # a second, smaller part
    logits = np.ones((16, 16), np.float32)
    prompt = next_plane_prompt(mask, logits, PromptPolicy(box_margin=0.1, box_margin_px=3, points=2))
    # rows 2..29 (28 tall → margin 3 px, the minimum); cols 20..48 (29 wide → margin 2.9 → 3 px, clipped at 49)
    assert prompt.box == (0.0, 17.0, 32.0, 49.0)
    # one most-interior point per part, the larger part first
    assert prompt.points.shape == (2, 2)
    assert 10 <= prompt.points[0][0] <= 29 and prompt.points[0][1] == 22
    assert mask[tuple(prompt.points[1].astype(int))] and prompt.points[1][1] >= 45
    np.testing.assert_array_equal(prompt.point_labels, [1, 1])
    assert prompt.mask_input is not None and prompt.mask_input.shape == (16, 16)

    wide = next_plane_prompt(mask[:, :30], None, PromptPolicy(box_margin=0.5, box_margin_px=0, points=0, logits=True))
    assert wide.box == (0.0, 17.0, 39.0, 27.0)  # margin 10 rows, 2.5 → 3 cols (rounded outwards)
    assert wide.points is None and wide.mask_input is None  # no logits given


def test_prompt_policy_and_config_validation():
    with pytest.raises(ValueError, match="box or at least one point"):
        PromptPolicy(box=False, points=0)
    with pytest.raises(ValueError, match="min_area"):
        PropagationConfig(min_area=0)
    with pytest.raises(ValueError, match="non-empty"):
        next_plane_prompt(np.zeros((4, 4), bool))


def test_stop_rules_each_fire():
    config = PropagationConfig(min_score=0.5, min_area=3, max_growth=1.5, growth_slack_px=2.0, min_overlap=0.1)
    previous = np.zeros((30, 30), bool)
    previous[10:14, 10:14] = True  # 16 px, sqrt = 4
    same = previous.copy()
    assert stop_reason(same, 0.9, previous, config) is None
    tiny = np.zeros_like(previous)
    tiny[10, 10:12] = True
    assert stop_reason(tiny, 0.9, previous, config) == "vanished"
    assert stop_reason(same, 0.4, previous, config) == "low_score"
    assert stop_reason(same, float("nan"), previous, config) == "low_score"
    grown = np.zeros_like(previous)
    grown[8:16, 8:16] = True  # sqrt 8 = 1.5 * 4 + 2: just allowed
    assert stop_reason(grown, 0.9, previous, config) is None
    grown[8:17, 8:16] = True  # sqrt 72 > 8
    assert stop_reason(grown, 0.9, previous, config) == "area_jump"
    elsewhere = np.zeros_like(previous)
    elsewhere[20:24, 20:24] = True
    assert stop_reason(elsewhere, 0.9, previous, config) == "lost"
    assert stop_reason(elsewhere, 0.9, previous, PropagationConfig(min_overlap=0.0)) is None


def test_reconcile_weights_by_distance_and_breaks_ties_by_score():
    a = np.array([[True, True, False]])
    b = np.array([[False, True, True]])
    near_low, score = reconcile(3, 2, 6, (a, 0.9), (b, 0.5))  # weights 0.75 / 0.25
    np.testing.assert_array_equal(near_low, a)
    assert score == pytest.approx(0.8)
    near_high, _ = reconcile(5, 2, 6, (a, 0.9), (b, 0.5))
    np.testing.assert_array_equal(near_high, b)
    middle, _ = reconcile(4, 2, 6, (a, 0.5), (b, 0.9))  # tie: the higher-scoring side (b) decides
    np.testing.assert_array_equal(middle, b)
    only, only_score = reconcile(4, 2, 6, None, (b, 0.7))
    assert only is b and only_score == 0.7
    assert reconcile(4, 2, 6, None, None) is None


# ------------------------------------------------------------------------------------ walking


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_ellipsoid_reaches_high_dice_and_stops_at_its_ends_along_each_axis(axis):
    image, ellipsoid, _ = phantom()
    segmenter = ThresholdSegmenter(image, axis=axis)
    areas = ellipsoid.sum(axis=tuple(i for i in range(3) if i != axis))
    key = int(np.argmax(areas))
    seed = np.take(ellipsoid, key, axis=axis)
    result = propagate(segmenter, {key: seed}, axis=axis, min_area=1)  # the tips are 1-2 px
    assert result.mask.shape == image.shape
    assert dice(result.mask, ellipsoid) > 0.99
    first, last = planes_of(ellipsoid, axis)[0], planes_of(ellipsoid, axis)[-1]
    assert result.planes == list(range(first, last + 1))
    # each direction stopped on the first empty plane past the object: no runaway into empty planes
    assert sorted((s.direction, s.stopped_at, s.reason) for s in result.stops) == [
        (-1, first - 1, "vanished"), (1, last + 1, "vanished")]
    assert set(segmenter.calls) == set(range(first - 1, last + 2)) - {key}
    assert set(result.scores) == set(range(first, last + 1)) - {key}


def test_wandering_tube_is_followed_to_both_ends():
    image, _, tube = phantom()
    segmenter = ThresholdSegmenter(image, axis=0)
    seed = tube[10]
    result = propagate(segmenter, {10: seed}, axis=0)
    assert dice(result.mask, tube) > 0.98
    assert result.planes == list(range(2, 20))
    assert {s.reason for s in result.stops} == {"vanished"}
    # the tube moves ~3 px per plane: without a margin the box would cut it and the walk lose it
    tight = propagate(segmenter, {10: seed}, axis=0, policy=PromptPolicy(box_margin=0, box_margin_px=0, points=0))
    assert dice(tight.mask, tube) < dice(result.mask, tube)


def test_previous_logits_feed_the_next_plane():
    image, ellipsoid, _ = phantom()
    segmenter = ThresholdSegmenter(image)
    propagate(segmenter, {11: ellipsoid[11]}, axis=0)
    first_up = segmenter.calls.index(12)
    assert segmenter.mask_inputs[first_up] is None  # a plain key mask has no logits
    assert segmenter.mask_inputs[first_up + 1] is not None and segmenter.mask_inputs[first_up + 1].shape == (12, 16)
    segmenter.mask_inputs.clear()
    propagate(segmenter, {11: ellipsoid[11]}, axis=0, policy=PromptPolicy(logits=False))
    assert all(m is None for m in segmenter.mask_inputs)


def test_rejected_plane_is_not_kept_and_reasons_are_reported():
    shape = (20, 20)
    small = np.zeros(shape, bool)
    small[8:12, 8:12] = True
    full = np.ones(shape, bool)
    answers = {4: (small, 0.9), 6: (small, 0.9), 7: (full, 0.95), 3: (small, 0.2)}
    result = propagate(ScriptedSegmenter(10, shape, answers), {5: small}, axis=0)
    assert result.planes == [4, 5, 6]
    assert {(s.direction, s.stopped_at, s.reason) for s in result.stops} == {(-1, 3, "low_score"), (1, 7, "area_jump")}
    assert [v.accepted for v in result.visits] == [True, False, True, False]
    assert result.summary()["stops"][0]["reason"] in ("low_score", "area_jump")


def test_walk_stops_at_volume_end_and_max_planes():
    shape = (10, 10)
    blob = np.zeros(shape, bool)
    blob[3:6, 3:6] = True
    answers = {p: (blob, 0.9) for p in range(6)}
    result = propagate(ScriptedSegmenter(6, shape, answers), {2: blob}, axis=0)
    assert result.planes == list(range(6))
    assert {s.reason for s in result.stops} == {"volume_end"}
    capped = propagate(ScriptedSegmenter(6, shape, answers), {2: blob}, axis=0, max_planes=1)
    assert capped.planes == [1, 2, 3]
    assert {s.reason for s in capped.stops} == {"max_planes"}


def test_cancel_stops_after_the_current_plane_and_keeps_what_was_done():
    image, ellipsoid, _ = phantom()
    segmenter = ThresholdSegmenter(image)
    stop = threading.Event()
    seen = []

    def progress(done, total, plane):
        seen.append((done, total, plane))
        if done == 3:
            stop.set()

    result = propagate(segmenter, {11: ellipsoid[11]}, axis=0, progress=progress, cancel=stop)
    assert result.cancelled
    assert len(result.visits) == 3 and len(segmenter.calls) == 3
    assert result.stops[-1].reason == "cancelled"
    assert len(result.planes) == 4  # the key plane and the 3 planes done
    calls = []
    result = propagate(segmenter, {11: ellipsoid[11]}, axis=0, cancel=lambda: calls.append(1) or len(calls) > 2)
    assert result.cancelled and len(result.visits) == 2


def test_progress_counts_every_prediction_and_total_shrinks_to_done():
    image, ellipsoid, _ = phantom()
    seen = []
    result = propagate(ThresholdSegmenter(image), {11: ellipsoid[11]}, axis=0,
                       progress=lambda done, total, plane: seen.append((done, total, plane)))
    assert [d for d, _, _ in seen] == list(range(1, len(result.visits) + 1))
    assert seen[0][1] == 23  # planned: every other plane of the 24
    assert seen[-1][1] == len(result.visits)
    assert [p for _, _, p in seen] == [v.plane for v in result.visits]


def test_corrected_key_planes_are_respected_and_gaps_walked_from_both_sides():
    image, ellipsoid, _ = phantom()
    corrected = ellipsoid[14].copy()
    corrected[20:28, 44:52] = False  # a hole the user painted: the model would fill it, post-processing too
    corrected[5:8, 5:8] = True  # and a detached speck the user wants kept
    seeds = {7: ellipsoid[7], 14: corrected}
    result = propagate(ThresholdSegmenter(image), seeds, axis=0, largest_component=True, fill_holes=True)
    np.testing.assert_array_equal(result.mask[14], corrected)
    np.testing.assert_array_equal(result.mask[7], ellipsoid[7])
    gap = [v for v in result.visits if 7 < v.plane < 14]
    assert {(v.seed, v.direction) for v in gap} == {(7, 1), (14, -1)}
    assert sorted(v.plane for v in gap if v.seed == 7) == list(range(8, 14))
    assert {(s.seed, s.direction): s.reason for s in result.stops}[(7, 1)] == "key_plane"
    assert dice(result.mask, ellipsoid) > 0.97
    assert result.key_planes == [7, 14] and 14 not in result.scores


def test_an_empty_key_plane_is_a_barrier():
    image, ellipsoid, _ = phantom()
    result = propagate(ThresholdSegmenter(image), {9: ellipsoid[9], 13: np.zeros_like(ellipsoid[13])}, axis=0)
    assert result.planes == list(range(5, 13))  # from the ellipsoid's start up to the empty key plane
    assert not result.mask[13:].any()


def test_bad_inputs_are_refused_with_clear_messages():
    image, ellipsoid, _ = phantom()
    segmenter = ThresholdSegmenter(image, axis=1)
    with pytest.raises(ValueError, match="set along axis 1"):
        propagate(segmenter, {3: ellipsoid[3]}, axis=0)
    with pytest.raises(ValueError, match="outside the volume"):
        propagate(ThresholdSegmenter(image), {24: ellipsoid[3]}, axis=0)
    with pytest.raises(ValueError, match="at least one key plane"):
        propagate(ThresholdSegmenter(image), {}, axis=0)
    with pytest.raises(ValueError, match="has shape"):
        propagate(ThresholdSegmenter(image), {11: ellipsoid[11][:, 30:]}, axis=0)
    with pytest.raises(ValueError, match="boolean or 0/1"):
        propagate(ThresholdSegmenter(image), {11: ellipsoid[11] * 3}, axis=0)
    with pytest.raises(ValueError, match="axis must be"):
        propagate(ThresholdSegmenter(image), {11: ellipsoid[11]}, axis=3)
    with pytest.raises(TypeError, match="unknown propagation setting"):
        propagate(ThresholdSegmenter(image), {11: ellipsoid[11]}, axis=0, min_scor=0.3)


# ------------------------------------------------------------------------------------ with the engine


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_loaded_model(seed=1)


def test_engine_segmenter_propagates_with_prefetch_and_reuses_the_cache(tiny_model):
    image, labels = synthetic_volume(planes=10, size=20)
    segmenter = Segmenter(tiny_model)
    segmenter.set_volume(image, axis=1)
    key = 10
    seed = segmenter.predict(box=(1, 4, 8, 16), plane=key)
    assert seed.mask.any()  # a Prediction: its logits prompt the first step
    loose = dict(min_score=-np.inf, min_area=1, max_growth=1e6, min_overlap=0.0)
    before = segmenter.encoder_calls
    first = propagate(segmenter, {key: seed}, axis=1, **loose)
    assert segmenter.current_plane == key  # the plane the user looks at is left alone
    assert first.mask.shape == image.shape
    np.testing.assert_array_equal(first.mask[:, key, :], seed.mask)
    visited = set(first.planes_visited)
    # every plane embedded once (prefetched in the background or on demand), never twice
    assert segmenter.encoder_calls - before == first.encoder_calls
    assert segmenter.stats.images_encoded <= 20
    assert [s.reason for s in first.stops] == ["volume_end", "volume_end"]
    assert visited == set(range(20)) - {key}
    assert segmenter.stats.images_encoded == 20  # the key plane and the 19 others, once each
    again = propagate(segmenter, {key: seed}, axis=1, **loose)
    assert again.encoder_calls == 0  # all from the memory cache
    np.testing.assert_array_equal(again.mask, first.mask)


class SlowEncoder:
    """Wraps a segmenter's encoder, sleeps in each call and records when each call ran."""

    def __init__(self, segmenter: Segmenter, delay: float) -> None:
        self.inner, self.delay = segmenter.embeddings._encoder, delay
        self.intervals: list[tuple[float, float]] = []
        segmenter.embeddings._encoder = self

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x):
        import time

        started = time.perf_counter()
        time.sleep(self.delay)
        out = self.inner(x)
        self.intervals.append((started, time.perf_counter()))
        return out


def _overlapping(intervals, others) -> int:
    """How many of ``intervals`` share some time with one of ``others``."""
    return sum(any(a0 < b1 and b0 < a1 for b0, b1 in others) for a0, a1 in intervals)


def test_prefetch_overlaps_the_encoder_with_the_walk(tiny_model):
    """With prefetch the encoder embeds the next planes while the caller is still busy with the
    current one; without it every encoder call waits for the caller. Checked on when each call ran,
    not on total wall time, so a busy machine cannot make it fail."""
    import time

    image, _ = synthetic_volume(planes=10, size=20)
    loose = dict(min_score=-np.inf, min_area=1, max_growth=1e6, min_overlap=0.0)
    overlaps = {}
    for prefetch in (False, True):
        segmenter = Segmenter(tiny_model)
        segmenter.set_volume(image, axis=1)
        seed = segmenter.predict(box=(1, 4, 8, 16), plane=10)  # the walk from it never stops early (see above)
        encoder = SlowEncoder(segmenter, 0.05)
        caller_work: list[tuple[float, float]] = []

        def busy_caller(*_):
            started = time.perf_counter()
            time.sleep(0.05)
            caller_work.append((started, time.perf_counter()))

        result = propagate(segmenter, {10: seed}, axis=1, prefetch=prefetch, max_planes=3, progress=busy_caller, **loose)
        assert len(result.visits) == 6 and result.encoder_calls == 6  # nothing encoded beyond the walk
        assert len(encoder.intervals) == 6 and len(caller_work) >= 6
        overlaps[prefetch] = _overlapping(encoder.intervals, caller_work)
    assert overlaps[False] == 0, overlaps  # one thread: the caller's work and the encoder take turns
    assert overlaps[True] >= 3, overlaps   # most planes were embedded during the caller's work


def test_score_drop_relative_to_the_best_score_of_the_walk():
    previous = np.zeros((20, 20), bool)
    previous[5:15, 5:15] = True
    config = PropagationConfig(min_score=0.1, min_score_ratio=0.8)
    assert stop_reason(previous, 0.3, previous, config, best_score=None) is None  # nothing to compare yet
    assert stop_reason(previous, 0.3, previous, config, best_score=0.35) is None  # 0.3 >= 0.8 x 0.35
    assert stop_reason(previous, 0.3, previous, config, best_score=0.4) == "score_drop"
    assert stop_reason(previous, 0.3, previous, PropagationConfig(min_score=0.1), best_score=0.9) is None  # off


def test_builtin_model_gets_its_own_propagation_defaults():
    from types import SimpleNamespace

    from napari_vfmseg.models import get_spec

    builtin = SimpleNamespace(info={"propagation": get_spec("builtin").propagation})
    tuned = PropagationConfig.for_model(builtin)
    assert tuned.policy.box_margin == tuned.policy.box_margin_px == 0 and not tuned.policy.logits
    assert tuned.min_score_ratio == 0.8
    assert tuned.min_appearance_similarity == 0.6 and tuned.appearance_trim == 0.25 and tuned.uses_appearance
    vit_b = SimpleNamespace(info={"propagation": get_spec("vit_b").propagation})
    assert PropagationConfig.for_model(vit_b) == PropagationConfig() == PropagationConfig.for_model(None)

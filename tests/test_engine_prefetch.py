"""Background prefetch: order, progress, cancellation, batching and no duplicate encoder work."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_vfmseg.engine import Segmenter, outward_order

from _tiny_models import engine_loaded_model


@pytest.fixture(scope="module")
def model():
    return engine_loaded_model(seed=9)


def volume(planes: int = 7) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (planes, 24, 20), dtype=np.uint8)


class SlowEncoder:
    """Wraps a segmenter's encoder: records which planes' batches ran and sleeps to widen races."""

    def __init__(self, segmenter: Segmenter, delay: float) -> None:
        self.inner = segmenter.embeddings._encoder
        self.delay = delay
        self.batches: list[int] = []
        segmenter.embeddings._encoder = self

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x):
        self.batches.append(int(x.shape[0]))
        time.sleep(self.delay)
        return self.inner(x)


def test_outward_order():
    assert outward_order(3, 7) == [3, 4, 2, 5, 1, 6, 0]
    assert outward_order(0, 4) == [0, 1, 2, 3]
    assert outward_order(5, 6) == [5, 4, 3, 2, 1, 0]
    assert outward_order(9, 3) == [2, 1, 0]  # clamped centre
    assert outward_order(0, 0) == []


def test_default_order_starts_at_the_current_plane_and_reports_progress(model):
    segmenter = Segmenter(model)
    segmenter.set_volume(volume(7))
    segmenter.predict(points=[(5, 5)], plane=2)  # plane 2 becomes current and is embedded
    events = []
    handle = segmenter.prefetch(callback=lambda done, total, plane: events.append((done, total, plane)))
    assert handle.wait(timeout=60)
    assert [plane for _, _, plane in events] == [2, 3, 1, 4, 0, 5, 6]
    assert [done for done, _, _ in events] == list(range(1, 8))
    assert {total for _, total, _ in events} == {7}
    assert segmenter.stats.images_encoded == 7  # plane 2 was not encoded twice
    assert handle.done == handle.total == 7 and not handle.running


def test_explicit_order_and_bad_planes(model):
    segmenter = Segmenter(model)
    segmenter.set_volume(volume(5))
    seen = []
    segmenter.prefetch(order=[4, 0], callback=lambda d, t, p: seen.append(p)).wait(60)
    assert seen == [4, 0] and segmenter.stats.images_encoded == 2
    with pytest.raises(ValueError, match=r"prefetch planes \[5\] are outside the volume"):
        segmenter.prefetch(order=[1, 5])
    with pytest.raises(ValueError, match="no volume is set"):
        Segmenter(model).prefetch()


def test_cancel_stops_after_the_current_plane(model):
    segmenter = Segmenter(model)
    segmenter.set_volume(volume(7))
    SlowEncoder(segmenter, delay=0.05)
    handle_box = {}

    def on_progress(done, total, plane):
        if done == 2:
            handle_box["handle"].cancel()

    started = threading.Event()
    handle_box["handle"] = handle = segmenter.prefetch(callback=lambda *a: (started.wait(), on_progress(*a)))
    started.set()
    assert handle.wait(timeout=60)
    assert handle.cancelled
    assert handle.done == 2
    assert segmenter.stats.images_encoded == 2


def test_new_prefetch_cancels_the_previous_one(model):
    segmenter = Segmenter(model)
    segmenter.set_volume(volume(7))
    slow = SlowEncoder(segmenter, delay=0.1)
    first = segmenter.prefetch(order=[0, 1, 2, 3, 4, 5, 6])
    time.sleep(0.05)
    second = segmenter.prefetch(order=[6])
    assert first.cancelled
    first.wait(60)
    second.wait(60)
    assert first.done < 7
    assert segmenter.stats.images_encoded == len(slow.batches) == first.done + (0 if first.done == 7 else 1)


def test_predict_during_prefetch_never_encodes_a_plane_twice(model):
    segmenter = Segmenter(model)
    segmenter.set_volume(volume(7))
    slow = SlowEncoder(segmenter, delay=0.03)
    handle = segmenter.prefetch(order=list(range(7)))
    for plane in (6, 0, 1, 5, 3):
        segmenter.predict(points=[(4, 4)], plane=plane)
    handle.wait(60)
    assert segmenter.stats.images_encoded == 7 == sum(slow.batches)
    assert segmenter.encoder_calls == len(slow.batches)


def test_concurrent_requests_for_one_plane_share_one_encoder_call(model):
    segmenter = Segmenter(model)
    segmenter.set_volume(volume(3))
    SlowEncoder(segmenter, delay=0.2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(segmenter.embedding(1))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert segmenter.encoder_calls == 1 and segmenter.stats.shared_waits == 3


def test_batches_several_planes_per_encoder_call(model):
    segmenter = Segmenter(model, batch_size=3)
    segmenter.set_volume(volume(7))
    slow = SlowEncoder(segmenter, delay=0.0)
    segmenter.prefetch().wait(60)
    assert slow.batches == [3, 3, 1]
    assert segmenter.encoder_calls == 3 and segmenter.stats.images_encoded == 7
    # batched embeddings equal one-at-a-time ones
    single = Segmenter(model)
    single.set_volume(volume(7))
    np.testing.assert_allclose(single.embedding(4).features, segmenter.embedding(4).features, atol=1e-5)


def test_prefetch_without_disk_is_limited_to_what_memory_holds(model):
    one_plane = 32 * 16 * 16 * 4
    segmenter = Segmenter(model, memory_bytes=3 * one_plane)
    segmenter.set_volume(volume(7))
    handle = segmenter.prefetch()
    handle.wait(60)
    assert handle.total == 3 and segmenter.stats.images_encoded == 3


def test_errors_in_the_worker_reach_wait(model):
    segmenter = Segmenter(model)
    segmenter.set_volume(volume(3))

    class Broken(SlowEncoder):
        def __call__(self, x):
            raise RuntimeError("encoder exploded")

    Broken(segmenter, delay=0.0)
    handle = segmenter.prefetch()
    with pytest.raises(RuntimeError, match="encoder exploded"):
        handle.wait(60)
    assert segmenter.embeddings._inflight == {}  # nothing left claimed: a later request can try again


def test_prefetch_from_a_given_centre_and_embedding_queries(model, tmp_path):
    seg = Segmenter(model, cache_dir=tmp_path / "cache")
    assert seg.volume_axis is None
    seg.set_volume(volume(), axis=1)
    assert seg.volume_axis == 1
    visited = []
    handle = seg.prefetch(order=None, callback=lambda done, total, plane: visited.append(plane), center=0)
    handle.wait()
    assert visited[0] == 0 and sorted(visited) == list(range(seg.plane_count))
    assert all(seg.has_embedding(p) for p in range(seg.plane_count))
    # a new segmenter on the same disk cache knows the planes without running the encoder
    fresh = Segmenter(model, cache_dir=tmp_path / "cache")
    fresh.set_volume(volume(), axis=1)
    assert fresh.has_embedding(2) and fresh.encoder_calls == 0
    other = Segmenter(model)
    other.set_volume(volume(), axis=1)
    assert not other.has_embedding(2)

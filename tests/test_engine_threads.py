"""Threads: a dead or stuck disk writer cannot make close() hang; predictions from many threads
each report their own plane."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_vfmseg.engine import Segmenter
from napari_vfmseg.engine.background_writes import BackgroundWriter

from _tiny_models import engine_loaded_model


class _Killed(BaseException):
    """Not an Exception: escapes the writer's error handling and ends its thread, as a crash would."""


@pytest.fixture
def quiet_thread_deaths(monkeypatch):
    deaths = []
    monkeypatch.setattr(threading, "excepthook", lambda args: deaths.append(args.exc_type))
    return deaths


def test_close_returns_promptly_when_the_writer_thread_died(tmp_path, quiet_thread_deaths):
    segmenter = Segmenter(engine_loaded_model(seed=31), cache_dir=tmp_path)
    released = threading.Event()

    def dying_put(key, embedding):
        released.wait(5)
        raise _Killed()

    segmenter.disk.put = dying_put
    segmenter.set_volume(np.random.default_rng(0).integers(0, 255, (3, 20, 24), dtype=np.uint8))
    segmenter.embed_planes()
    assert segmenter.disk.queued == 3  # the writer holds the first entry, two wait behind it
    released.set()
    started = time.perf_counter()
    with pytest.warns(UserWarning) as warned:
        finished = segmenter.close(timeout=None)  # even without a time limit
    assert time.perf_counter() - started < 5.0
    assert finished is False and segmenter.disk.queued == 0
    assert quiet_thread_deaths == [_Killed]
    messages = " ".join(str(w.message) for w in warned)
    assert "writer thread ended" in messages and "unfinished" in messages
    # the engine still works, and a new write gets a new writer thread
    segmenter.disk.put = type(segmenter.disk).put.__get__(segmenter.disk)
    segmenter.set_image(np.zeros((20, 20, 3), dtype=np.uint8))
    assert segmenter.flush(timeout=30) and len(list((tmp_path / "embeddings-v1").glob("*/*.zarr"))) == 1


def test_close_gives_up_on_a_stuck_writer_after_its_timeout(tmp_path):
    segmenter = Segmenter(engine_loaded_model(seed=32), cache_dir=tmp_path)
    release = threading.Event()
    segmenter.disk.put = lambda key, embedding: release.wait(30)
    segmenter.set_image(np.zeros((20, 20, 3), dtype=np.uint8))
    started = time.perf_counter()
    with pytest.warns(UserWarning, match="unfinished"):
        assert segmenter.close(timeout=0.5) is False
    assert 0.4 < time.perf_counter() - started < 5.0
    release.set()
    assert segmenter.flush(timeout=30)


def test_a_full_queue_does_not_block_submit_forever_after_the_writer_died(quiet_thread_deaths):
    gate = threading.Event()
    written = []

    def write(key, value):
        if key == "first":
            gate.wait(5)
            raise _Killed()
        written.append(key)

    writer = BackgroundWriter(write, on_error=lambda key, error: None, max_queued=1)
    writer.submit("first", 1)
    threading.Timer(0.2, gate.set).start()
    started = time.perf_counter()
    writer.submit("second", 2)  # waits for room; the writer dies instead of making it
    assert time.perf_counter() - started < 5.0
    assert writer.flush(timeout=10)
    assert written == ["second"]


def test_predictions_from_many_threads_report_their_own_plane():
    segmenter = Segmenter(engine_loaded_model(seed=33))
    segmenter.set_volume(np.random.default_rng(1).integers(0, 255, (6, 24, 28), dtype=np.uint8))
    segmenter.embed_planes()
    wrong, errors = [], []

    def worker(plane: int) -> None:
        try:
            for _ in range(15):
                prediction = segmenter.predict(points=[(10, 12)], plane=plane)
                if prediction.plane != plane:
                    wrong.append((plane, prediction.plane))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(plane,)) for plane in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and not wrong
    assert segmenter.current_plane in range(6) and segmenter.encoder_calls == 6

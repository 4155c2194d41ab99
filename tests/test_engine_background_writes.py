"""Disk-cache writes on a background thread: order, pending reads, back-pressure, failures, exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vfmseg.engine import DiskCache, Embedding, Segmenter
from napari_vfmseg.engine.background_writes import BackgroundWriter

from _tiny_models import engine_loaded_model

TESTS = Path(__file__).parent


def _gated_writer(**kwargs):
    """A writer whose writes wait for ``gate`` and are recorded in ``done`` (in the order they ran)."""
    gate, done = threading.Event(), []

    def write(key, value):
        assert gate.wait(10)
        done.append((key, value))

    return BackgroundWriter(write, **kwargs), gate, done


def test_items_are_served_until_written_then_written_in_order():
    writer, gate, done = _gated_writer()
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        writer.submit(key, value)
    writer.submit("a", 99)  # already queued: not queued twice
    assert len(writer) == 3 and writer.pending("b") == 2 and writer.pending("z") is None
    assert writer.flush(timeout=0.05) is False  # the first write is still held at the gate
    gate.set()
    assert writer.flush(timeout=10)
    assert done == [("a", 1), ("b", 2), ("c", 3)]
    assert len(writer) == 0 and writer.pending("b") is None and writer.written == 3


def test_submit_blocks_while_the_queue_is_full():
    writer, gate, done = _gated_writer(max_queued=2)
    writer.submit("a", 1)
    writer.submit("b", 2)
    third = threading.Thread(target=writer.submit, args=("c", 3))
    third.start()
    third.join(timeout=0.2)
    assert third.is_alive() and writer.pending("c") is None  # waits for room, holds no third item
    gate.set()
    third.join(timeout=10)
    assert not third.is_alive()
    assert writer.flush(timeout=10) and [key for key, _ in done] == ["a", "b", "c"]


def test_a_failed_write_is_reported_and_the_others_still_land():
    written, errors = [], []

    def write(key, value):
        if key == "bad":
            raise OSError(28, "No space left on device")
        written.append(key)

    writer = BackgroundWriter(write, on_error=lambda key, error: errors.append((key, str(error))))
    for key in ("one", "bad", "two"):
        writer.submit(key, key)
    assert writer.flush(timeout=10)
    assert written == ["one", "two"]
    assert errors == [("bad", "[Errno 28] No space left on device")]
    assert writer.failed == 1 and writer.written == 2


def test_disk_cache_serves_a_queued_entry_as_the_disk_will_return_it(tmp_path):
    cache = DiskCache(tmp_path)
    gate = threading.Event()
    write_now = cache.put

    def slow_put(key, embedding):
        assert gate.wait(10)
        return write_now(key, embedding)

    cache.put = slow_put
    features = torch.linspace(-3, 3, 4 * 8 * 8).reshape(4, 8, 8) + 1e-4  # not exact in float16
    cache.put_later("k" * 64, Embedding(features, (30, 40), (24, 32)))
    assert "k" * 64 in cache and cache.queued == 1
    assert not cache.path("k" * 64).exists()
    queued = cache.get("k" * 64)
    assert queued.features.dtype == torch.float32 and queued.original_size == (30, 40)
    assert not torch.equal(queued.features, features)
    torch.testing.assert_close(queued.features, features.half().float(), rtol=0, atol=0)
    gate.set()
    assert cache.flush(timeout=10) and cache.queued == 0
    assert cache.path("k" * 64).is_dir()
    torch.testing.assert_close(cache.get("k" * 64).features, queued.features, rtol=0, atol=0)


def test_the_encoder_does_not_wait_for_the_disk(tmp_path):
    segmenter = Segmenter(engine_loaded_model(seed=12), cache_dir=tmp_path)
    gate = threading.Event()
    write_now = segmenter.disk.put

    def slow_put(key, embedding):
        assert gate.wait(10)
        return write_now(key, embedding)

    segmenter.disk.put = slow_put
    segmenter.set_volume(np.random.default_rng(3).integers(0, 255, (4, 20, 24), dtype=np.uint8))
    assert segmenter.embed_planes() == 4          # returns while no write has finished
    assert segmenter.disk.queued == 4
    assert all(segmenter.has_embedding(p) for p in range(4))
    assert segmenter.flush(timeout=0.05) is False
    gate.set()
    assert segmenter.flush(timeout=10)
    assert len(list((tmp_path / "embeddings-v1").glob("*/*.zarr"))) == 4
    fresh = Segmenter(engine_loaded_model(seed=12), cache_dir=tmp_path)
    fresh.set_volume(np.random.default_rng(3).integers(0, 255, (4, 20, 24), dtype=np.uint8))
    assert fresh.embed_planes() == 0 and fresh.stats.disk_hits == 4


@pytest.mark.parametrize("close", [False, True])
def test_queued_writes_land_before_the_process_exits(tmp_path, close):
    """A script that ends right after embedding still leaves every entry on disk (the interpreter
    waits for the writer thread; ``Segmenter.close()`` waits explicitly)."""
    script = textwrap.dedent(
        f"""
        import sys, time
        import numpy as np
        sys.path.insert(0, {str(TESTS)!r})
        from _tiny_models import engine_loaded_model
        from napari_vfmseg.engine import Segmenter
        segmenter = Segmenter(engine_loaded_model(seed=13), cache_dir={str(tmp_path)!r})
        write_now = segmenter.disk.put
        def slow_put(key, embedding):
            time.sleep(1.0)  # slower than an encoder call even on a loaded machine
            return write_now(key, embedding)
        segmenter.disk.put = slow_put
        segmenter.set_volume(np.random.default_rng(4).integers(0, 255, (3, 20, 24), dtype=np.uint8))
        segmenter.embed_planes()
        print(segmenter.disk.queued)
        if {close!r}:
            segmenter.close()
            print(segmenter.disk.queued)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.split()
    assert int(printed[0]) >= 2  # still queued when the script was done with the engine
    if close:
        assert printed[1] == "0"
    assert len(list((tmp_path / "embeddings-v1").glob("*/*.zarr"))) == 3
    assert not list((tmp_path / "embeddings-v1").glob("*/.*"))  # no temporary left behind


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() exists on POSIX only")
def test_a_forked_child_neither_writes_nor_waits_for_the_parent_s_queue():
    import multiprocessing

    writer, gate, done = _gated_writer()
    writer.submit("a", 1)
    writer.submit("b", 2)
    context = multiprocessing.get_context("fork")
    answers = context.Queue()

    def child():
        answers.put((len(writer), writer.flush(timeout=1.0)))

    process = context.Process(target=child)
    process.start()
    process.join(timeout=30)
    assert process.exitcode == 0  # it ended at once: its exit did not wait on a queue no thread drains
    assert answers.get(timeout=5) == (0, True)
    assert len(writer) == 2  # the parent's queue is untouched
    gate.set()
    assert writer.flush(timeout=10) and [key for key, _ in done] == ["a", "b"]

"""The disk cache is bounded (least recently used entries evicted), purgeable (all, or one scan's
entries) and reports the damaged entries it found (EngineStats, ``vfmseg info``, ``vfmseg cache``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from napari_vfmseg.cli import main
from napari_vfmseg.engine import Segmenter, cache_folder
from napari_vfmseg.engine.cache import scan_fingerprint

from _tiny_models import engine_loaded_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _entries(root: Path) -> list[Path]:
    return sorted((root / "embeddings-v1").glob("*/*.zarr"))


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (30, 40, 3), dtype=np.uint8) for _ in range(count)]


def test_sizes_parse_and_the_limit_comes_from_argument_environment_or_default(monkeypatch):
    assert cache_folder.parse_size("4G") == cache_folder.parse_size("4 GiB") == 4 * 1024**3
    assert cache_folder.parse_size("500MB") == 500 * 1024**2 and cache_folder.parse_size(1234) == 1234
    with pytest.raises(ValueError, match="not a size"):
        cache_folder.parse_size("lots")
    monkeypatch.delenv(cache_folder.MAX_BYTES_ENV, raising=False)
    assert cache_folder.configured_max_bytes() == cache_folder.DEFAULT_MAX_BYTES == 4 * 1024**3
    monkeypatch.setenv(cache_folder.MAX_BYTES_ENV, "2M")
    assert cache_folder.configured_max_bytes() == 2 * 1024**2
    assert cache_folder.configured_max_bytes("1K") == 1024  # the argument wins
    monkeypatch.setenv(cache_folder.MAX_BYTES_ENV, "-3G")
    with pytest.raises(ValueError, match=cache_folder.MAX_BYTES_ENV):
        cache_folder.configured_max_bytes()


def test_least_recently_used_entries_are_evicted_beyond_the_limit(tmp_path):
    model = engine_loaded_model(seed=41)
    images = _images(5)
    probe = Segmenter(model, cache_dir=tmp_path / "probe")
    probe.set_image(images[0])
    assert probe.flush()
    entry = cache_folder.entries(tmp_path / "probe")[0].bytes
    limit = int(3.5 * entry)  # room for three entries

    segmenter = Segmenter(model, cache_dir=tmp_path / "cache", cache_max_bytes=limit)
    keys = []
    for index, image in enumerate(images[:3]):
        segmenter.set_image(image)
        keys.append(segmenter._image.key)
        assert segmenter.flush()
        os.utime(segmenter.disk.path(keys[-1]), (1000.0 + index, 1000.0 + index))  # written in this order
    assert len(_entries(tmp_path / "cache")) == 3
    fresh = Segmenter(model, cache_dir=tmp_path / "cache", cache_max_bytes=limit)
    fresh.set_image(images[0])  # a disk hit makes the oldest entry the most recently used
    assert fresh.stats.disk_hits == 1
    fresh.set_image(images[3])
    assert fresh.flush()
    fresh.set_image(images[4])
    assert fresh.flush()
    left = {path.name[: -len(".zarr")] for path in _entries(tmp_path / "cache")}
    assert keys[1] not in left and keys[2] not in left  # the least recently used went first
    assert keys[0] in left and len(left) == 3
    assert sum(e.bytes for e in cache_folder.entries(tmp_path / "cache")) <= limit
    assert fresh.disk.evicted_entries == 2


def test_purge_one_scan_or_all_through_the_cli(tmp_path, monkeypatch, capsys):
    import SimpleITK as sitk

    home = tmp_path / "home"
    monkeypatch.setenv("VFMSEG_HOME", str(home))
    rng = np.random.default_rng(3)
    scans = {}
    for name in ("a", "b"):
        array = rng.integers(-200, 300, (3, 24, 28)).astype(np.int16)
        path = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        scans[name] = path
    from napari_vfmseg.io import read_volume

    model = engine_loaded_model(seed=42)
    segmenter = Segmenter(model, cache_dir=home)
    for name in ("a", "b"):
        volume = read_volume(scans[name]).array
        segmenter.set_volume(volume)
        segmenter.embed_planes()
        assert segmenter.flush()
    assert len(_entries(home)) == 6

    assert main(["cache", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["entries"] == 6 and shown["scans"] == 2 and shown["bytes"] > 0
    assert shown["location"] == str(home / "embeddings-v1") and "patient" in shown["contents"]

    assert main(["cache", "purge", "--scan", str(scans["a"]), "--json"]) == 0
    purged = json.loads(capsys.readouterr().out)
    assert purged["purged"]["entries"] == 3 and purged["entries"] == 3
    assert purged["purged"]["scan_fingerprint"] == scan_fingerprint(read_volume(scans["a"]).array)
    again = Segmenter(model, cache_dir=home)
    again.set_volume(read_volume(scans["b"]).array)
    assert again.embed_planes() == 0  # b's entries are still there

    assert main(["cache", "purge", "--all"]) == 0
    assert "purged 3 entries" in capsys.readouterr().out
    assert _entries(home) == []


def test_a_damaged_entry_is_counted_in_stats_info_and_cache(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("VFMSEG_HOME", str(home))
    model = engine_loaded_model(seed=43)
    image = _images(1, seed=9)[0]
    first = Segmenter(model, cache_dir=home)
    first.set_image(image)
    assert first.flush()
    (_entries(home)[0] / "zarr.json").write_text("{ not json")
    second = Segmenter(model, cache_dir=home)
    second.set_image(image)
    assert second.stats.damaged_entries == 1 and second.encoder_calls == 1
    assert second.stats.as_dict()["damaged_entries"] == 1
    assert second.flush()
    third = Segmenter(model, cache_dir=home)
    third.set_image(image)
    assert third.stats.damaged_entries == 0 and third.stats.disk_hits == 1  # the recomputed entry is good

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["embedding_cache"]["damaged_entries"] == 1 and info["embedding_cache"]["entries"] == 1
    assert main(["info"]) == 0
    assert "1 damaged found" in capsys.readouterr().out
    assert main(["cache"]) == 0
    assert "damaged found  1" in capsys.readouterr().out


def test_an_entry_removed_while_being_read_is_a_miss_not_damage(tmp_path):
    model = engine_loaded_model(seed=44)
    image = _images(1, seed=10)[0]
    writer = Segmenter(model, cache_dir=tmp_path)
    writer.set_image(image)
    assert writer.flush()
    reader = Segmenter(model, cache_dir=tmp_path)
    key = writer._image.key
    real_open = __import__("zarr").open_group

    def open_then_vanish(path, mode):
        group = real_open(path, mode=mode)
        cache_folder.remove_entry(Path(path))
        return group

    import zarr

    original = zarr.open_group
    zarr.open_group = open_then_vanish
    try:
        embedding, damaged = reader.disk.lookup(key)
    finally:
        zarr.open_group = original
    assert embedding is None and damaged is False and reader.disk.damaged_entries == 0

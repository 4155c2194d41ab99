"""Embedding cache: memory LRU, content keys, zarr disk entries, corruption, reuse across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vfmseg.engine import DiskCache, Embedding, MemoryCache, Segmenter, embedding_key
from napari_vfmseg.engine.cache import default_memory_bytes

from _tiny_models import engine_loaded_model

TESTS = Path(__file__).parent


def embedding(value: float, channels: int = 4, side: int = 8) -> Embedding:
    return Embedding(torch.full((channels, side, side), value), (30, 40), (24, 32))


def test_memory_lru_is_bounded_in_bytes():
    one = embedding(1.0).nbytes  # 4 * 8 * 8 * 4 bytes
    assert one == 1024
    cache = MemoryCache(max_bytes=2 * one)
    cache.put("a", embedding(1.0))
    cache.put("b", embedding(2.0))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", embedding(3.0))
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 2 * one and len(cache) == 2
    cache.put("huge", Embedding(torch.zeros(100, 8, 8), (8, 8), (8, 8)))  # larger than the budget
    assert "huge" not in cache and len(cache) == 2
    cache.put("a", embedding(4.0))  # replacing keeps the byte count right
    assert cache.nbytes == 2 * one and float(cache.get("a").features[0, 0, 0]) == 4.0


def test_default_memory_budget_is_bounded():
    budget = default_memory_bytes()
    assert 64 * 1024**2 <= budget <= 2 * 1024**3
    assert MemoryCache().max_bytes == budget


def test_key_depends_on_pixels_window_model_numerics_and_convention():
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    base = dict(window=(40.0, 400.0), encoder_size=1024, model_key="abc", numerics="fp32")
    key = embedding_key(pixels, **base)
    assert key == embedding_key(pixels.copy(), **base)
    assert len(key) == 64
    other_pixels = pixels.copy()
    other_pixels[0, 0] = 1
    variants = [
        embedding_key(other_pixels, **base),
        embedding_key(pixels.reshape(4, 3), **base),
        embedding_key(pixels, **{**base, "window": (-600.0, 1500.0)}),
        embedding_key(pixels, **{**base, "window": None}),
        embedding_key(pixels, **{**base, "encoder_size": 512}),
        embedding_key(pixels, **{**base, "model_key": "abc+adapter1"}),
        embedding_key(pixels, **{**base, "numerics": "int8"}),
        embedding_key(pixels, **base, preprocess="medsam"),
    ]
    assert len(set(variants + [key])) == len(variants) + 1


def test_disk_entry_round_trip_is_float16_with_sizes(tmp_path):
    cache = DiskCache(tmp_path)
    features = torch.randn(8, 16, 16, generator=torch.Generator().manual_seed(0))
    size = cache.put("ab" * 32, Embedding(features, (300, 200), (256, 171)))
    loaded = cache.get("ab" * 32)
    assert loaded.original_size == (300, 200) and loaded.input_size == (256, 171)
    assert loaded.features.dtype == torch.float32
    torch.testing.assert_close(loaded.features, features.half().float(), rtol=0, atol=0)
    assert 0 < size < 8 * 16 * 16 * 2 + 4096  # float16 data plus small metadata
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary left behind
    assert leftovers == []
    assert cache.get("cd" * 32) is None


def _only_entry(cache_dir: Path) -> Path:
    entries = list((cache_dir / "embeddings-v1").glob("*/*.zarr"))
    assert len(entries) == 1
    return entries[0]


def _chunk_file(entry: Path) -> Path:
    chunks = [p for p in (entry / "features").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunks) == 1
    return chunks[0]


@pytest.mark.parametrize("damage", ["truncate chunk", "flip a byte", "wrong checksum", "no metadata"])
def test_damaged_disk_entry_is_recomputed_never_served(tmp_path, damage):
    model = engine_loaded_model(seed=3)
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    first = Segmenter(model, cache_dir=tmp_path)
    reference = first.set_image(image)
    assert first.encoder_calls == 1
    assert first.flush()  # written on a background thread
    entry = _only_entry(tmp_path)
    chunk = _chunk_file(entry)
    if damage == "truncate chunk":
        data = chunk.read_bytes()
        chunk.write_bytes(data[: len(data) // 2])
    elif damage == "flip a byte":
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    elif damage == "wrong checksum":
        meta_path = entry / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["attributes"]["sha256"] = "0" * 64
        meta_path.write_text(json.dumps(meta))
    else:
        (entry / "zarr.json").unlink()

    second = Segmenter(model, cache_dir=tmp_path)
    recomputed = second.set_image(image)
    assert second.encoder_calls == 1 and second.stats.disk_hits == 0
    assert second.disk.corrupt_entries == 1
    torch.testing.assert_close(recomputed.features, reference.features)
    second.flush()
    third = Segmenter(model, cache_dir=tmp_path)  # the rewritten entry is good again
    third.set_image(image)
    assert third.encoder_calls == 0 and third.stats.disk_hits == 1 and third.disk.corrupt_entries == 0


def test_memory_then_disk_hits_and_adapter_invalidation(tmp_path):
    model = engine_loaded_model(seed=4)
    image = np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    segmenter = Segmenter(model, cache_dir=tmp_path)
    segmenter.set_image(image)
    segmenter.set_image(image)
    assert segmenter.encoder_calls == 1 and segmenter.stats.memory_hits == 1
    segmenter.flush()

    fresh = Segmenter(model, cache_dir=tmp_path)
    from_disk = fresh.set_image(image)
    assert fresh.encoder_calls == 0 and fresh.stats.disk_hits == 1
    ours = fresh.predict(points=[(16, 20)])
    exact = segmenter.predict(points=[(16, 20)])
    assert (ours.mask == exact.mask).mean() > 0.99  # float16 storage, same masks
    assert from_disk.features.dtype == torch.float32

    adapted = engine_loaded_model(seed=4, adapter_fingerprint="lora-1234")
    assert adapted.cache_key != model.cache_key
    with_adapter = Segmenter(adapted, cache_dir=tmp_path)
    with_adapter.set_image(image)
    assert with_adapter.encoder_calls == 1 and with_adapter.stats.disk_hits == 0
    with_adapter.flush()
    assert len(list((tmp_path / "embeddings-v1").glob("*/*.zarr"))) == 2


def test_small_memory_budget_still_serves_from_disk(tmp_path):
    model = engine_loaded_model(seed=5)
    segmenter = Segmenter(model, cache_dir=tmp_path, memory_bytes=0)
    volume = np.random.default_rng(2).integers(0, 255, (3, 20, 24), dtype=np.uint8)
    segmenter.set_volume(volume)
    assert segmenter.embed_planes() == 3
    assert len(segmenter.memory) == 0
    segmenter.predict(points=[(5, 5)], plane=1)
    assert segmenter.encoder_calls == 3 and segmenter.stats.disk_hits == 1


def test_new_process_reuses_the_disk_cache_without_encoding(tmp_path):
    volume = np.random.default_rng(6).normal(0, 300, (4, 30, 26)).astype(np.int16)
    np.save(tmp_path / "volume.npy", volume)
    cache_dir = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(TESTS)!r})
        from _tiny_models import engine_loaded_model
        from napari_vfmseg.engine import Segmenter
        segmenter = Segmenter(engine_loaded_model(seed=7), cache_dir={str(cache_dir)!r})
        segmenter.set_volume(np.load({str(tmp_path / "volume.npy")!r}), axis=1, window="soft_tissue")
        segmenter.embed_planes()
        mask = segmenter.predict(points=[(2, 10)], plane=5).mask
        print(json.dumps({{"encoder_calls": segmenter.encoder_calls, "disk_hits": segmenter.stats.disk_hits,
                           "mask_sum": int(mask.sum())}}))
        """
    )
    first = Segmenter(engine_loaded_model(seed=7), cache_dir=cache_dir)
    first.set_volume(volume, axis=1, window="soft_tissue")
    assert first.embed_planes() == 30
    assert first.flush()
    expected_mask = first.predict(points=[(2, 10)], plane=5).mask
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["encoder_calls"] == 0
    assert report["disk_hits"] == 30
    assert abs(report["mask_sum"] - int(expected_mask.sum())) <= 0.01 * expected_mask.size


# --------------------------------------------------------------------------------------------- CLI


def _tiny_volume_file(tmp_path: Path) -> Path:
    import SimpleITK as sitk

    volume = np.random.default_rng(8).normal(0, 200, (3, 24, 20)).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.8, 2.5))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def test_cli_embed_fills_the_cache_once(tmp_path, monkeypatch, capsys):
    import napari_vfmseg.models as models
    from napari_vfmseg.cli import main

    requested = []

    def fake_load_model(name, device="auto", **kwargs):  # the registry is another module's business
        requested.append((name, device))
        return engine_loaded_model(seed=10)

    monkeypatch.setattr(models, "load_model", fake_load_model)
    volume_path = _tiny_volume_file(tmp_path)
    cache_dir = tmp_path / "cache"
    argv = ["embed", str(volume_path), "--model", "tiny", "--cache-dir", str(cache_dir), "--window", "40,400", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert requested == [("tiny", "auto")]
    assert first["planes"] == 3 and first["encoded"] == 3 and first["from_cache"] == 0
    assert first["window"] == {"level": 40.0, "width": 400.0, "name": "custom"}
    assert len(list((cache_dir / "embeddings-v1").glob("*/*.zarr"))) == 3

    assert main(argv + ["--axis", "0"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["encoded"] == 0 and second["from_cache"] == 3

    assert main(argv[:-1] + ["--axis", "2"]) == 0  # progress-bar mode, other axis: 20 new planes
    out = capsys.readouterr().out
    assert "20 planes along axis 2: 20 encoded, 0 already cached" in out

    assert main(["embed", str(volume_path), "--cache-dir", str(cache_dir), "--window", "40,-1"]) == 2
    assert "--window '40,-1': the width must be > 0" in capsys.readouterr().err


def test_bench_quick_reports_equivalence_and_cache_figures(capsys):
    from napari_vfmseg.cli import main

    assert main(["bench", "--quick", "--prompts", "50", "--accelerations", "int8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(lines[-1])
    assert any(line.startswith("click p50 (ms)") for line in lines)
    assert record["prompts"] == 50 and record["slices"] == 2
    assert record["mask_pixel_agreement_min"] >= 0.999
    assert record["score_abs_diff_max"] < 1e-4
    assert record["embedding_cosine_min"] > 0.9999
    assert record["memory_bytes_per_slice"] == 64 * 16 * 16 * 4
    assert 0 < record["disk_bytes_per_slice"] < 64 * 16 * 16 * 2 + 4096
    assert record["click_p50_ms_ours"] > 0 and record["click_ratio_p50"] > 0
    assert set(record["accelerations"]) == {"int8"}
    assert 0.0 <= record["accelerations"]["int8"]["iou_min"] <= 1.0


def test_a_failed_disk_write_warns_and_the_prediction_goes_on(tmp_path, monkeypatch):
    model = engine_loaded_model(seed=11)
    segmenter = Segmenter(model, cache_dir=tmp_path)

    def full_disk(key, embedding):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segmenter.disk, "put", full_disk)
    with pytest.warns(UserWarning, match="No space left on device"):
        segmenter.set_image(np.zeros((20, 20, 3), dtype=np.uint8))
        segmenter.flush()  # the write, and its failure, happen on the background thread
    assert segmenter.predict(points=[(5, 5)]).mask.shape == (20, 20)
    assert segmenter.encoder_calls == 1


def test_a_miss_does_not_import_zarr(tmp_path):
    """The first click of a session on a new folder goes straight to the encoder: importing zarr
    (about a quarter of a second) is left to the writer thread."""
    script = (
        "import sys\n"
        "from napari_vfmseg.engine import DiskCache\n"
        f"cache = DiskCache({str(tmp_path)!r})\n"
        "assert cache.get('0' * 64) is None and '0' * 64 not in cache\n"
        "print('zarr' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"

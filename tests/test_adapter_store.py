"""The project folder of adapter versions: index, activation, rollback, replay buffer, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vfmseg.training.adapter_store import AdapterStore, AdapterStoreError, example_key
from napari_vfmseg.training.adapters import AdapterError, AdapterInfo, active_adapter
from napari_vfmseg.training.data import LabelledImage

from _tiny_models import tiny_loaded_model

TENSOR = "mask_decoder.iou_token.weight"


@pytest.fixture(scope="module")
def model():
    return tiny_loaded_model(seed=3)


def _adapter(model, value: float, mode: str = "decoder"):
    """A decoder adapter that sets the IoU token to ``value`` everywhere."""
    base = model.sam.state_dict()[TENSOR]
    info = AdapterInfo(base_fingerprint=model.fingerprint, mode=mode, base_name=model.name, base_arch=model.arch)
    return {TENSOR: torch.full_like(base, value)}, info


def _plane(seed: int, size: int = 24, plane: int = 0) -> LabelledImage:
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    labels[4:14, 5:15] = 1
    return LabelledImage(rng.integers(0, 255, (size, size), dtype=np.uint8), labels, plane, f"vol plane {plane}")


def test_add_lists_versions_with_their_record_and_files(tmp_path, model):
    store = AdapterStore(tmp_path / "project")
    assert store.versions() == [] and store.next_name() == "v001"
    assert not (tmp_path / "project").exists()            # nothing is created before the first save
    tensors, info1 = _adapter(model, 0.5)
    v1 = store.add(tensors, info1, dice_before=0.41, dice_after=0.66, guard_before=0.7, guard_after=0.69,
                   n_planes=14, n_examples=30, steps=100)
    tensors, info = _adapter(model, -0.5, mode="encoder-lora")
    v2 = store.add(tensors, info, parent="v001", dice_before=0.66, dice_after=0.71)
    assert [v.name for v in store.versions()] == ["v001", "v002"] and store.next_name() == "v003"
    again = AdapterStore(tmp_path / "project").get("v001")   # read back from the index on disk
    assert (again.dice_before, again.dice_after, again.guard_after, again.n_planes, again.n_examples) == (0.41, 0.66, 0.69, 14, 30)
    assert again.base_fingerprint == model.fingerprint and again.base_name == model.name and again.mode == "decoder"
    assert again.created.startswith("20") and again.adapter_fingerprint == info1.fingerprint != info.fingerprint
    assert v2.parent == "v001" and v2.changes_encoder and not v1.changes_encoder
    assert (tmp_path / "project" / v1.file).is_file() and store.adapter_path("v002").name == "v002.safetensors"
    index = json.loads((tmp_path / "project" / "adapters.json").read_text())
    assert index["format"] == "napari-vfmseg-adapter-store" and len(index["versions"]) == 2
    assert "0.410→0.660" in v1.describe() and "encoder-lora" in v2.describe()
    assert store.versions(base_fingerprint="other") == []
    with pytest.raises(AdapterStoreError, match="v009"):
        store.get("v009")
    with pytest.raises(AdapterStoreError, match="exists already"):
        store.add(*_adapter(model, 1.0), name="v001")
    with pytest.raises(AdapterStoreError, match="no adapter version 'v007'"):
        store.add(*_adapter(model, 1.0), parent="v007")


def test_activate_rollback_and_apply_restore_exact_weights(tmp_path, model):
    store = AdapterStore(tmp_path)
    base = model.sam.state_dict()[TENSOR].clone()
    store.add(*_adapter(model, 0.25))
    store.add(*_adapter(model, 0.75), parent="v001")
    fp = model.fingerprint
    assert store.active_name(fp) is None
    store.activate("v001")
    store.activate("v002", fp)
    assert store.active_name(fp) == "v002"
    store.apply(model, "v002")
    assert torch.all(model.sam.state_dict()[TENSOR] == 0.75) and active_adapter(model).fingerprint == store.get("v002").adapter_fingerprint
    assert store.find_by_fingerprint(active_adapter(model).fingerprint).name == "v002"
    assert store.rollback(fp).name == "v001" and store.active_name(fp) == "v001"   # to the parent
    assert store.rollback(fp) is None and store.active_name(fp) is None            # v001 came from the base
    with pytest.raises(AdapterStoreError, match="nothing to roll back"):
        store.rollback(fp)
    assert store.rollback(fp, to="v002").name == "v002"
    assert [e["active"] for e in store.history()] == ["v001", "v002", "v001", None, "v002"]
    store.apply(model, None)
    assert torch.equal(model.sam.state_dict()[TENSOR], base) and active_adapter(model) is None
    with pytest.raises(AdapterStoreError, match="not on"):
        store.activate("v001", "0123456789abcdef")
    other = tiny_loaded_model(seed=4)
    with pytest.raises(AdapterError, match=other.fingerprint):
        store.apply(other, "v001")
    assert active_adapter(other) is None


def test_replay_buffer_keeps_roles_and_newest_labels_without_pickle(tmp_path, model):
    store = AdapterStore(tmp_path)
    planes = [_plane(i, plane=i) for i in range(4)]
    store.add(*_adapter(model, 0.1), examples=planes, roles=["train", "train", "held_out", "train"])
    assert len(store.replay_examples("train")) == 3 and len(store.replay_examples("held_out")) == 1
    # The replay file is plain arrays: it loads with pickle disabled, and nothing in it is an object array.
    with np.load(tmp_path / store.get("v001").replay_file, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
        assert data["image_0"].dtype == np.uint8 and data["labels_0"].dtype == np.int32
    corrected = LabelledImage(planes[2].image, planes[2].labels * 2, 2, "vol plane 2")   # same pixels, new labels
    store.add(*_adapter(model, 0.2), examples=[planes[0], corrected], roles=["train", "train"])
    known = store.known_examples()
    assert len(known) == 4                                                  # plane 0 was not stored twice
    entry = known[example_key(planes[2].image)]
    assert entry[1] == "held_out" and entry[0].labels.max() == 2          # first role, newest labels
    stored = store.get("v002").replay_file
    with np.load(tmp_path / stored, allow_pickle=False) as data:
        assert json.loads(str(data["meta"]))[0]["plane"] == 2 and len(json.loads(str(data["meta"]))) == 1
    kept = store.replay_examples("train", exclude=[example_key(planes[0].image)])
    assert sorted(p.plane for p in kept) == [1, 3]
    assert len(store.replay_examples("train", limit=2, seed=1)) == 2
    with pytest.raises(ValueError, match="roles"):
        store.add(*_adapter(model, 0.3), examples=planes[:2], roles=["train"])


def test_a_failed_write_leaves_no_visible_version(tmp_path, model, monkeypatch):
    store = AdapterStore(tmp_path)
    store.add(*_adapter(model, 0.1))
    before = (tmp_path / "adapters.json").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    # 1. The index cannot be written: adapter and replay files exist, but no version is listed.
    monkeypatch.setattr(AdapterStore, "_write_index", broken)
    with pytest.raises(OSError, match="disk full"):
        store.add(*_adapter(model, 0.2), examples=[_plane(9)], roles=["train"])
    monkeypatch.undo()
    assert (tmp_path / "adapters" / "v002.safetensors").is_file() and (tmp_path / "replay" / "v002.npz").is_file()
    assert (tmp_path / "adapters.json").read_bytes() == before and [v.name for v in store.versions()] == ["v001"]
    assert store.replay_examples("train") == []              # the orphan replay file is not read either
    assert store.next_name() == "v003"                        # an orphan's name is never reused
    # 2. No rename succeeds: nothing half-written remains, not even a temporary file.
    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        store.add(*_adapter(model, 0.3), examples=[_plane(8)], roles=["train"])
    monkeypatch.undo()
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "adapters" / "v003.safetensors").exists()
    assert (tmp_path / "adapters.json").read_bytes() == before
    assert store.add(*_adapter(model, 0.4)).name == "v003" and len(store.versions()) == 2


def test_bad_index_files_are_named_in_the_error(tmp_path):
    (tmp_path / "adapters.json").write_text("{not json")
    with pytest.raises(AdapterStoreError, match="adapters.json"):
        AdapterStore(tmp_path).versions()
    (tmp_path / "adapters.json").write_text(json.dumps({"format": "napari-vfmseg-adapter-store", "version": 99,
                                                        "versions": []}))
    with pytest.raises(AdapterStoreError, match="newer"):
        AdapterStore(tmp_path).versions()
    (tmp_path / "file").write_text("x")
    with pytest.raises(AdapterStoreError, match="not a folder"):
        AdapterStore(tmp_path / "file")


def test_swap_puts_the_previous_adapter_back_when_the_new_one_fails(tmp_path, model):
    store = AdapterStore(tmp_path)
    base = model.sam.state_dict()[TENSOR].clone()
    store.add(*_adapter(model, 0.25))
    store.add(*_adapter(model, -0.5, mode="encoder-lora"), parent="v001")
    store.add(*_adapter(model, 0.9))
    try:
        assert store.swap(model, "v001") is False                      # decoder only: embeddings stay valid
        assert torch.all(model.sam.state_dict()[TENSOR] == 0.25)
        assert store.swap(model, "v002") is True                       # the new one changes the encoder
        assert store.swap(model, "v001") is True                       # ... and so did the old one
        (tmp_path / store.get("v003").file).write_bytes(b"not a safetensors file")
        with pytest.raises(AdapterError):
            store.swap(model, "v003")
        assert active_adapter(model).fingerprint == store.get("v001").adapter_fingerprint   # exactly as before
        assert torch.all(model.sam.state_dict()[TENSOR] == 0.25)
        other = tiny_loaded_model(seed=4)
        with pytest.raises(AdapterError, match=other.fingerprint):     # a foreign adapter: still the base model
            store.swap(other, "v001")
        assert active_adapter(other) is None
        assert store.swap(model, None) is False and active_adapter(model) is None
        assert torch.equal(model.sam.state_dict()[TENSOR], base)
    finally:
        store.apply(model, None)


def test_concurrent_activations_and_adds_keep_every_index_update(tmp_path, model):
    import threading

    stores = [AdapterStore(tmp_path), AdapterStore(tmp_path)]          # two objects, one project folder
    stores[0].add(*_adapter(model, 0.1))
    fp = model.fingerprint
    errors = []

    def flip(store, rounds=15):
        try:
            for i in range(rounds):
                store.activate("v001" if i % 2 else None, fp)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(stores[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(stores[1].history()) == 4 * 15                          # no read-modify-write lost an event


def test_replayed_planes_keep_their_pixel_proportions_and_slice_spacing(tmp_path, model):
    store = AdapterStore(tmp_path)
    plane = _plane(7, plane=3)
    thick = LabelledImage(plane.image, plane.labels, 3, "ct plane 3", pixel_aspect=1.25, slice_ratio=8.0)
    store.add(*_adapter(model, 0.1), examples=[thick], roles=["train"])
    (replayed,) = store.replay_examples("train")
    assert replayed.pixel_aspect == 1.25 and replayed.slice_ratio == 8.0   # trained again as the engine sees it

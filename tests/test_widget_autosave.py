"""Committed objects survive a crash: autosaved atomically per scan (keyed by its pixels) and
offered back, with their names, when the same scan is opened again; restoring is one undoable edit."""

from __future__ import annotations

import numpy as np
import pytest

from _tiny_models import synthetic_volume, tiny_loaded_model
from napari_vfmseg.annotation.autosave import AutosaveStore, restore_into, scan_key
from napari_vfmseg.annotation.objects import ObjectRecord, colour_for
from napari_vfmseg.annotation.session import AnnotationSession
from napari_vfmseg.widgets.annotator import AnnotatorWidget

TIMEOUT = 10_000
GEOMETRY = {"spacing": [2.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0], "direction": np.eye(3).tolist()}


def _records(*ids):
    return [ObjectRecord(i, f"organ {i}", colour_for(i), visible=i % 2 == 1) for i in ids]


def test_store_round_trip_crops_and_keeps_the_newest_snapshot(tmp_path):
    store = AutosaveStore(tmp_path)
    labels = np.zeros((6, 40, 50), np.uint16)
    labels[2:4, 10:20, 30:45] = 3
    labels[5, 0, 0] = 1
    key = scan_key(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    assert key == scan_key(np.arange(24, dtype=np.int16).reshape(2, 3, 4)) != scan_key(np.arange(24, dtype=np.int32))
    path = store.save(key, labels, _records(1, 3), {"image": "ct"}, sequence=2)
    entry = AutosaveStore(tmp_path).load(key)
    np.testing.assert_array_equal(entry.labels, labels)
    assert entry.labels.dtype == np.uint16 and entry.meta == {"image": "ct"} and entry.saved.startswith("20")
    assert [(r.id, r.name, r.visible) for r in entry.records] == [(1, "organ 1", True), (3, "organ 3", True)]
    older = labels.copy()
    older[:] = 0
    older[0, 0, 0] = 1
    assert store.save(key, older, _records(1), sequence=1) is None        # an older snapshot never wins
    np.testing.assert_array_equal(store.load(key).labels, labels)
    with np.load(path, allow_pickle=False) as data:                        # plain arrays, cropped to the objects
        assert data["labels"].shape == (4, 20, 45) and data["labels"].dtype == np.uint16
    assert store.save(key, np.zeros_like(labels), [], sequence=3) is None and store.load(key) is None   # nothing left
    with pytest.raises(ValueError, match="invalid autosave key"):
        store.path("../escape")


def test_a_failed_or_damaged_write_keeps_the_previous_copy_and_names_the_file(tmp_path, monkeypatch):
    store = AutosaveStore(tmp_path)
    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 2:5] = 1
    store.save("ab12", labels, _records(1))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        store.save("ab12", labels * 2, _records(2), sequence=5)
    monkeypatch.undo()
    np.testing.assert_array_equal(store.load("ab12").labels, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ab12.npz"]     # no temporary file left behind
    (tmp_path / "ab12.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="ab12.npz"):
        store.load("ab12")


def test_restore_into_a_session_is_one_undoable_edit():
    session = AnnotationSession((4, 16, 16), GEOMETRY)
    session.labels[0, 0:2, 0:2] = 1
    session.labels_edited()
    saved = np.zeros((4, 16, 16), np.uint16)
    saved[1:3, 4:9, 4:9] = 2
    saved[3, 10:12, 10:12] = 5
    entry = type("Entry", (), {"labels": saved, "records": _records(2, 5)})()
    edit = restore_into(session, entry)
    np.testing.assert_array_equal(session.labels, saved)
    assert [(r.id, r.name, r.voxels) for r in session.table.records()] == [(2, "organ 2", 50), (5, "organ 5", 4)]
    assert edit is not None and session.undo() is edit
    assert int(session.labels[0, 0:2, 0:2].sum()) == 4 and int(session.labels.sum()) == 4
    assert [r.id for r in session.table.records()] == [1]
    with pytest.raises(ValueError, match="shape"):
        restore_into(session, type("Entry", (), {"labels": saved[:2], "records": []})())


@pytest.fixture(scope="module")
def model():
    return tiny_loaded_model(seed=3)


def test_viewer_autosaves_commits_and_offers_them_when_the_scan_is_opened_again(make_napari_viewer, qtbot, model, tmp_path):
    from napari.utils.notifications import notification_manager

    image, _ = synthetic_volume(planes=6, size=64, seed=2)
    viewer = make_napari_viewer(show=False)
    viewer.add_image(image, name="first")
    viewer.dims.set_current_step(0, 3)
    widget = AnnotatorWidget(viewer, autoload=False, autosave=tmp_path / "autosave")
    dock = viewer.window.add_dock_widget(widget)
    widget.use_model(model, cache_dir=None)
    qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy, timeout=TIMEOUT)
    assert widget.autosave_offer is None
    widget.add_box((12.0, 8.0, 40.0, 38.0))
    qtbot.waitUntil(lambda: not widget.busy and widget.session.mask(widget.current_plane()) is not None, timeout=TIMEOUT)
    record = widget.commit("tumour")
    key = scan_key(image)
    qtbot.waitUntil(lambda: (tmp_path / "autosave" / f"{key}.npz").is_file(), timeout=TIMEOUT)   # on its own, soon
    widget.rename_object(record.id, "lesion A")
    committed = widget.session.labels.copy()
    viewer.window.remove_dock_widget(dock)          # closing writes the latest state (the rename) at once
    assert AutosaveStore(tmp_path / "autosave").load(key).records[0].name == "lesion A"

    # "after a crash": a new viewer, the same pixels under another name, no objects layer
    notification_manager.records.clear()
    again_viewer = make_napari_viewer(show=False)
    again_viewer.add_image(image.copy(), name="reopened")
    again = AnnotatorWidget(again_viewer, autoload=False, autosave=tmp_path / "autosave")
    again_dock = again_viewer.window.add_dock_widget(again)
    try:
        assert again.autosave_offer is not None and int(again.session.labels.max()) == 0
        offers = [n for n in notification_manager.records if "autosaved object" in str(n.message)]
        assert offers and [name for name, _ in offers[-1].actions] == ["Restore"]
        qtbot.wait(1500)                             # the offer is not overwritten by an empty autosave
        assert AutosaveStore(tmp_path / "autosave").load(key) is not None
        offers[-1].actions[0][1]()                   # the notification's Restore button
        np.testing.assert_array_equal(again.session.labels, committed)
        np.testing.assert_array_equal(again_viewer.layers["reopened objects"].data, committed)
        assert [r.name for r in again.session.table.records()] == ["lesion A"]
        assert again.autosave_offer is None and again.restore_autosave() is None   # once only
        again.undo()
        assert int(again.session.labels.max()) == 0 and len(again.session.table) == 0
    finally:
        again_viewer.window.remove_dock_widget(again_dock)

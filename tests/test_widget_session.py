"""The annotator's Qt-free core: prompts per plane, preview, commits, undo/redo, object table, export."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from napari_vfmseg.io import read_volume
from napari_vfmseg.annotation.history import EditHistory, LabelEdit
from napari_vfmseg.annotation.objects import ObjectTable, colour_for
from napari_vfmseg.annotation.planes import Plane, intersection_line, plane_axes, plane_region
from napari_vfmseg.annotation.prompts import PlanePrompts, clip_box, point_inside
from napari_vfmseg.annotation.session import AnnotationSession, object_table_paths

GEOMETRY = {"spacing": (2.0, 0.5, 0.8), "origin": (10.0, -5.0, 3.0), "direction": np.eye(3)}


def _prediction(mask, logits=None, score=0.9):
    return SimpleNamespace(mask=np.asarray(mask, bool), logits=logits, score=score)


def _disk(shape, centre, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


class RecordingPredictor:
    """Returns a disk under the first point or box centre; records every call."""

    def __init__(self, plane_shape):
        self.plane_shape = plane_shape
        self.calls = []

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask=None, plane=None):
        self.calls.append({"points": points, "labels": point_labels, "box": box, "mask_input": mask_input, "plane": plane})
        centre = points[0] if points is not None else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        return _prediction(_disk(self.plane_shape, centre, 3), logits=np.full((8, 8), float(len(self.calls))))


def test_plane_axes_and_regions_follow_np_take():
    volume = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    for axis in range(3):
        plane = Plane(axis, 2)
        rows, cols = plane_axes(3, axis)
        taken = np.take(volume, 2, axis=axis)
        np.testing.assert_array_equal(volume[plane_region(3, plane)], taken)
        assert taken.shape == (volume.shape[rows], volume.shape[cols])
    with pytest.raises(ValueError):
        plane_axes(3, None)
    with pytest.raises(ValueError):
        plane_axes(2, 1)


def test_intersection_line_is_where_two_planes_cross():
    shape = (4, 5, 6)
    volume = np.zeros(shape, bool)
    source, target = Plane(0, 1), Plane(2, 3)
    mask = np.random.default_rng(0).random((5, 6)) > 0.5
    volume[1] = mask
    index, line = intersection_line(mask, source, target)
    view = np.zeros((4, 5), bool)
    view[index] = line
    np.testing.assert_array_equal(view, volume[:, :, 3])
    assert intersection_line(mask, source, Plane(0, 2)) is None


def test_prompts_extend_and_geometry_checks():
    first = PlanePrompts.build([(3, 4)], [1], (1, 1, 8, 9))
    second = PlanePrompts.build([(3, 4), (5, 5)], [1, 0], (1, 1, 8, 9))
    assert second.extends(first) and not first.extends(second)
    assert not PlanePrompts.build([(5, 5), (3, 4)], [0, 1], (1, 1, 8, 9)).extends(first)
    assert not PlanePrompts.build([(3, 4), (5, 5)], [1, 0], (1, 1, 8, 8)).extends(first)
    assert not PlanePrompts.build([(1, 1)], [0]).has_object_prompt
    with pytest.raises(ValueError):
        PlanePrompts.build([(1, 1)], [2])
    assert point_inside((-0.5, 9.5), (10, 10)) and not point_inside((10.0, 0), (10, 10))
    assert clip_box((8, 12, -3, 2), (10, 10)) == (-0.5, 2.0, 8.0, 9.5)
    assert clip_box((20, 20, 30, 30), (10, 10)) is None


def test_correction_click_feeds_previous_logits_and_stale_results_are_dropped():
    session = AnnotationSession((6, 20, 30), GEOMETRY)
    predictor = RecordingPredictor((20, 30))
    plane = Plane(0, 2)
    assert session.set_axis_prompts(0, {2: PlanePrompts.build(box=(2, 3, 12, 15))}) == [plane]
    first = session.request(plane)
    assert first.mask_input is None
    assert session.accept(first, first.run(predictor))
    assert predictor.calls[-1]["plane"] == 2
    np.testing.assert_array_equal(predictor.calls[-1]["box"], (2, 3, 12, 15))

    session.set_axis_prompts(0, {2: PlanePrompts.build([(7, 9)], [1], (2, 3, 12, 15))})
    second = session.request(plane)
    np.testing.assert_array_equal(second.mask_input, np.full((8, 8), 1.0))   # the first mask's logits
    # prompts change again before the answer arrives: that answer is stale and ignored
    session.set_axis_prompts(0, {2: PlanePrompts.build([(7, 9), (3, 3)], [1, 0], (2, 3, 12, 15))})
    assert not session.accept(second, second.run(predictor))
    np.testing.assert_array_equal(session.preview[2].astype(bool), _disk((20, 30), (7, 9), 3))  # still the first mask
    # a new model: earlier logits are not fed back
    session.invalidate()
    assert session.request(plane).mask_input is None


class ThreeReadings:
    """A single click has three masks (disks of radius 2, 4, 6), the second scoring best."""

    scores = np.array([0.5, 0.9, 0.7])

    def __init__(self, plane_shape):
        self.plane_shape = plane_shape
        self.calls = []

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask=None, plane=None,
                candidate=None):
        self.calls.append(candidate)
        centre = points[0] if points is not None else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        several = points is not None and len(points) == 1 and box is None and mask_input is None
        scores = self.scores if several else self.scores[:1]
        index = (int(np.argmax(scores)) if candidate is None else candidate) if several else 0
        return SimpleNamespace(mask=_disk(self.plane_shape, centre, 2 + 2 * index), logits=np.full((8, 8), float(index)),
                               score=float(scores[index]), index=index, candidate_scores=scores)


def test_next_candidate_cycles_through_a_single_clicks_masks():
    session = AnnotationSession((6, 20, 30), GEOMETRY)
    predictor = ThreeReadings((20, 30))
    plane = Plane(0, 2)
    assert session.next_candidate_request(plane) is None and session.candidate_of(plane) is None
    session.set_axis_prompts(0, {2: PlanePrompts.build([(10, 15)], [1])})
    first = session.request(plane)
    assert first.candidate is None
    assert session.accept(first, first.run(predictor))
    assert session.candidate_of(plane) == (2, 3)  # the best-scoring one is shown first
    shown = []
    for _ in range(3):
        request = session.next_candidate_request(plane)
        assert request.mask_input is None
        assert session.accept(request, request.run(predictor))
        shown.append(session.candidate_of(plane))
        np.testing.assert_array_equal(session.preview[2].astype(bool), _disk((20, 30), (10, 15), 2 + 2 * (shown[-1][0] - 1)))
    assert shown == [(3, 3), (1, 3), (2, 3)] and predictor.calls == [None, 2, 0, 1]
    # a correction click feeds back the logits of the mask on screen, and has one mask only
    session.set_axis_prompts(0, {2: PlanePrompts.build([(10, 15), (3, 3)], [1, 0])})
    correction = session.request(plane)
    np.testing.assert_array_equal(correction.mask_input, np.full((8, 8), 1.0))
    assert session.next_candidate_request(plane) is None  # the click's masks belong to other prompts now
    assert session.accept(correction, correction.run(predictor))
    assert session.candidate_of(plane) == (1, 1) and session.next_candidate_request(plane) is None
    # a new model: the old candidates are not offered any more
    session.set_axis_prompts(0, {2: PlanePrompts.build([(10, 15)], [1])})
    request = session.request(plane)
    session.accept(request, request.run(predictor))
    assert session.next_candidate_request(plane) is not None
    session.invalidate()
    assert session.next_candidate_request(plane) is None


def test_preview_is_the_union_of_plane_masks_across_axes():
    session = AnnotationSession((6, 8, 10), GEOMETRY)
    axial, coronal = Plane(0, 2), Plane(1, 5)
    session.set_axis_prompts(0, {2: PlanePrompts.build(box=(0, 0, 7, 9))})
    session.set_axis_prompts(1, {5: PlanePrompts.build(box=(0, 0, 5, 9))})
    axial_mask = np.zeros((8, 10), bool)
    axial_mask[3:7, 2:6] = True
    coronal_mask = np.zeros((6, 10), bool)
    coronal_mask[1:4, 4:9] = True
    assert session.accept(session.request(axial), _prediction(axial_mask))
    assert session.accept(session.request(coronal), _prediction(coronal_mask))
    expected = np.zeros((6, 8, 10), bool)
    expected[2] |= axial_mask
    expected[:, 5, :] |= coronal_mask
    np.testing.assert_array_equal(session.preview.astype(bool), expected)
    # removing the axial prompts removes its mask, not the coronal one's crossing
    session.set_axis_prompts(0, {})
    expected[:] = False
    expected[:, 5, :] = coronal_mask
    np.testing.assert_array_equal(session.preview.astype(bool), expected)


def test_commit_undo_redo_restore_labels_exactly_and_track_objects():
    labels = np.zeros((6, 8, 10), np.uint16)
    labels[0, :2, :2] = 7  # an object already in the target layer
    session = AnnotationSession((6, 8, 10), GEOMETRY, labels=labels)
    assert [r.id for r in session.table.records()] == [7]
    session.set_axis_prompts(0, {3: PlanePrompts.build(box=(0, 0, 7, 9))})
    mask = np.zeros((8, 10), bool)
    mask[2:5, 1:7] = True
    session.accept(session.request(Plane(0, 3)), _prediction(mask))
    before = labels.copy()
    record = session.commit("liver")
    assert record.id == 8 and record.name == "liver" and record.colour == colour_for(8)
    assert session.labels is labels  # shared with the napari layer, never copied
    np.testing.assert_array_equal(labels[3] == 8, mask)
    assert record.voxels == mask.sum() and session.table.ml(record) == pytest.approx(mask.sum() * 2.0 * 0.5 * 0.8 / 1000)
    assert session.preview.sum() == 0 and session.planes_with_prompts() == []
    session.table.rename(8, "right lobe")
    assert session.undo() is not None
    np.testing.assert_array_equal(labels, before)
    assert 8 not in session.table
    assert session.redo() is not None
    assert session.table.get(8).name == "liver"  # the record as committed comes back
    np.testing.assert_array_equal(labels[3] == 8, mask)
    session.delete_object(8)
    np.testing.assert_array_equal(labels, before)
    session.undo()
    np.testing.assert_array_equal(labels[3] == 8, mask)
    assert session.commit() is None  # nothing to commit: the preview is empty


def test_brush_edits_are_counted_and_kept_by_undo():
    session = AnnotationSession((4, 6, 6), GEOMETRY)
    session.set_axis_prompts(0, {1: PlanePrompts.build(box=(0, 0, 5, 5))})
    mask = np.zeros((6, 6), bool)
    mask[1:3, 1:3] = True
    session.accept(session.request(Plane(0, 1)), _prediction(mask))
    session.commit()
    session.labels[3, 4:, 4:] = 1   # napari brush adds to object 1 elsewhere
    session.labels[2, 0, 0] = 5     # and paints a new id
    assert session.labels_edited() == [5]
    assert session.table.get(1).voxels == 4 + 4 and session.table.get(5).voxels == 1
    session.undo()
    assert session.labels[1].sum() == 0                 # the commit is gone ...
    assert (session.labels[3, 4:, 4:] == 1).all()       # ... the brush strokes stay
    assert session.table.get(1).voxels == 4


def test_history_is_bounded():
    labels = np.zeros((3, 3), np.uint8)
    history = EditHistory(max_items=2)
    for value in (1, 2, 3):
        edit = LabelEdit.assign(labels, labels >= 0, value)
        edit.apply(labels)
        history.push(edit)
    assert len(history) == 2
    history.undo(labels)
    history.undo(labels)
    assert history.undo(labels) is None
    assert (labels == 1).all()


def test_export_writes_labels_with_geometry_and_object_tables(tmp_path):
    session = AnnotationSession((5, 6, 7), GEOMETRY)
    session.set_axis_prompts(1, {2: PlanePrompts.build(box=(0, 0, 4, 6))})
    mask = np.zeros((5, 7), bool)
    mask[1:4, 2:5] = True
    session.accept(session.request(Plane(1, 2)), _prediction(mask))
    session.commit("lesion")
    result = session.export(tmp_path / "seg.nii.gz", {"image": "ct"})
    volume = read_volume(result.labels)
    np.testing.assert_array_equal(volume.array, session.labels)
    np.testing.assert_allclose(volume.spacing, GEOMETRY["spacing"], rtol=1e-6)
    np.testing.assert_allclose(volume.origin, GEOMETRY["origin"], atol=1e-5)
    assert (result.csv, result.json) == object_table_paths(tmp_path / "seg.nii.gz")
    rows = list(csv.DictReader(result.csv.open()))
    assert rows == [{"id": "1", "name": "lesion", "voxels": "9", "ml": str(round(9 * 0.8 / 1000, 4)), "colour": colour_for(1)}]
    document = json.loads(result.json.read_text())
    assert document["objects"][0]["voxels"] == 9 and document["image"] == "ct"
    assert document["labels_file"] == "seg.nii.gz"


def test_2d_tables_use_square_millimetres_and_bad_targets_are_refused():
    table = ObjectTable((0.5, 0.5))
    table.refresh(np.array([[0, 1], [1, 1]]))
    assert table.rows() == [{"id": 1, "name": "object 1", "colour": colour_for(1), "voxels": 3, "area_mm2": 0.75}]
    with pytest.raises(ValueError, match="do not match"):
        AnnotationSession((4, 4), {"spacing": (1, 1), "origin": (0, 0), "direction": np.eye(2)}, labels=np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="integers"):
        AnnotationSession((4, 4), {"spacing": (1, 1), "origin": (0, 0), "direction": np.eye(2)}, labels=np.zeros((4, 4), float))
    with pytest.raises(ValueError, match="outside"):
        AnnotationSession((4, 4, 4), GEOMETRY).set_axis_prompts(0, {9: PlanePrompts.build(box=(0, 0, 2, 2))})


def test_default_model_policy(monkeypatch):
    from napari_vfmseg.models import registry
    from napari_vfmseg.annotation import model_choice

    def fake(records):
        monkeypatch.setattr(registry, "list_models", lambda: [{"name": n, "present": p} for n, p in records])

    # official weights the user placed win; the shipped built-in model is the fallback
    fake([("builtin", True), ("mobilesam_vit_t", False), ("vit_b", True)])
    assert model_choice.default_model_name() == "vit_b"
    fake([("builtin", True), ("mobilesam_vit_t", False), ("vit_b", False)])
    assert model_choice.default_model_name() == "builtin"
    fake([("mobilesam_vit_t", False), ("vit_b", True), ("vit_l", True), ("builtin", False)])
    assert model_choice.default_model_name() == "vit_b"
    fake([("mobilesam_vit_t", False), ("vit_b", False)])
    assert model_choice.default_model_name() is None


def test_last_click_ignored_compares_the_newest_point_with_the_mask():
    session = AnnotationSession((6, 20, 30), GEOMETRY)
    plane = Plane(0, 2)
    assert not session.last_click_ignored(plane)  # no prediction yet
    mask = _disk((20, 30), (10, 15), 5)
    cases = [
        ([(10, 15)], [1], False),                 # object click inside the mask: followed
        ([(10, 15), (11, 16)], [1, 0], True),     # background click still inside: ignored
        ([(10, 15), (2, 2)], [1, 0], False),      # background click outside: followed
        ([(2, 2), (10, 15)], [0, 1], False),      # only the newest point counts
        ([(10, 15), (18, 28)], [1, 1], True),     # object click left outside: ignored
        ([(10, 15), (19.6, 29.7)], [1, 1], True),  # on the last pixel (rounded and clipped to the plane)
    ]
    for points, labels, ignored in cases:
        session.set_axis_prompts(0, {2: PlanePrompts.build(points, labels, (1, 1, 19, 29))})
        assert session.accept(session.request(plane), _prediction(mask))
        assert session.last_click_ignored(plane) is ignored, (points, labels)
    session.set_axis_prompts(0, {2: PlanePrompts.build(box=(1, 1, 19, 29))})
    assert session.accept(session.request(plane), _prediction(mask))
    assert not session.last_click_ignored(plane)  # a box alone: no click to judge

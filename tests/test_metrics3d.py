"""3D evaluation: measures, baselines on a hand-made case, the oracle protocol and a real (tiny) model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_vfmseg.engine import PropagationConfig
from napari_vfmseg.training.metrics3d import (
    OracleSegmenter,
    evaluate_volume_3d,
    find_objects_3d,
    largest_plane,
    object_extent,
    object_size_mm,
    repeat_plane,
    score_object_3d,
    volume_ml,
)

from _tiny_models import tiny_loaded_model


def hand_made():
    """(8, 10, 10) labels: object 1 on planes 2..5 with areas 4, 16, 16, 4, nested at one corner."""
    labels = np.zeros((8, 10, 10), dtype=np.uint8)
    labels[2, 1:3, 1:3] = 1
    labels[3, 1:5, 1:5] = 1
    labels[4, 1:5, 1:5] = 1
    labels[5, 1:3, 1:3] = 1
    return labels


def test_measures_on_a_hand_made_object():
    truth = hand_made() == 1
    spacing = (2.0, 0.5, 0.5)  # 0.5 mm³ per voxel
    assert volume_ml(truth, spacing) == pytest.approx(40 * 0.5 / 1000)
    assert largest_plane(truth, 0) == 3  # planes 3 and 4 tie: the first
    assert object_extent(truth, 0) == (2, 5)
    assert object_extent(truth, 1) == (1, 4)
    assert object_size_mm(truth, spacing) == pytest.approx(8.0)  # 4 planes x 2 mm (rows/cols: 4 x 0.5 mm)
    assert object_size_mm(truth, (1.0, 3.0, 1.0)) == pytest.approx(12.0)
    along_rows = repeat_plane(np.ones((8, 10), bool), (8, 10, 10), axis=1, first=2, last=3)
    assert along_rows.shape == (8, 10, 10) and along_rows.sum() == 160
    assert along_rows[:, 2:4, :].all() and not along_rows[:, 4:, :].any()


def test_baselines_computed_by_hand():
    truth = hand_made() == 1
    spacing = (2.0, 0.5, 0.5)
    scores = score_object_3d(truth, truth, axis=0, spacing=spacing)
    assert scores["dice"] == 1.0 and scores["volume_error_ml"] == 0.0
    assert scores["seed_plane"] == 3 and scores["extent"] == (2, 5)
    # extent baseline: the 16-px plane on planes 2..5 = 64 voxels, all 40 true voxels inside it
    assert scores["extent_baseline_dice"] == pytest.approx(2 * 40 / (64 + 40))
    assert scores["extent_baseline_volume_error_ml"] == pytest.approx((64 - 40) * 0.5 / 1000)
    # every plane: 8 x 16 = 128 voxels
    assert scores["all_planes_baseline_dice"] == pytest.approx(2 * 40 / (128 + 40))
    assert scores["all_planes_baseline_volume_error_ml"] == pytest.approx((128 - 40) * 0.5 / 1000)
    # a prediction that misses plane 5 and adds one wrong voxel on plane 6
    predicted = truth.copy()
    predicted[5] = False
    predicted[6, 9, 9] = True
    scores = score_object_3d(predicted, truth, axis=0, spacing=spacing)
    assert scores["dice"] == pytest.approx(2 * 36 / (37 + 40))
    assert scores["volume_error_ml"] == pytest.approx(-3 * 0.5 / 1000)
    assert scores["predicted_extent"] == (2, 6)


def ellipsoid_tube_labels(shape=(20, 40, 48)):
    """Label 1: an ellipsoid (large); 2: a curved tube (large); 3: a 3-voxel-wide cube (small)."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    labels = np.zeros(shape, dtype=np.uint8)
    labels[((z - 10) / 6.5) ** 2 + ((y - 20) / 11.0) ** 2 + ((x - 36) / 8.0) ** 2 <= 1.0] = 1
    tube = ((y - (20 + 8 * np.sin(z / 3.0))) ** 2 + (x - (5 + 0.7 * z)) ** 2 <= 2.5**2) & (z >= 1) & (z <= 17)
    labels[tube] = 2
    labels[14:17, 2:5, 40:43] = 3
    return labels


def test_oracle_protocol_reaches_dice_one_and_reports_groups():
    labels = ellipsoid_tube_labels()
    volume = labels.astype(np.float32) * 100.0
    spacing = (3.0, 1.0, 1.0)
    report = evaluate_volume_3d(volume, labels, OracleSegmenter(labels), axis=0, min_size_mm=20.0, spacing=spacing,
                                label_names={1: "ellipsoid", 2: "tube", 3: "cube"}, config=None)
    json.dumps(report)  # JSON-ready
    objects = {o["label"]: o for o in report["objects"]}
    assert set(objects) == {1, 2, 3}
    for label, obj in objects.items():
        truth = labels == label
        assert obj["dice"] == pytest.approx(1.0)
        assert obj["predicted_extent"] == obj["extent"] == list(object_extent(truth, 0))
        assert obj["volume_true_ml"] == pytest.approx(truth.sum() * 3.0 / 1000)
        assert obj["seed_plane"] == largest_plane(truth, 0)
        expected = score_object_3d(truth, truth, 0, spacing)
        assert obj["extent_baseline_dice"] == pytest.approx(expected["extent_baseline_dice"])
        assert obj["all_planes_baseline_dice"] == pytest.approx(expected["all_planes_baseline_dice"])
    assert objects[1]["large"] and objects[2]["large"] and not objects[3]["large"]
    assert objects[3]["name"] == "cube" and objects[3]["size_mm"] == pytest.approx(9.0)
    # the tube wanders: repeating its largest cross-section over its extent is a poor answer
    assert objects[2]["extent_baseline_dice"] < 0.5
    assert report["large"]["n_objects"] == 2 and report["small"]["n_objects"] == 1
    assert report["large"]["dice_mean"] == pytest.approx(1.0)
    assert report["large"]["dice_minus_extent_baseline"] == pytest.approx(
        1.0 - np.mean([objects[1]["extent_baseline_dice"], objects[2]["extent_baseline_dice"]]))
    assert report["seconds_per_plane"] > 0


def test_oracle_protocol_along_another_axis_and_chosen_labels():
    labels = ellipsoid_tube_labels()
    report = evaluate_volume_3d(labels, labels, OracleSegmenter(labels), axis=2, label_ids=[1])
    assert report["n_objects"] == 1 and report["axis"] == 2
    obj = report["objects"][0]
    assert obj["dice"] == pytest.approx(1.0, abs=1e-3)  # by default tips under min_area=3 px are left out
    exact = evaluate_volume_3d(labels, labels, OracleSegmenter(labels), axis=2, label_ids=[1],
                               config=PropagationConfig(min_area=1))
    assert exact["objects"][0]["dice"] == 1.0
    assert exact["objects"][0]["predicted_extent"] == exact["objects"][0]["extent"] == list(object_extent(labels == 1, 2))


def test_tiny_model_runs_the_protocol_end_to_end():
    labels = np.zeros((8, 24, 28), dtype=np.uint8)
    rows, cols = np.mgrid[:24, :28]
    for plane, radius in zip(range(2, 7), (3, 5, 6, 5, 3)):
        labels[plane][(rows - 12) ** 2 + (cols - 14) ** 2 <= radius**2] = 1
    volume = (labels > 0).astype(np.float32) * 300.0 - 100.0
    report = evaluate_volume_3d(volume, labels, tiny_loaded_model(seed=1), axis=0, spacing=(2.0, 1.0, 1.0),
                                label_ids=[1])
    obj = report["objects"][0]
    assert 0.0 <= obj["dice"] <= 1.0 and obj["predictions"] >= 1
    assert obj["box"] == list(_tight_box((labels == 1)[obj["seed_plane"]]))
    json.dumps(report)


def _tight_box(mask):
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return rows[0], cols[0], rows[-1], cols[-1]


def test_objects_are_connected_parts_unless_asked_for_whole_labels():
    labels = np.zeros((10, 12, 12), dtype=np.uint8)
    labels[1:4, 1:5, 1:5] = 1  # 48 voxels
    labels[6:9, 6:9, 6:9] = 1  # 27 voxels, separate (a gap plane between)
    labels[5, 0, 0] = 1  # a 1-voxel speck
    labels[2:5, 8:11, 8:11] = 4
    parts = find_objects_3d(labels)
    assert [(label, part, int(mask.sum())) for label, part, mask in parts] == [(1, 1, 48), (1, 2, 27), (4, 1, 27)]
    whole = find_objects_3d(labels, objects="label")
    assert [(label, part, int(mask.sum())) for label, part, mask in whole] == [(1, None, 76), (4, None, 27)]
    assert [p[0] for p in find_objects_3d(labels, label_ids=[4])] == [4]
    with pytest.raises(ValueError, match="label 3 is not"):
        find_objects_3d(labels, label_ids=[3])
    # one box cannot follow a label made of separate bodies; each part on its own reaches Dice 1
    by_part = evaluate_volume_3d(labels, labels, OracleSegmenter(labels), label_ids=[1])
    assert [o["dice"] for o in by_part["objects"]] == [1.0, 1.0]
    by_label = evaluate_volume_3d(labels, labels, OracleSegmenter(labels), label_ids=[1], objects="label")
    assert by_label["objects"][0]["dice"] == pytest.approx(2 * 48 / (48 + 76))


def test_bad_inputs():
    labels = ellipsoid_tube_labels(shape=(6, 12, 12))
    with pytest.raises(ValueError, match="differ"):
        evaluate_volume_3d(labels[:5], labels, OracleSegmenter(labels))
    with pytest.raises(ValueError, match="spacing"):
        evaluate_volume_3d(labels, labels, OracleSegmenter(labels), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="Segmenter or a LoadedModel"):
        evaluate_volume_3d(labels, labels, object())
    with pytest.raises(ValueError, match="empty"):
        largest_plane(np.zeros((2, 2, 2), bool))

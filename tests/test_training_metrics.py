"""Dice / IoU on hand-made masks, NoC under the iterative protocol with fake predictors, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_vfmseg.training.metrics import (
    box_fill_mask,
    dice,
    evaluate_object,
    evaluate_volume,
    interactive_protocol,
    iou,
    noc,
    otsu_box_mask,
    otsu_threshold,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_dice_and_iou_on_hand_made_masks():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:5] = True          # 20 px
    b[2:6, 0:5] = True          # 20 px, overlap 2 x 5 = 10
    assert dice(a, b) == pytest.approx(2 * 10 / 40)
    assert iou(a, b) == pytest.approx(10 / 30)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, ~a) == 0.0 and iou(a, ~a) == 0.0
    empty = np.zeros((10, 10), bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, a) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:5])


def test_noc_counts_first_crossing_and_failures():
    assert noc([0.5, 0.86, 0.95], 0.85, 20) == (2, True)
    assert noc([0.5, 0.86, 0.95], 0.90, 20) == (3, True)
    assert noc([0.91], 0.90, 20) == (1, True)
    assert noc([0.1, 0.2, 0.3], 0.85, 20) == (20, False)
    assert noc([0.1, 0.2, 0.95], 0.85, 2) == (2, False)     # beyond max_clicks does not count


class ClickablePredictor:
    """A fake model: the prediction is the target minus a set of 'missed' discs that a positive
    click inside removes, plus 'spurious' blobs that a negative click inside removes. Records the
    prompts it saw."""

    def __init__(self, target, missed, spurious):
        self.target = target
        self.missed = [m.copy() for m in missed]
        self.spurious = [s.copy() for s in spurious]
        self.calls = []

    def __call__(self, points, labels, box, mask_input):
        self.calls.append((None if points is None else points.copy(), None if labels is None else labels.copy(),
                           box, mask_input))
        if points is not None:
            for (r, c), lab in zip(points.astype(int), labels):
                if lab == 1:
                    self.missed = [m for m in self.missed if not m[r, c]]
                else:
                    self.spurious = [s for s in self.spurious if not s[r, c]]
        mask = self.target.copy()
        for m in self.missed:
            mask &= ~m
        for s in self.spurious:
            mask |= s
        logits = np.where(mask, 5.0, -5.0).astype(np.float32)[::4, ::4]
        return mask, 0.9, logits


def _disc(shape, centre, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def test_protocol_clicks_the_largest_error_first_and_feeds_logits_back():
    target = np.zeros((80, 80), bool)
    target[10:70, 10:70] = True
    big_miss = _disc(target.shape, (25, 25), 12) & target
    small_miss = _disc(target.shape, (60, 60), 5) & target
    spurious = _disc(target.shape, (75, 75), 3) & ~target
    predictor = ClickablePredictor(target, [big_miss, small_miss], [spurious])
    dices, ious = interactive_protocol(predictor, target, first="box", max_clicks=20, stop_iou=None)
    # Box, then: the big miss, the small miss, the spurious blob, then a perfect mask → stop.
    assert len(ious) == 4 and ious[-1] == 1.0
    assert ious[0] < ious[1] < ious[2] < ious[3]
    second = predictor.calls[1]
    assert second[2] == (10, 10, 69, 69)              # the box stays
    assert second[1].tolist() == [1] and big_miss[tuple(second[0][0].astype(int))]
    assert predictor.calls[2][1].tolist() == [1, 1] and small_miss[tuple(predictor.calls[2][0][1].astype(int))]
    assert predictor.calls[3][1].tolist() == [1, 1, 0]
    assert predictor.calls[0][3] is None and predictor.calls[1][3] is not None   # logits fed back
    assert dices[-1] == 1.0


def test_protocol_first_point_is_most_interior_and_noc_values():
    target = _disc((64, 64), (32, 30), 14)
    miss = _disc((64, 64), (32, 30), 6)          # the model misses the centre until clicked there
    predictor = ClickablePredictor(target, [miss], [])
    score = evaluate_object(predictor, target, image=None, first="point", max_clicks=20)
    first_points = predictor.calls[0][0]
    assert first_points.shape == (1, 2) and tuple(first_points[0].astype(int)) == (32, 30)
    # The first click hit the missed centre: perfect at once.
    assert score.noc85 == 1 and score.noc90 == 1 and score.clicks == 1

    # A predictor that never improves fails both NoCs with max_clicks.
    class Stuck:
        def __call__(self, points, labels, box, mask_input):
            mask = np.zeros_like(target)
            mask[:, :30] = target[:, :30]
            return mask, 0.5, np.zeros((16, 16), np.float32)

    stuck = evaluate_object(Stuck(), target, first="box", max_clicks=5)
    assert (stuck.noc85, stuck.reached85, stuck.noc90, stuck.reached90) == (5, False, 5, False)
    assert stuck.clicks == 5 and stuck.dice == pytest.approx(stuck.dice_final)


def test_noc_with_gradual_predictor():
    """IoU rises by a known step per click: NoC values follow exactly."""
    target = np.zeros((50, 50), bool)
    target[5:45, 5:45] = True
    ious_by_click = [0.5, 0.7, 0.8, 0.87, 0.88, 0.93]

    class Gradual:
        n = 0

        def __call__(self, points, labels, box, mask_input):
            value = ious_by_click[min(self.n, len(ious_by_click) - 1)]
            self.n += 1
            keep = int(round(value * target.sum()))
            mask = np.zeros_like(target)
            mask.ravel()[np.flatnonzero(target.ravel())[:keep]] = True
            return mask, value, np.zeros((8, 8), np.float32)

    score = evaluate_object(Gradual(), target, first="box", max_clicks=20)
    assert score.noc85 == 4 and score.noc90 == 6
    assert score.clicks == 6                          # stopped once IoU >= 0.90
    assert score.iou == pytest.approx(0.5, abs=0.01)


def test_baselines_box_fill_and_otsu():
    target = _disc((60, 60), (30, 30), 15)
    box = (15, 15, 45, 45)
    fill = box_fill_mask(target.shape, box)
    assert fill.sum() == 31 * 31
    assert dice(fill, target) == pytest.approx(2 * target.sum() / (target.sum() + 31 * 31))
    image = np.where(target, 300.0, -50.0) + np.random.default_rng(0).normal(0, 5, target.shape)
    assert -50 < otsu_threshold(image) < 300
    otsu = otsu_box_mask(image, box)
    assert dice(otsu, target) > 0.98
    # A dark object on a bright background: the class under the centre (dark) is kept.
    dark = otsu_box_mask(-image, box)
    assert dice(dark, target) > 0.98
    assert otsu_threshold(np.full(10, 3.0)) == 3.0
    assert otsu_box_mask(np.ones((20, 20)), (2, 2, 10, 10)).sum() == 81


def test_evaluate_volume_with_a_perfect_and_a_shifted_fake():
    labels = np.zeros((5, 40, 40), np.int32)
    labels[1, 5:20, 5:20] = 1
    labels[1, 25:35, 25:38] = 2
    labels[3, 10:30, 10:30] = 1
    labels[3, 0:3, 0:3] = 2                           # 9 px: below min_pixels
    volume = np.where(labels > 0, 100.0, 0.0)

    def perfect(plane, points, point_labels, box, mask_input):
        # Return the object under the box centre or the first point (a perfect oracle).
        if box is not None:
            r, c = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        else:
            r, c = points[0].astype(int)
        return labels[plane] == labels[plane][r, c], 1.0, np.zeros((10, 10), np.float32)

    report = evaluate_volume(perfect, volume, labels, prompt="box", max_clicks=20, min_pixels=20)
    summary = report.summary(per_object=True)
    assert summary["n_objects"] == 3
    assert summary["dice_mean"] == 1.0 and summary["noc85"] == 1.0 and summary["noc90"] == 1.0
    assert summary["noc90_failures"] == 0
    assert summary["baselines"]["box_fill_dice_mean"] == 1.0       # square objects fill their box
    assert summary["baselines"]["otsu_dice_mean"] == 1.0
    assert [(o["plane"], o["label"]) for o in summary["objects"]] == [(1, 1), (1, 2), (3, 1)]
    assert set(summary["per_label"]) == {"1", "2"}

    def empty(plane, points, point_labels, box, mask_input):
        return np.zeros(labels.shape[1:], bool), 0.0, np.zeros((10, 10), np.float32)

    seen = []
    report = evaluate_volume(empty, volume, labels, prompt="point", max_clicks=3, max_objects=2,
                             progress=lambda done, total: seen.append((done, total)))
    summary = report.summary()
    assert summary["n_objects"] == 2 and seen == [(1, 2), (2, 2)]
    assert summary["dice_mean"] == 0.0 and summary["noc90"] == 3.0 and summary["noc90_failures"] == 2
    assert not math.isnan(summary["baselines"]["otsu_dice_mean"])
    with pytest.raises(ValueError, match="differ"):
        evaluate_volume(empty, volume[:, :10], labels)


def test_cli_evaluate_human_output_and_errors(tmp_path, monkeypatch, capsys):
    import SimpleITK as sitk

    import napari_vfmseg.models as models
    from napari_vfmseg.cli import main
    from napari_vfmseg.training.adapters import AdapterInfo, save_adapter

    from _tiny_models import synthetic_volume, tiny_loaded_model

    monkeypatch.setattr(models, "load_model", lambda name, device="auto", **kw: tiny_loaded_model())
    image, labels = synthetic_volume(planes=6, size=64, seed=3)
    image_path, labels_path = tmp_path / "mr.nrrd", tmp_path / "seg.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(image_path))
    sitk.WriteImage(sitk.GetImageFromArray(labels.astype(np.uint8)), str(labels_path))

    assert main(["evaluate", str(image_path), str(labels_path), "--prompt", "point", "--max-clicks", "2",
                 "--max-objects", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 objects, first prompt: point" in out and "box filled" in out and "NoC@85" in out

    short = tmp_path / "short.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(labels[:3].astype(np.uint8)), str(short))
    assert main(["evaluate", str(image_path), str(short)]) == 2
    err = capsys.readouterr().err
    assert "short.nrrd" in err and "differs" in err

    other = tiny_loaded_model(seed=7)
    adapter = save_adapter(tmp_path / "other.safetensors", {"mask_decoder.iou_token.weight": torch.zeros(1, 32)},
                           AdapterInfo(base_fingerprint=other.fingerprint, mode="decoder"))
    assert main(["evaluate", str(image_path), str(labels_path), "--adapter", str(adapter)]) == 2
    err = capsys.readouterr().err
    assert other.fingerprint in err and tiny_loaded_model().fingerprint in err


def test_cli_evaluate_3d_reports_propagation_beside_baselines(tmp_path, monkeypatch, capsys):
    import json

    import SimpleITK as sitk

    import napari_vfmseg.models as models
    from napari_vfmseg.cli import main

    from _tiny_models import synthetic_volume, tiny_loaded_model

    monkeypatch.setattr(models, "load_model", lambda name, device="auto", **kw: tiny_loaded_model())
    image, labels = synthetic_volume(planes=6, size=64, seed=3)
    image_path, labels_path = tmp_path / "mr.nrrd", tmp_path / "seg.nrrd"
    for array, path in ((image, image_path), (labels.astype(np.uint8), labels_path)):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing((0.5, 0.5, 2.0))
        sitk.WriteImage(itk, str(path))
    assert main(["evaluate", str(image_path), str(labels_path), "--3d", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_objects"] >= 1 and report["axis"] == 0
    assert report["spacing"] == [2.0, 0.5, 0.5]
    group = report["all"]
    assert 0.0 <= group["dice_mean"] <= 1.0
    assert 0.0 < group["extent_baseline_dice_mean"] <= 1.0
    assert main(["evaluate", str(image_path), str(labels_path), "--3d"]) == 0
    assert "3D evaluation along axis 0" in capsys.readouterr().out

"""Prompt simulation, training data from labels, the plane-block split and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_vfmseg.training.data import (
    LabelledImage,
    augment,
    frame_pair,
    object_ids,
    pairs_from_volume,
    split_by_plane_blocks,
)
from napari_vfmseg.training.prompts import (
    PromptSet,
    bounding_box,
    correction_click,
    interior_point,
    jitter_box,
    sample_points,
    simulate_prompts,
)


def _disc(shape, centre, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def test_bounding_box_and_interior_point():
    mask = np.zeros((40, 50), bool)
    mask[5:15, 10:40] = True          # a 10 x 30 bar
    assert bounding_box(mask) == (5, 10, 14, 39)
    row, col = interior_point(mask)
    assert 9 <= row <= 10 and 14 <= col <= 35      # on the bar's midline, away from its ends
    # The most interior point of an L-shape is in its thick part, not at the corner of the bbox.
    ell = np.zeros((60, 60), bool)
    ell[0:60, 0:30] = True
    ell[40:60, 0:60] = True
    r, c = interior_point(ell)
    assert ell[r, c] and c < 30
    with pytest.raises(ValueError):
        interior_point(np.zeros((4, 4), bool))


def test_jitter_box_stays_in_image_and_is_bounded():
    rng = np.random.default_rng(0)
    box = (20, 30, 60, 90)
    shifts = []
    for _ in range(300):
        r0, c0, r1, c1 = jitter_box(box, (100, 100), rng)
        assert 0 <= r0 <= r1 <= 99 and 0 <= c0 <= c1 <= 99
        shifts.append(np.abs(np.subtract((r0, c0, r1, c1), box)))
    shifts = np.array(shifts)
    assert shifts.max() <= 20                       # SAM's cap
    assert shifts.mean() > 1.0                      # it does move
    # Along rows the side is 41 px (sd 4.1), along columns 61 px (sd 6.1): column sides move more.
    assert shifts[:, [1, 3]].mean() > shifts[:, [0, 2]].mean()


def test_sampled_points_positive_inside_negative_outside_near():
    rng = np.random.default_rng(1)
    mask = _disc((80, 80), (40, 40), 12)
    pos = sample_points(mask, 50, rng, positive=True)
    neg = sample_points(mask, 50, rng, positive=False, margin=8)
    assert len(pos) == 50 and mask[pos[:, 0], pos[:, 1]].all()
    assert len(neg) == 50 and not mask[neg[:, 0], neg[:, 1]].any()
    assert (neg[:, 0] >= 28 - 8).all() and (neg[:, 0] <= 52 + 8).all()
    # Interior favoured: mean distance to the border of positive points beats a uniform draw's.
    dist = ndimage.distance_transform_edt(mask)
    assert dist[pos[:, 0], pos[:, 1]].mean() > dist[mask].mean()


def test_correction_click_falls_in_largest_error_region():
    target = np.zeros((64, 64), bool)
    target[10:50, 10:50] = True
    pred = target.copy()
    pred[10:30, 10:50] = False                      # big false negative (20 x 40)
    pred[55:60, 55:60] = True                       # small false positive
    click = correction_click(pred, target)
    assert click.positive
    assert target[click.row, click.col] and not pred[click.row, click.col]
    # On the band's midline, at least 10 px (its half height) from every edge of the error.
    assert 19 <= click.row <= 20 and 19 <= click.col <= 40

    pred2 = target.copy()
    pred2[0:8, 0:64] = True                         # false positive band, bigger than any FN
    pred2[20:22, 20:22] = False
    click2 = correction_click(pred2, target)
    assert not click2.positive
    assert pred2[click2.row, click2.col] and not target[click2.row, click2.col]
    assert correction_click(target, target) is None
    with pytest.raises(ValueError):
        correction_click(target[:10], target)


def test_correction_click_is_inside_for_many_random_errors():
    rng = np.random.default_rng(5)
    for _ in range(40):
        target = _disc((48, 48), rng.integers(10, 38, 2), rng.integers(4, 12))
        pred = _disc((48, 48), rng.integers(10, 38, 2), rng.integers(4, 12))
        click = correction_click(pred, target)
        error = (target & ~pred) if click.positive else (pred & ~target)
        assert error[click.row, click.col]
        # The click lies in a largest error component.
        fn, fp = ndimage.label(target & ~pred)[0], ndimage.label(pred & ~target)[0]
        sizes = [np.bincount(x.ravel())[1:].max() if x.max() else 0 for x in (fn, fp)]
        chosen = (fn if click.positive else fp)
        component = chosen == chosen[click.row, click.col]
        assert component.sum() == max(sizes)


def test_simulate_prompts_and_add_clicks():
    rng = np.random.default_rng(2)
    masks = np.stack([_disc((64, 64), (20, 20), 6), _disc((64, 64), (40, 44), 9)])
    boxes = simulate_prompts(masks, rng, kind="box")
    assert boxes.points is None and boxes.boxes.shape == (2, 4)
    points = simulate_prompts(masks, rng, kind="point", n_positive=2, n_negative=1)
    assert points.points.shape == (2, 3, 2) and points.labels.tolist() == [[1, 1, 0], [1, 1, 0]]
    for i in range(2):
        r, c = points.points[i, 0].astype(int)
        assert masks[i][r, c]
        r, c = points.points[i, 2].astype(int)
        assert not masks[i][r, c]
    from napari_vfmseg.training.prompts import Click

    more = boxes.add_clicks([Click(3, 4, True), None])
    assert more.points.shape == (2, 1, 2) and more.labels.tolist() == [[1], [-1]]
    assert isinstance(more, PromptSet) and more.boxes is boxes.boxes
    with pytest.raises(ValueError, match="prompt kind"):
        simulate_prompts(masks, rng, kind="scribble")


def test_pairs_from_volume_objects_and_window():
    volume = np.zeros((6, 32, 40), np.int16) - 1000
    labels = np.zeros((6, 32, 40), np.uint8)
    labels[1, 5:15, 5:15] = 3          # 100 px
    labels[1, 20:22, 20:22] = 4        # 4 px: too small
    labels[4, 10:30, 10:30] = 1
    volume[labels > 0] = 60
    pairs = pairs_from_volume(volume, labels, window="soft_tissue", min_pixels=20, source="ct.nii.gz")
    assert [p.plane for p in pairs] == [1, 4]
    assert object_ids(pairs[0].labels, 20) == [3]
    assert pairs[0].image.dtype == np.uint8 and pairs[0].image[10, 10] > pairs[0].image[0, 0]
    assert "ct.nii.gz plane 1" == pairs[0].source
    # Along another axis: planes are columns now.
    by_col = pairs_from_volume(volume, labels, axis=2, window=(40, 400), min_pixels=20)
    assert all(p.image.shape == (6, 32) for p in by_col)
    with pytest.raises(ValueError, match="differ"):
        pairs_from_volume(volume, labels[:, :10], source="x")
    with pytest.raises(ValueError, match="whole numbers"):
        pairs_from_volume(volume, labels.astype(np.float32) + 0.5)


def test_split_by_plane_blocks_has_no_adjacent_leakage():
    pairs = [LabelledImage(np.zeros((4, 4), np.uint8), np.ones((4, 4), np.int32), plane=i) for i in range(60)]
    train, val = split_by_plane_blocks(pairs, val_fraction=0.25, block_size=5, guard=1, seed=3)
    train_planes = {p.plane for p in train}
    val_planes = {p.plane for p in val}
    assert not train_planes & val_planes
    assert 12 <= len(val_planes) <= 20
    for v in val_planes:                               # whole blocks
        assert set(range(v // 5 * 5, v // 5 * 5 + 5)) <= val_planes
        assert v - 1 not in train_planes and v + 1 not in train_planes
    assert len(train) >= 30
    # Deterministic for a seed, different for another.
    again = split_by_plane_blocks(pairs, 0.25, 5, 1, seed=3)[1]
    assert [p.plane for p in again] == sorted(val_planes)
    # A single block cannot be split.
    assert split_by_plane_blocks(pairs[:3], 0.5, block_size=5)[1] == []


def test_frame_and_augment_keep_labels_aligned():
    image = np.zeros((50, 100), np.uint8)
    labels = np.zeros((50, 100), np.int32)
    labels[10:30, 20:60] = 2
    image[labels == 2] = 200
    framed = frame_pair(LabelledImage(image, labels), 128)
    assert framed.image.shape == framed.labels.shape == (64, 128) and framed.image.dtype == np.uint8
    # Exactly the pixels the engine feeds its encoder.
    from segment_anything.utils.transforms import ResizeLongestSide

    assert np.array_equal(framed.image, ResizeLongestSide(128).apply_image(image))
    stretched = frame_pair(LabelledImage(image, labels), 128, preprocess="medsam")
    assert stretched.stretch and stretched.image.shape == stretched.labels.shape == (128, 128)
    assert framed.image[framed.labels == 2].mean() > 150 and framed.image[framed.labels == 0].mean() < 60
    rng = np.random.default_rng(0)
    for _ in range(10):
        aug = augment(framed, rng, intensity=0.1, scale=0.1)
        assert aug.image.shape == framed.image.shape and aug.labels.dtype == np.int32
        assert aug.image.dtype == np.uint8
        assert set(np.unique(aug.labels)) <= {0, 2}
        inside = aug.image[aug.labels == 2]
        outside = aug.image[aug.labels == 0]
        assert inside.mean() > outside.mean() + 100       # intensities still match labels
        area = (aug.labels == 2).sum() / (framed.labels == 2).sum()
        assert 0.75 < area < 1.3                            # zoom by at most 10 % per side


def _write(path, array):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def test_pairs_from_folder_layouts(tmp_path):
    from napari_vfmseg.training.data import pairs_from_folder

    rng = np.random.default_rng(0)
    # Layout 1: images/ + masks/ matched by name; one mask without an image is ignored.
    (tmp_path / "a" / "images").mkdir(parents=True)
    (tmp_path / "a" / "masks").mkdir()
    for name in ("case1", "case2"):
        mask = np.zeros((40, 50), np.uint8)
        mask[10:30, 10:30] = 1
        image = (rng.random((40, 50)) * 50 + 100 * mask).astype(np.uint8)
        _write(tmp_path / "a" / "images" / f"{name}.png", image)
        _write(tmp_path / "a" / "masks" / f"{name}.png", mask)
    _write(tmp_path / "a" / "masks" / "orphan.png", np.ones((40, 50), np.uint8))
    pairs = pairs_from_folder(tmp_path / "a")
    assert len(pairs) == 2 and all(p.image.shape == (40, 50) and p.image.dtype == np.uint8 for p in pairs)
    assert pairs[0].plane != pairs[1].plane and abs(pairs[0].plane - pairs[1].plane) > 1
    assert object_ids(pairs[0].labels) == [1]

    # Layout 2: NAME.nii.gz beside NAME_seg.nii.gz, a 3D pair cut into planes.
    (tmp_path / "b").mkdir()
    volume = rng.normal(0, 10, (5, 30, 30)).astype(np.float32)
    labels = np.zeros((5, 30, 30), np.uint8)
    labels[1:4, 5:20, 5:20] = 2
    _write(tmp_path / "b" / "scan.nii.gz", volume)
    _write(tmp_path / "b" / "scan_seg.nii.gz", labels)
    pairs = pairs_from_folder(tmp_path / "b", window=(0, 40))
    assert [p.plane for p in pairs] == [1, 2, 3] and object_ids(pairs[0].labels) == [2]
    train, val = split_by_plane_blocks(pairs, 0.3, block_size=1, guard=1, seed=0)
    assert len(val) >= 1 and all(abs(t.plane - v.plane) > 1 for t in train for v in val)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image/mask pairs"):
        pairs_from_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        pairs_from_folder(tmp_path / "missing")

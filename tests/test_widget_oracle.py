"""Coordinates end to end: with an oracle model, box → plane → preview → commit → export is exact.

The oracle answers a box on a plane with the ground-truth object inside that box on that plane.
Any slip between napari's world coordinates, the image's array axes, the displayed plane and the
engine's (row, col) shows up as a mask that differs from the ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest

from _tiny_models import synthetic_volume, tiny_loaded_model
from napari_vfmseg._layer_geometry import GEOMETRY_KEY
from napari_vfmseg.engine import Prediction, Segmenter
from napari_vfmseg.io import read_volume
from napari_vfmseg.widgets.annotator import AnnotatorWidget
from napari_vfmseg.annotation.planes import plane_axes
from napari_vfmseg.annotation.prompts import clip_box

TIMEOUT = 10_000


class OracleSegmenter(Segmenter):
    """A real Segmenter (real embeddings, cache, prefetch) whose masks come from the ground truth."""

    def __init__(self, model, truth: np.ndarray, label: int):
        super().__init__(model)
        self.truth = np.asarray(truth)
        self.label = int(label)
        self.axis = None
        self.boxes = []

    def set_volume(self, volume, axis=0, window=None, modality=None, spacing=None):
        self.axis = axis
        return super().set_volume(volume, axis=axis, window=window, modality=modality, spacing=spacing)

    def set_image(self, image, window=None, modality=None, spacing=None):
        self.axis = None
        return super().set_image(image, window=window, modality=modality, spacing=spacing)

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask=None, plane=None):
        truth = self.truth if self.axis is None else np.take(self.truth, plane, axis=self.axis)
        rows, cols = np.mgrid[: truth.shape[0], : truth.shape[1]]
        r0, c0, r1, c1 = box
        mask = (truth == self.label) & (rows >= r0) & (rows <= r1) & (cols >= c0) & (cols <= c1)
        self.boxes.append((plane, tuple(box)))
        side = int(self.sam.prompt_encoder.mask_input_size[0])
        return Prediction(mask, 1.0, np.zeros((side, side), np.float32), np.ones(1, np.float32),
                          np.zeros((1, side, side), np.float32), 0, False, plane)


def ground_truth_box(truth_plane: np.ndarray, label: int, margin: int = 2):
    rows, cols = np.nonzero(truth_plane == label)
    return (float(rows.min() - margin), float(cols.min() - margin), float(rows.max() + margin), float(cols.max() + margin))


@pytest.mark.parametrize(
    "order, flipped",
    [((0, 1, 2), False), ((1, 0, 2), False), ((2, 0, 1), False), ((0, 1, 2), True)],
    ids=["axis0", "axis1", "axis2", "axis0-flipped-affine"],
)
def test_oracle_pipeline_reproduces_ground_truth_on_every_display_axis(make_napari_viewer, qtbot, tmp_path, order, flipped):
    image, truth = synthetic_volume(planes=12, size=48, seed=4)
    spacing, origin = (2.5, 0.7, 0.9), (-3.0, 4.0, 1.5)
    direction = np.diag([1.0, -1.0, 1.0]) if flipped else np.eye(3)   # a flipped row axis needs an affine
    viewer = make_napari_viewer(show=False)
    metadata = {GEOMETRY_KEY: {"spacing": list(spacing), "origin": list(origin), "direction": direction.tolist()}}
    if flipped:
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(spacing)
        affine[:3, 3] = origin
        layer = viewer.add_image(image, name="vol", affine=affine, metadata=metadata)
    else:
        layer = viewer.add_image(image, name="vol", scale=spacing, translate=origin, metadata=metadata)
    viewer.dims.order = order
    axis = order[0]
    label = 1
    counts = (np.moveaxis(truth, axis, 0) == label).reshape(truth.shape[axis], -1).sum(axis=1)
    index = int(np.argmax(counts))
    viewer.dims.set_current_step(axis, index)

    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget)
    oracle = OracleSegmenter(tiny_loaded_model(seed=1), truth, label)
    try:
        widget.use_segmenter(oracle)
        qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy, timeout=TIMEOUT)
        plane = widget.current_plane()
        assert (plane.axis, plane.index) == (axis, index) and oracle.axis == axis
        truth_plane = np.take(truth, index, axis=axis)
        box = ground_truth_box(truth_plane, label)
        widget.add_box(box)   # placed in the Shapes layer through world coordinates
        qtbot.waitUntil(lambda: not widget.busy and widget.session.mask(plane) is not None, timeout=TIMEOUT)
        assert oracle.boxes[-1][0] == index
        np.testing.assert_allclose(oracle.boxes[-1][1], clip_box(box, truth_plane.shape), atol=1e-6)  # margin clipped at the edge

        expected = np.zeros_like(truth, dtype=bool)
        region = [slice(None)] * 3
        region[axis] = index
        expected[tuple(region)] = truth_plane == label
        np.testing.assert_array_equal(widget.session.preview.astype(bool), expected)
        record = widget.commit(name="object one")
        np.testing.assert_array_equal(widget.labels_layer.data == record.id, expected)

        result = widget.export(tmp_path / "oracle.nii.gz")
        written = read_volume(result.labels)
        np.testing.assert_array_equal(written.array == record.id, expected)
        np.testing.assert_allclose(written.spacing, spacing, rtol=1e-5)
        np.testing.assert_allclose(written.origin, origin, atol=1e-4)
        np.testing.assert_allclose(written.direction, direction, atol=1e-6)
        assert plane_axes(3, axis) == tuple(a for a in range(3) if a != axis)
    finally:
        widget.shutdown()


def test_oracle_2d_image(make_napari_viewer, qtbot):
    _, truth3d = synthetic_volume(planes=5, size=40, seed=5)
    truth = truth3d[2]
    image = (truth * 80 + 20).astype(np.uint8)
    viewer = make_napari_viewer(show=False)
    viewer.add_image(image, name="slice", scale=(0.6, 0.6))
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget)
    try:
        widget.use_segmenter(OracleSegmenter(tiny_loaded_model(seed=1), truth, 2))
        qtbot.waitUntil(lambda: widget.engine_ready and not widget.busy, timeout=TIMEOUT)
        widget.add_box(ground_truth_box(truth, 2))
        qtbot.waitUntil(lambda: not widget.busy and widget.session.preview.any(), timeout=TIMEOUT)
        np.testing.assert_array_equal(widget.session.preview.astype(bool), truth == 2)
        record = widget.commit()
        np.testing.assert_array_equal(widget.labels_layer.data == record.id, truth == 2)
    finally:
        widget.shutdown()

"""Coronal and sagittal views of a scan show the patient's head at the top (radiological display)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vfmseg._layer_geometry import GEOMETRY_KEY
from napari_vfmseg.widgets.annotator import AnnotatorWidget
from napari_vfmseg._view_orientation import is_scan_layer, vertical_direction


def test_only_a_vertical_world_z_of_a_3d_scan_points_up():
    assert vertical_direction((1, 2), 3) == "down"   # axial: rows are y, anterior already up
    assert vertical_direction((0, 2), 3) == "up"     # coronal: rows are z
    assert vertical_direction((0, 1), 3) == "up"     # sagittal
    assert vertical_direction((2, 0), 3) == "down"   # z across the screen: nothing to turn
    assert vertical_direction((0, 1), 2) == "down"   # a 2D image


def _head_bright_volume() -> np.ndarray:
    """(z, y, x): the planes nearest the head (highest z) bright, the rest a dim grey (-100 HU, which
    the widget's CT window shows dim too: it sets the contrast to the window the model sees)."""
    volume = np.full((30, 40, 50), -100.0, dtype=np.float32)
    volume[22:] = 1000.0
    return volume


def _canvas_rows_brightness(viewer) -> tuple[float, float]:
    shot = viewer.screenshot(canvas_only=True, flash=False).astype(float)[..., :3].mean(axis=2)
    lit = shot > 0  # the image itself, not the black canvas around it
    rows = np.nonzero(lit.any(axis=1))[0]
    top, bottom = rows.min(), rows.max()
    middle = (top + bottom) // 2
    return float(shot[top:middle].mean()), float(shot[middle:bottom].mean())


@pytest.mark.parametrize("order", [(1, 0, 2), (2, 0, 1)], ids=["coronal", "sagittal"])
def test_the_annotator_shows_a_scan_head_up(make_napari_viewer, qtbot, order):
    viewer = make_napari_viewer(show=True)  # a shown canvas, so the screenshot is what a user sees
    geometry = {"spacing": [2.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0], "direction": np.eye(3).tolist(), "modality": "CT"}
    layer = viewer.add_image(_head_bright_volume(), name="ct", scale=(2.0, 1.0, 1.0), contrast_limits=(0, 1000),
                             metadata={GEOMETRY_KEY: geometry})
    assert is_scan_layer(layer)
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget, name="Segment (VFM)")
    try:
        assert widget.image_layer is layer
        assert str(viewer.camera.orientation2d[0]) == "down"      # axial: napari's default is right
        viewer.dims.order = order
        assert str(viewer.camera.orientation2d[0]) == "up"
        viewer.reset_view()
        top, bottom = _canvas_rows_brightness(viewer)
        assert top > 2 * bottom                                # the bright head end is drawn at the top
        viewer.dims.order = (0, 1, 2)
        assert str(viewer.camera.orientation2d[0]) == "down"
    finally:
        widget.shutdown()


def test_a_plain_3d_array_keeps_napari_s_orientation(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(_head_bright_volume(), name="array")
    assert not is_scan_layer(layer)
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget, name="Segment (VFM)")
    try:
        viewer.dims.order = (1, 0, 2)
        assert str(viewer.camera.orientation2d[0]) == "down"  # no patient frame known: nothing is turned
    finally:
        widget.shutdown()

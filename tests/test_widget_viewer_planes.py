"""Which plane the viewer shows and which planes a brush touched: pure functions of napari's dims
and a layer's transform, checked here with plain stand-ins (no Qt, no viewer)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from napari_vfmseg.annotation.planes import Plane
from napari_vfmseg.widgets.viewer_planes import current_plane, displayed_axis, painted_planes

SHAPE = (10, 20, 30)


class AffineLayer:
    """A layer stand-in: world = matrix @ data + offset (napari's data_to_world / world_to_data)."""

    def __init__(self, matrix, offset=(0.0, 0.0, 0.0)):
        self.matrix, self.offset = np.asarray(matrix, float), np.asarray(offset, float)

    def data_to_world(self, point):
        return self.matrix @ np.asarray(point, float) + self.offset

    def world_to_data(self, point):
        return np.linalg.solve(self.matrix, np.asarray(point, float) - self.offset)


def _dims(order=(0, 1, 2), point=(0.0, 0.0, 0.0), ndisplay=2, ndim=3):
    return SimpleNamespace(ndisplay=ndisplay, ndim=ndim, not_displayed=tuple(order[: ndim - ndisplay]), point=point)


def test_scaled_layer_maps_the_viewer_point_to_the_plane_index():
    layer = AffineLayer(np.diag([3.0, 0.8, 0.9]), offset=(5.0, -2.0, 1.0))
    assert displayed_axis(_dims(), layer, SHAPE) == 0
    assert current_plane(_dims(point=(5.0 + 3.0 * 4, 0, 0)), layer, SHAPE) == Plane(0, 4)
    assert current_plane(_dims(point=(5.0 + 3.0 * 4.4, 0, 0)), layer, SHAPE) == Plane(0, 4)      # nearest plane
    assert current_plane(_dims(point=(1000.0, 0, 0)), layer, SHAPE) == Plane(0, 9)                # clipped
    coronal = _dims(order=(1, 0, 2), point=(0, -2.0 + 0.8 * 13, 0))
    assert current_plane(coronal, layer, SHAPE) == Plane(1, 13)
    assert current_plane(_dims(ndisplay=3), layer, SHAPE) is None                                  # a 3D view
    assert current_plane(_dims(ndim=2), AffineLayer(np.eye(2)), (20, 30)) == Plane(None, 0)      # a 2D image


def test_permuted_and_flipped_affine_finds_the_array_axis_through_the_transform():
    # array axis 2 runs along world axis 0 (flipped), array axis 0 along world axis 2
    matrix = np.array([[0.0, 0.0, -2.0], [0.0, 1.0, 0.0], [1.5, 0.0, 0.0]])
    layer = AffineLayer(matrix, offset=(60.0, 0.0, 0.0))
    assert displayed_axis(_dims(), layer, SHAPE) == 2
    world = layer.data_to_world((3, 7, 21))
    assert current_plane(_dims(point=tuple(world)), layer, SHAPE) == Plane(2, 21)
    assert displayed_axis(_dims(order=(2, 0, 1)), layer, SHAPE) == 0


def test_extra_viewer_dimensions_are_ignored_and_two_sliced_axes_give_none():
    layer = AffineLayer(np.eye(3))
    four = SimpleNamespace(ndisplay=2, ndim=4, not_displayed=(0, 1), point=(7.0, 6.0, 0.0, 0.0))
    assert displayed_axis(four, layer, SHAPE) == 0 and current_plane(four, layer, SHAPE) == Plane(0, 6)
    assert displayed_axis(SimpleNamespace(ndisplay=1, ndim=3, not_displayed=(0, 1)), layer, SHAPE) is None


def test_painted_planes_from_both_kinds_of_history_atoms():
    masked = SimpleNamespace(slice_key=(slice(3, 6), slice(None), slice(2, 9)))
    assert painted_planes([masked], 0, SHAPE) == [Plane(0, 3), Plane(0, 4), Plane(0, 5)]
    assert painted_planes([masked], 2, SHAPE) == [Plane(2, i) for i in range(2, 9)]
    indexed = ((np.array([1, 1, 8]), np.array([0, 2, 4]), np.array([5, 5, 5])), None, None)
    assert painted_planes([indexed], 0, SHAPE) == [Plane(0, 1), Plane(0, 8)]
    assert painted_planes([masked, indexed], 0, SHAPE) == [Plane(0, i) for i in (1, 3, 4, 5, 8)]
    assert painted_planes([masked], None, (20, 30)) == [Plane(None, 0)]
    assert painted_planes([], 0, SHAPE) == [] and painted_planes(["?"], 0, SHAPE) == []

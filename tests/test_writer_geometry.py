"""The napari writer keeps every labels layer's geometry: rotate, affine, scale and translate of a
plain layer are written exactly (the file places each voxel where napari shows it); a sheared
layer is refused with a message."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_vfmseg._writer import LayerWriteError
from napari_vfmseg.io import read_volume


def _labels(shape=(4, 5, 6)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[1:3, 2:4, 1:5] = 2
    return labels


def _assert_file_places_voxels_like_the_layer(path, layer):
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.array, layer.data)
    for index in [(0, 0, 0), (1, 2, 3), (3, 4, 5)][: 3 if layer.ndim == 3 else 0] or [(0, 0), (2, 3), (4, 1)]:
        index = np.asarray(index[-layer.ndim:], dtype=float)
        world = np.asarray(layer.data_to_world(index))
        placed = np.asarray(vol.origin) + vol.direction @ (np.asarray(vol.spacing) * index)
        np.testing.assert_allclose(placed, world, atol=1e-4)


def test_rotated_scaled_translated_layer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    rotation = Rotation.from_euler("zyx", [30, -20, 10], degrees=True).as_matrix()
    layer = viewer.add_labels(_labels(), scale=(3.0, 0.8, 0.7), translate=(5.0, -2.0, 10.0), rotate=rotation)
    out = tmp_path / "rotated.nii.gz"
    assert layer.save(str(out), plugin="napari-vfmseg") == [str(out)]
    _assert_file_places_voxels_like_the_layer(out, layer)
    assert read_volume(out).is_oblique


def test_layer_with_an_affine_on_top_of_scale(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("x", 25, degrees=True).as_matrix()
    affine[:3, 3] = (1.0, 2.0, 3.0)
    layer = viewer.add_labels(_labels(), scale=(2.0, 1.0, 0.5), affine=affine)
    out = tmp_path / "affine.nrrd"
    layer.save(str(out), plugin="napari-vfmseg")
    _assert_file_places_voxels_like_the_layer(out, layer)


def test_rotated_2d_layer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels()[1], scale=(0.5, 0.25), translate=(3.0, 4.0), rotate=40)
    out = tmp_path / "plane.mha"
    layer.save(str(out), plugin="napari-vfmseg")
    _assert_file_places_voxels_like_the_layer(out, layer)


def test_sheared_layer_is_refused_and_nothing_is_written(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels(), name="slanted", scale=(2.0, 1.0, 1.0), shear=(0.0, 0.3, 0.0),
                              rotate=Rotation.from_euler("z", 15, degrees=True).as_matrix())
    out = tmp_path / "sheared.nii.gz"
    with pytest.raises(LayerWriteError, match=r"'slanted'.*is sheared \(two of its axes meet at 73.30 degrees"):
        layer.save(str(out), plugin="napari-vfmseg")
    assert not out.exists()

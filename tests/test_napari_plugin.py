"""The npe2 contributions (reader, writer, sample data) through a real napari viewer."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vfmseg._reader import get_reader
from napari_vfmseg._writer import write_labels_layer
from napari_vfmseg.io import read_volume

OBLIQUE = (0.9, -0.1, 0.4, 0.2, 0.95, -0.2, -0.38, 0.28, 0.88)


def _orthonormal(direction9):
    m = np.asarray(direction9, float).reshape(3, 3)
    q, r = np.linalg.qr(m)
    return q * np.sign(np.diag(r))


def _write_image(path, array, spacing_xyz, origin_xyz, direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin_xyz)
    if direction is not None:
        image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def ct_nifti(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.normal(40, 30, size=(6, 20, 24)).astype(np.int16)
    array[:, :3] = -1000
    return _write_image(tmp_path / "ct.nii.gz", array, (0.7, 0.8, 3.0), (-10.0, 20.0, 5.5))


def test_reader_returns_none_for_foreign_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert get_reader(str(text)) is None
    assert get_reader(str(tmp_path / "missing.xyz")) is None


def test_reader_places_volume_in_millimetres(make_napari_viewer, ct_nifti):
    viewer = make_napari_viewer()
    layers = viewer.open(str(ct_nifti), plugin="napari-vfmseg")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.data.shape == (6, 20, 24)
    # ITK (x, y, z) spacing (0.7, 0.8, 3.0) becomes napari (plane, row, col) = (3.0, 0.8, 0.7)
    np.testing.assert_allclose(layer.scale, (3.0, 0.8, 0.7))
    np.testing.assert_allclose(layer.translate, (5.5, 20.0, -10.0))
    low, high = layer.contrast_limits
    assert low < high
    # physical extent along planes is 6 * 3 mm, along columns 24 * 0.7 mm
    extent = np.asarray(layer.extent.world)
    np.testing.assert_allclose(extent[1] - extent[0], (6 * 3.0, 20 * 0.8, 24 * 0.7), atol=3.1)


def test_oblique_volume_displayed_with_affine(make_napari_viewer, tmp_path):
    direction = _orthonormal(OBLIQUE)
    path = _write_image(tmp_path / "oblique.nrrd", np.zeros((4, 5, 6), np.int16), (1.0, 1.5, 2.0), (1.0, 2.0, 3.0), direction)
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="oblique"):
        layer = viewer.open(str(path), plugin="napari-vfmseg")[0]
    # the voxel (plane=1, row=2, col=3) lands where ITK puts index (x=3, y=2, z=1)
    itk = sitk.ReadImage(str(path))
    expected_xyz = np.asarray(itk.TransformIndexToPhysicalPoint((3, 2, 1)))
    world = np.asarray(layer.data_to_world((1, 2, 3)))
    np.testing.assert_allclose(world, expected_xyz[::-1], atol=1e-6)


def test_writer_keeps_source_geometry(make_napari_viewer, tmp_path):
    direction = _orthonormal(OBLIQUE)
    src = _write_image(tmp_path / "src.mha", np.zeros((4, 5, 6), np.int16), (1.0, 1.5, 2.0), (1.0, 2.0, 3.0), direction)
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="oblique"):
        image = viewer.open(str(src), plugin="napari-vfmseg")[0]
    labels = np.zeros(image.data.shape, np.uint8)
    labels[1:3, 2:4, 1:5] = 3
    layer = viewer.add_labels(labels, metadata=dict(image.metadata), affine=image.affine)
    out = tmp_path / "labels.nii.gz"
    written = layer.save(str(out), plugin="napari-vfmseg")
    assert written == [str(out)]
    back = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(src))
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)


def test_writer_without_source_uses_layer_scale(tmp_path):
    labels = np.zeros((3, 4, 5), np.uint16)
    labels[1, 1, 1] = 300
    out = tmp_path / "plain.nrrd"
    write_labels_layer(str(out), labels, {"scale": (2.0, 0.5, 0.25), "translate": (7.0, 8.0, 9.0), "metadata": {}})
    vol = read_volume(out)
    np.testing.assert_allclose(vol.spacing, (2.0, 0.5, 0.25))
    np.testing.assert_allclose(vol.origin, (7.0, 8.0, 9.0))
    assert vol.array.max() == 300


def test_reader_error_is_a_notification_not_a_crash(make_napari_viewer, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="broken.nii.gz"):
        viewer.open(str(broken), plugin="napari-vfmseg")
    assert len(viewer.layers) == 0


@pytest.mark.parametrize("sample", ["abdomen_ct", "brain_mr"])
def test_sample_data_menu_loads_image_and_labels(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vfmseg", sample)
    image, labels = viewer.layers
    assert image.data.ndim == 3 and labels.data.shape == image.data.shape
    np.testing.assert_allclose(image.scale, labels.scale)
    assert image.scale[0] > image.scale[1]  # anisotropic: thicker planes than pixels
    assert set(np.unique(labels.data)) - {0}
    assert labels.metadata["label_names"]


def test_2d_sample_loads_as_a_plane(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vfmseg", "ultrasound_2d")
    image, labels = viewer.layers
    assert image.data.ndim == 2 and labels.data.shape == image.data.shape
    assert set(np.unique(labels.data)) >= {0, 1, 2, 3}


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-vfmseg")
    assert {c.key for c in manifest.contributions.sample_data} == {"abdomen_ct", "brain_mr", "ultrasound_2d"}
    assert manifest.contributions.readers[0].accepts_directories

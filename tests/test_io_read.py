"""read_volume on each supported format: values, napari axis order and geometry."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from _io_helpers import oblique_direction_itk, ramp_volume, write_itk
from napari_vfmseg.io import SUPPORTED_READ_EXTENSIONS, Volume, is_supported_path, read_volume


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.nrrd", "ct.nhdr", "ct.mha", "ct.mhd"])
def test_each_3d_format_reads_values_and_geometry_in_array_order(tmp_path, name):
    array = ramp_volume((4, 5, 6))
    path = write_itk(tmp_path / name, array, spacing_xyz=(0.7, 0.8, 3.0), origin_xyz=(-10.0, 20.0, 5.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an axis-aligned volume must not warn
        vol = read_volume(path)
    np.testing.assert_array_equal(vol.array, array)
    assert vol.array.dtype == np.int16
    np.testing.assert_allclose(vol.spacing, (3.0, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(vol.origin, (5.5, 20.0, -10.0), rtol=1e-6)
    np.testing.assert_allclose(vol.scale, vol.spacing)
    np.testing.assert_allclose(vol.translate, vol.origin)
    assert vol.ndim_spatial == 3 and not vol.is_rgb and not vol.is_oblique
    assert vol.path == str(path)


def test_oblique_volume_warns_and_keeps_direction_in_affine(tmp_path):
    direction = oblique_direction_itk()
    path = write_itk(tmp_path / "tilted.nrrd", ramp_volume((3, 4, 5)), (1.0, 1.5, 2.0), (1.0, 2.0, 3.0), direction)
    with pytest.warns(UserWarning, match="oblique.*affine"):
        vol = read_volume(path)
    assert vol.is_oblique and not vol.has_identity_direction
    np.testing.assert_allclose(vol.direction, direction[::-1, ::-1], atol=1e-9)
    reference = sitk.ReadImage(str(path))
    for index_xyz in [(0, 0, 0), (4, 3, 2), (1, 2, 1)]:
        expected = np.asarray(reference.TransformIndexToPhysicalPoint(index_xyz))[::-1]
        homogeneous = np.append(np.asarray(index_xyz[::-1], float), 1.0)
        np.testing.assert_allclose((vol.affine @ homogeneous)[:3], expected, atol=1e-9)


def test_flipped_axes_are_not_called_oblique(tmp_path):
    flip = np.diag([-1.0, -1.0, 1.0])  # what a RAS-aligned NIfTI looks like in ITK's LPS
    path = write_itk(tmp_path / "ras.nii.gz", ramp_volume((2, 3, 4)), direction_itk=flip)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = read_volume(path)
    assert not vol.is_oblique and not vol.has_identity_direction
    np.testing.assert_allclose(vol.affine[:3, :3], np.diag([3.0, -0.8, -0.7]), atol=1e-6)


def test_png_grey_is_2d_and_rgb_stays_rgb(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    write_itk(tmp_path / "grey.png", grey)
    write_itk(tmp_path / "rgb.png", rgb, is_vector=True)
    vol_grey = read_volume(tmp_path / "grey.png")
    vol_rgb = read_volume(tmp_path / "rgb.png")
    assert vol_grey.array.shape == (7, 9) and not vol_grey.is_rgb and vol_grey.ndim_spatial == 2
    np.testing.assert_array_equal(vol_grey.array, grey)
    assert vol_rgb.array.shape == (7, 9, 3) and vol_rgb.is_rgb and vol_rgb.ndim_spatial == 2
    np.testing.assert_array_equal(vol_rgb.array, rgb)
    assert vol_rgb.spatial_shape == (7, 9) and len(vol_rgb.scale) == 2


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.random.default_rng(2).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    write_itk(tmp_path / "rgba.png", rgba, is_vector=True)
    vol = read_volume(tmp_path / "rgba.png")
    assert vol.is_rgb
    np.testing.assert_array_equal(vol.array, rgba[..., :3])


def test_tiff_and_jpeg(tmp_path):
    grey16 = (np.arange(6 * 8, dtype=np.uint16).reshape(6, 8) * 1000).astype(np.uint16)
    write_itk(tmp_path / "grey.tif", grey16)
    vol = read_volume(tmp_path / "grey.tif")
    np.testing.assert_array_equal(vol.array, grey16)
    assert vol.array.dtype == np.uint16

    smooth = np.zeros((16, 16, 3), np.uint8)
    smooth[..., 0] = 200
    smooth[..., 2] = np.arange(16, dtype=np.uint8)[None, :] * 8
    write_itk(tmp_path / "photo.jpg", smooth, is_vector=True)
    vol = read_volume(tmp_path / "photo.jpg")
    assert vol.is_rgb and vol.array.shape == (16, 16, 3)
    assert np.abs(vol.array.astype(int) - smooth).mean() < 6  # JPEG is lossy, but close


def test_singleton_fourth_axis_is_dropped(tmp_path):
    volume3d = sitk.GetImageFromArray(ramp_volume((2, 3, 4)))
    volume3d.SetSpacing((0.5, 0.6, 2.0))
    four = sitk.JoinSeries([volume3d])
    sitk.WriteImage(four, str(tmp_path / "t1.nii.gz"))
    vol = read_volume(tmp_path / "t1.nii.gz")
    np.testing.assert_array_equal(vol.array, ramp_volume((2, 3, 4)))
    np.testing.assert_allclose(vol.spacing, (2.0, 0.6, 0.5), rtol=1e-6)


def test_volume_sitk_round_trip_keeps_everything():
    direction = oblique_direction_itk()[::-1, ::-1]
    vol = Volume(ramp_volume((3, 4, 5)), spacing=(2.0, 0.5, 0.25), origin=(7.0, -8.0, 9.0), direction=direction)
    image = vol.to_sitk()
    assert image.GetSize() == (5, 4, 3)
    np.testing.assert_allclose(image.GetSpacing(), (0.25, 0.5, 2.0))
    np.testing.assert_allclose(image.GetOrigin(), (9.0, -8.0, 7.0))
    back = Volume.from_sitk(image)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.direction, direction)
    np.testing.assert_allclose(back.affine, vol.affine)


def test_volume_rejects_inconsistent_geometry():
    with pytest.raises(ValueError, match="spacing"):
        Volume(np.zeros((2, 3, 4)), spacing=(1.0, 1.0), origin=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="positive"):
        Volume(np.zeros((2, 3, 4)), spacing=(1.0, 0.0, 1.0), origin=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="direction"):
        Volume(np.zeros((2, 3)), spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=np.eye(3))


def test_summary_reports_geometry_and_range(tmp_path):
    array = ramp_volume((2, 3, 4))
    array[0, 0, 0] = -1000
    vol = read_volume(write_itk(tmp_path / "s.mha", array, (0.5, 0.6, 2.0), (1.0, 2.0, 3.0)))
    summary = vol.summary()
    assert summary["shape"] == [2, 3, 4] and summary["dtype"] == "int16"
    assert summary["spacing"] == pytest.approx([2.0, 0.6, 0.5])
    assert summary["origin"] == pytest.approx([3.0, 2.0, 1.0])
    assert summary["value_range"] == [-1000.0, float(array.max())]
    assert summary["axes"] == "plane,row,col" and summary["is_oblique"] is False


def test_is_supported_path(tmp_path):
    nifti = write_itk(tmp_path / "a.nii.gz", ramp_volume((2, 2, 2)))
    (tmp_path / "notes.txt").write_text("hello")
    dicom_like = tmp_path / "IM0001"  # no extension, DICOM magic at byte 128
    dicom_like.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    folder_with_dicom = tmp_path / "series"
    folder_with_dicom.mkdir()
    (folder_with_dicom / "x.dcm").write_bytes(b"\0" * 200)
    plain_folder = tmp_path / "plain"
    plain_folder.mkdir()
    (plain_folder / "readme.txt").write_text("no images")
    assert is_supported_path(nifti)
    assert is_supported_path(dicom_like)
    assert is_supported_path(folder_with_dicom)
    assert not is_supported_path(tmp_path / "notes.txt")
    assert not is_supported_path(plain_folder)
    assert not is_supported_path(tmp_path / "missing.xyz")
    assert {".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".jpg"} <= set(
        SUPPORTED_READ_EXTENSIONS
    )

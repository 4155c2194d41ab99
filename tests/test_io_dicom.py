"""DICOM series: writing with write_dicom_series, reading folders, series choice, slice order, HU."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from _io_helpers import oblique_direction_itk, write_itk
from napari_vfmseg.io import VolumeReadError, read_volume, write_dicom_series


def _hu_phantom(shape=(6, 5, 7)) -> np.ndarray:
    """(plane, row, col) HU values, distinct per plane so slice order is checkable: air to bone."""
    planes, rows, cols = np.indices(shape)
    return (-1000 + 300 * planes + 7 * rows + cols).astype(np.float64)


def _read_with_sitk(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _stored_pixels(path, shape2d) -> np.ndarray:
    """The raw int16 pixel values: Pixel Data is the last element of the file GDCM writes."""
    n = shape2d[0] * shape2d[1]
    return np.frombuffer(path.read_bytes()[-2 * n :], dtype="<i2").reshape(shape2d)


@pytest.mark.parametrize("oblique", [False, True])
def test_written_series_reads_back_with_simpleitk(tmp_path, oblique):
    hu = _hu_phantom()
    direction_itk = oblique_direction_itk() if oblique else np.eye(3)
    uid = write_dicom_series(
        tmp_path / "ct", hu, spacing=(2.5, 0.8, 0.7), origin=(30.0, -20.0, 10.0), direction=direction_itk[::-1, ::-1]
    )
    image = _read_with_sitk(tmp_path / "ct")
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.8, 2.5), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), (10.0, -20.0, 30.0), atol=1e-6)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), direction_itk, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)
    assert uid.startswith("2.25.") and len(uid) <= 64


def test_stored_values_are_rescaled_and_tags_set(tmp_path):
    hu = _hu_phantom((2, 3, 4))
    write_dicom_series(tmp_path / "ct", hu, spacing=(3.0, 1.0, 1.0), rescale_intercept=-1024.0)
    first = tmp_path / "ct" / "slice_0000.dcm"
    np.testing.assert_array_equal(_stored_pixels(first, (3, 4)), hu[0] + 1024)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(first))
    reader.ReadImageInformation()
    assert reader.GetMetaData("0028|1052").strip() == "-1024"
    assert reader.GetMetaData("0008|0060").strip() == "CT"
    assert reader.GetMetaData("0020|0013").strip() == "1"

    vol = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(vol.array, hu)  # HU back, not stored values
    assert vol.array.dtype == np.int16 and vol.modality == "CT"


def test_non_integer_slope_gives_float32_hu(tmp_path):
    hu = _hu_phantom((2, 3, 4)) + 0.5
    write_dicom_series(tmp_path / "ct", hu, spacing=(3.0, 1.0, 1.0), rescale_slope=0.5, rescale_intercept=-1024.0)
    vol = read_volume(tmp_path / "ct")
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, hu)


def test_slices_follow_position_not_file_names(tmp_path):
    hu = _hu_phantom((7, 4, 5))
    write_dicom_series(
        tmp_path / "ct", hu, spacing=(2.0, 1.0, 1.0), origin=(-50.0, 0.0, 0.0), shuffle_names=True, seed=3
    )
    files = sorted((tmp_path / "ct").iterdir())
    first_file_plane = (_stored_pixels(files[0], (4, 5))[0, 0] - 1024 + 1000) // 300
    assert first_file_plane != 0  # names really are shuffled
    vol = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.origin, (-50.0, 0.0, 0.0))
    np.testing.assert_allclose(vol.spacing, (2.0, 1.0, 1.0))


def test_oblique_series_warns_and_keeps_direction(tmp_path):
    direction = oblique_direction_itk()[::-1, ::-1]
    write_dicom_series(tmp_path / "ct", _hu_phantom((3, 4, 5)), spacing=(2.0, 1.0, 0.5), direction=direction)
    with pytest.warns(UserWarning, match="oblique"):
        vol = read_volume(tmp_path / "ct")
    np.testing.assert_allclose(vol.direction, direction, atol=1e-6)


def test_folder_with_two_series_picks_the_bigger_and_honours_series_uid(tmp_path):
    folder = tmp_path / "study"
    big = _hu_phantom((5, 4, 4))
    small = -_hu_phantom((2, 4, 4)) - 500
    uid_big = write_dicom_series(
        folder, big, (2.0, 1.0, 1.0), series_description="big axial", file_pattern="a{:03d}.dcm"
    )
    uid_small = write_dicom_series(
        folder, small, (2.0, 1.0, 1.0), series_description="scout", file_pattern="b{:03d}.dcm", seed=1
    )
    assert uid_big != uid_small
    with pytest.warns(UserWarning, match=uid_big) as record:
        vol = read_volume(folder)
    assert "big axial" in str(record[0].message)
    np.testing.assert_array_equal(vol.array, big)
    assert vol.metadata["dicom_series_uid"] == uid_big
    assert vol.metadata["dicom_n_series_in_folder"] == 2

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit choice is not warned about
        chosen = read_volume(folder, series_uid=uid_small)
    np.testing.assert_array_equal(chosen.array, small)
    assert chosen.metadata["dicom_series_description"] == "scout"

    with pytest.raises(VolumeReadError, match="no DICOM series with UID 1.2.3") as info:
        read_volume(folder, series_uid="1.2.3")
    assert uid_big in str(info.value) and "study" in str(info.value)


def test_single_dicom_file(tmp_path):
    hu = _hu_phantom((3, 4, 5))
    write_dicom_series(
        tmp_path / "ct", hu, (2.0, 0.9, 0.6), origin=(12.0, 0.0, 0.0), modality="MR", rescale_intercept=-2000
    )
    vol = read_volume(tmp_path / "ct" / "slice_0001.dcm")
    assert vol.modality == "MR"
    np.testing.assert_array_equal(vol.array.reshape(4, 5), hu[1])
    np.testing.assert_allclose(vol.origin[0], 14.0)
    np.testing.assert_allclose(vol.spacing[1:], (0.9, 0.6))


def test_inconsistent_slice_sizes_are_refused(tmp_path):
    folder = tmp_path / "mixed"
    uid = write_dicom_series(folder, _hu_phantom((3, 4, 5)), (2.0, 1.0, 1.0), file_pattern="a{:03d}.dcm")
    write_dicom_series(
        folder,
        _hu_phantom((2, 6, 5)),
        (2.0, 1.0, 1.0),
        origin=(6.0, 0.0, 0.0),
        series_uid=uid,
        file_pattern="b{:03d}.dcm",
    )
    with pytest.raises(VolumeReadError, match="inconsistent sizes") as info:
        read_volume(folder)
    assert "mixed" in str(info.value)


def test_writer_refuses_what_dicom_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="left-handed"):
        write_dicom_series(tmp_path / "a", _hu_phantom((2, 2, 2)), (1.0, 1.0, 1.0), direction=np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="fits neither"):
        write_dicom_series(tmp_path / "b", np.full((2, 2, 2), 1e6), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="plane, row, col"):
        write_dicom_series(tmp_path / "c", np.zeros((4, 4)), (1.0, 1.0, 1.0))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_uids_are_reproducible(tmp_path):
    hu = _hu_phantom((2, 3, 3))
    first = write_dicom_series(tmp_path / "x", hu, (1.0, 1.0, 1.0), seed=5)
    again = write_dicom_series(tmp_path / "y", hu, (1.0, 1.0, 1.0), seed=5)
    other = write_dicom_series(tmp_path / "z", hu, (1.0, 1.0, 1.0), seed=6)
    assert first == again != other


def test_volume_round_trips_through_a_series(tmp_path):
    array = _hu_phantom((4, 3, 5)).astype(np.int16)
    source = read_volume(write_itk(tmp_path / "src.nrrd", array, (0.6, 0.9, 2.5), (4.0, -3.0, 2.0)))
    write_dicom_series(tmp_path / "ct", source.array, source.spacing, source.origin, source.direction)
    again = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(again.array, source.array)
    np.testing.assert_allclose(again.affine, source.affine, atol=1e-6)


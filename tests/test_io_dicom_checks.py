"""DICOM series checked against the slices' own positions: gaps, uneven spacing, duplicates, shear,
mixed modalities, missing pixel data, inconsistent slices and per-slice rescale — each through
read_volume, napari's reader and `vfmseg segment`."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from _dicom_builders import clean_series, duplicate, edit, move, slice_file
from napari_vfmseg._reader import read_layers
from napari_vfmseg.cli import main
from napari_vfmseg.io import VolumeReadError, read_volume, write_dicom_series


def _quiet_read(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean series reads without any warning
        return read_volume(path, **kwargs)


def test_clean_series_reads_without_warning_and_keeps_its_sources(tmp_path):
    folder, hu, uid = clean_series(tmp_path / "ct")
    vol = _quiet_read(folder)
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7))
    assert vol.metadata["dicom_interpolated_planes"] == []
    assert [p.split("/")[-1] for p in vol.metadata["dicom_plane_files"]] == [f"slice_{k:04d}.dcm" for k in range(8)]
    assert vol.metadata["dicom_series_uid"] == uid and vol.metadata["dicom_frame_of_reference_uid"]


def test_missing_slice_is_read_at_the_true_positions_with_a_warning(tmp_path):
    folder, hu, _ = clean_series(tmp_path / "ct")
    slice_file(folder, 4).unlink()
    with pytest.warns(UserWarning, match=r"slices 3–4 \(slice_0003.dcm, slice_0005.dcm\) are 5 mm apart, the others "
                                         r"2.5 mm") as record:
        vol = read_volume(folder)
    message = str(record[0].message)
    assert str(folder) in message and "1 plane(s) (4) interpolated" in message
    assert vol.array.shape == hu.shape  # 8 planes on the 2.5 mm grid, not 7 evenly spaced ones
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7))
    np.testing.assert_array_equal(vol.array[[0, 1, 2, 3, 5, 6, 7]], hu[[0, 1, 2, 3, 5, 6, 7]])
    np.testing.assert_array_equal(vol.array[4], hu[4])  # HU are linear along the planes here
    assert vol.metadata["dicom_interpolated_planes"] == [4]
    assert vol.metadata["dicom_plane_files"][4] is None


def test_uneven_spacing_is_resampled_onto_a_regular_grid(tmp_path):
    folder, hu, _ = clean_series(tmp_path / "ct")
    for plane in (5, 6, 7):
        move(slice_file(folder, plane), (0.0, 0.0, 1.0))  # +1 mm along z = the slice normal
    with pytest.warns(UserWarning, match=r"slices 4–5 .* are 3.5 mm apart, the others 2.5 mm"):
        vol = read_volume(folder)
    true_z = -40.0 + 2.5 * np.arange(8) + np.where(np.arange(8) >= 5, 1.0, 0.0)
    grid_z = vol.origin[0] + vol.spacing[0] * np.arange(vol.array.shape[0])
    np.testing.assert_allclose(grid_z[[0, -1]], true_z[[0, -1]])
    assert np.allclose(np.diff(grid_z), np.diff(grid_z)[0])
    expected = np.stack([np.rint(np.interp(z, true_z, hu[:, 0, 0])) for z in grid_z])
    np.testing.assert_array_equal(vol.array[:, 0, 0], expected)


def test_exact_duplicate_file_is_ignored_with_a_warning(tmp_path):
    folder, hu, _ = clean_series(tmp_path / "ct")
    duplicate(slice_file(folder, 2), "copy_of_2.dcm", new_instance=False)
    with pytest.warns(UserWarning, match="duplicated file"):
        vol = read_volume(folder)
    np.testing.assert_array_equal(vol.array, hu)


def test_two_different_images_at_one_position_are_refused(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct")
    duplicate(slice_file(folder, 2), "other_2.dcm", new_instance=True)
    with pytest.raises(VolumeReadError, match="two different images at one position") as info:
        read_volume(folder)
    assert "other_2.dcm" in str(info.value) and "slice_0002.dcm" in str(info.value) and str(folder) in str(info.value)


def test_sheared_series_is_refused_with_its_tilt(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct")
    for plane in range(8):
        move(slice_file(folder, plane), (0.3 * plane, 0.0, 0.0))  # slides sideways: gantry tilt
    with pytest.raises(VolumeReadError, match=r"sheared: .* tilt of 6.8 degrees") as info:
        read_volume(folder)
    assert str(folder) in str(info.value)


def test_mixed_modalities_are_refused(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct")
    edit(slice_file(folder, 2), Modality="MR")
    with pytest.raises(VolumeReadError, match=r"mixes modalities \(CT: 7 file\(s\).*MR: 1 file\(s\), e.g. slice_0002"):
        read_volume(folder)


def test_file_without_pixel_data_in_a_series_is_named(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct")
    edit(slice_file(folder, 3), PixelData=None)
    with pytest.raises(VolumeReadError, match="slice_0003.dcm: DICOM file of series .* has no pixel data"):
        read_volume(folder)


def test_single_dicom_file_without_pixel_data(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct", shape=(2, 4, 4))
    edit(slice_file(folder, 0), PixelData=None)
    with pytest.raises(VolumeReadError, match="slice_0000.dcm: DICOM file has no pixel data"):
        read_volume(slice_file(folder, 0))


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"ImageOrientationPatient": [1, 0, 0, 0, 0.9950042, 0.0998334]}, "inconsistent orientation"),
        ({"PixelSpacing": [0.9, 0.7]}, "inconsistent pixel spacing"),
        ({"ImagePositionPatient": None}, "has no ImagePositionPatient"),
    ],
)
def test_inconsistent_slices_are_refused(tmp_path, change, pattern):
    folder, _, _ = clean_series(tmp_path / "ct")
    edit(slice_file(folder, 2), **change)
    with pytest.raises(VolumeReadError, match=pattern) as info:
        read_volume(folder)
    assert "slice_0002.dcm" in str(info.value)


def test_rescale_is_applied_per_slice(tmp_path):
    folder = tmp_path / "ct"
    _, hu, uid = clean_series(folder, shape=(6, 4, 5))
    for plane in (3, 4, 5):
        slice_file(folder, plane).unlink()
    write_dicom_series(folder, hu[3:], (2.5, 0.8, 0.7), origin=(-40.0 + 3 * 2.5, 10.0, 5.0), series_uid=uid,
                       rescale_slope=0.5, rescale_intercept=-2000.0, file_pattern="late_{:04d}.dcm")
    vol = _quiet_read(folder)
    np.testing.assert_array_equal(vol.array, hu)


def test_series_choice_by_uid_in_python_and_cli(tmp_path, capsys):
    folder, hu, uid_big = clean_series(tmp_path / "study")
    small = -hu[:3] - 500
    uid_small = write_dicom_series(folder, small, (2.5, 0.8, 0.7), series_description="scout",
                                   file_pattern="scout_{:04d}.dcm", seed=7)
    with pytest.warns(UserWarning, match=f"reading {uid_big}.*others: {uid_small}.*--series"):
        read_volume(folder)
    np.testing.assert_array_equal(_quiet_read(folder, series=uid_small).array, small)
    np.testing.assert_array_equal(_quiet_read(folder, series_uid=uid_small).array, small)
    code = main(["embed", str(folder), "--series", "1.2.3", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "no DICOM series with UID 1.2.3" in err and uid_small in err


@pytest.mark.parametrize("defect", ["shear", "duplicate", "modality", "no_pixels"])
def test_defects_through_napari_reader_and_segment(tmp_path, capsys, defect):
    folder, _, _ = clean_series(tmp_path / "ct")
    if defect == "shear":
        for plane in range(8):
            move(slice_file(folder, plane), (0.0, 0.2 * plane, 0.0))
    elif defect == "duplicate":
        duplicate(slice_file(folder, 5), "again_5.dcm", new_instance=True)
    elif defect == "modality":
        edit(slice_file(folder, 0), Modality="PT")
    else:
        edit(slice_file(folder, 6), PixelData=None)
    with pytest.raises(VolumeReadError) as info:
        read_layers(str(folder))
    assert str(folder) in str(info.value) or "slice_0006.dcm" in str(info.value)
    code = main(["segment", str(folder), "--box", "1,1,1,4,4", "--out", str(tmp_path / "m.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "ct" in err
    assert not (tmp_path / "m.nii.gz").exists()


def test_missing_slice_through_napari_reader_places_planes_at_their_positions(tmp_path):
    folder, hu, _ = clean_series(tmp_path / "ct")
    slice_file(folder, 6).unlink()
    with pytest.warns(UserWarning, match="slices 5–6"):
        (data, kwargs, kind), = read_layers(str(folder))
    assert kind == "image" and data.shape == hu.shape
    np.testing.assert_allclose(kwargs["scale"], (2.5, 0.8, 0.7))
    assert kwargs["metadata"]["vfmseg"]["dicom"]["dicom_interpolated_planes"] == [6]


def test_rounded_header_positions_are_not_called_sheared(tmp_path):
    folder, hu, _ = clean_series(tmp_path / "ct")
    rng = np.random.default_rng(0)
    for plane in range(8):  # positions as some scanners write them: jitter of a few hundredths of a mm
        move(slice_file(folder, plane), (*rng.uniform(-0.02, 0.02, 2), 0.0))
    np.testing.assert_array_equal(_quiet_read(folder).array, hu)

"""Bad input to read_volume: every case raises one clear error that names the file and the problem."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from _io_helpers import ramp_volume, write_itk
from napari_vfmseg.io import VolumeReadError, read_volume, write_dicom_series


def _truncate(path, keep_fraction=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def _expect_error(path, pattern, error=VolumeReadError):
    with pytest.raises(error, match=pattern) as info:
        read_volume(path)
    assert path.name in str(info.value), str(info.value)
    return str(info.value)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    missing = tmp_path / "absent.nii.gz"
    message = _expect_error(missing, "no such file", error=FileNotFoundError)
    with pytest.raises(VolumeReadError):
        read_volume(missing)
    assert str(tmp_path) in message


def test_unsupported_extension_lists_supported_ones(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_bytes(b"\0" * 400)
    message = _expect_error(path, "unsupported file type '.xyz'")
    for ext in (".nii.gz", ".nrrd", ".mha", ".png", "DICOM"):
        assert ext in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mha"
    path.write_bytes(b"")
    _expect_error(path, "empty")


def test_truncated_compressed_nifti(tmp_path):
    # SimpleITK itself would read this without complaint and pad with zeros.
    path = _truncate(write_itk(tmp_path / "cut.nii.gz", ramp_volume((8, 20, 20))))
    _expect_error(path, "truncated")


def test_truncated_uncompressed_nifti(tmp_path):
    full = write_itk(tmp_path / "cut.nii", ramp_volume((8, 20, 20)))
    assert full.stat().st_size == 352 + 8 * 20 * 20 * 2  # header, 4 extension bytes, int16 voxels
    path = _truncate(full)
    message = _expect_error(path, "truncated")
    assert f"announces {352 + 8 * 20 * 20 * 2} bytes" in message
    assert f"holds {path.stat().st_size}" in message


def test_corrupt_gzip_stream(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00garbage")
    _expect_error(garbage, "truncated|corrupt")

    flipped = write_itk(tmp_path / "flipped.nii.gz", ramp_volume((8, 20, 20)))
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    _expect_error(flipped, "corrupt|truncated")


def test_not_a_nifti_inside_the_gzip(tmp_path):
    path = tmp_path / "text.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 40))
    _expect_error(path, "not a NIfTI")


@pytest.mark.parametrize("name", ["cut.nrrd", "cut.mha", "cut.png"])
def test_truncated_other_formats(tmp_path, name):
    array = ramp_volume((1, 30, 40), np.uint8)[0] if name.endswith(".png") else ramp_volume((6, 20, 20))
    path = _truncate(write_itk(tmp_path / name, array))
    _expect_error(path, "truncated, corrupt")


def test_empty_folder(tmp_path):
    folder = tmp_path / "nothing_here"
    folder.mkdir()
    _expect_error(folder, "folder is empty")


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_itk(folder / "a.nii.gz", ramp_volume((2, 3, 4)))
    (folder / "readme.txt").write_text("notes")
    _expect_error(folder, "no DICOM files")


def test_folder_with_broken_dicom_files(tmp_path):
    folder = tmp_path / "broken_series"
    folder.mkdir()
    (folder / "x1.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x01\x02" * 10)
    _expect_error(folder, "no DICOM series")


def test_inconsistent_dicom_slices(tmp_path):
    folder = tmp_path / "mixed_sizes"
    uid = write_dicom_series(folder, np.zeros((2, 4, 4)), (1.0, 1.0, 1.0), file_pattern="a{}.dcm")
    write_dicom_series(
        folder, np.zeros((1, 4, 6)), (1.0, 1.0, 1.0), origin=(5.0, 0, 0), series_uid=uid, file_pattern="b{}.dcm"
    )
    _expect_error(folder, "inconsistent sizes")


def test_zero_size_dimension_in_nifti_header(tmp_path):
    path = write_itk(tmp_path / "flat.nii", ramp_volume((3, 4, 5)))
    data = bytearray(path.read_bytes())
    struct.pack_into("<h", data, 44, 0)  # dim[2] (rows) = 0
    path.write_bytes(bytes(data))
    _expect_error(path, "zero-size dimension")


def test_zero_size_dimension_in_metaimage_header(tmp_path):
    path = tmp_path / "flat.mha"
    header = "ObjectType = Image\nNDims = 3\nDimSize = 4 0 3\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    path.write_bytes(header.encode())
    _expect_error(path, "zero-size dimension")


def test_4d_data_is_refused(tmp_path):
    frame = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(tmp_path / "dynamic.nii.gz"))
    _expect_error(tmp_path / "dynamic.nii.gz", "4D image")


@pytest.mark.parametrize(
    ("array", "name"),
    [(np.zeros((3, 4, 5, 3), np.float32), "vectors.mha"), (np.zeros((4, 5, 3), np.float32), "float_rgb.mha")],
)
def test_multicomponent_data_that_is_not_rgb_is_refused(tmp_path, array, name):
    path = write_itk(tmp_path / name, array, is_vector=True)
    _expect_error(path, "3 values per voxel")

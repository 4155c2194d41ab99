"""Bad input to read_volume: every case raises one clear error that names the file and the problem."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

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


# ------------------------------------------------------------------ issue 23: more broken inputs


@pytest.mark.parametrize("value", [0.0, float("nan"), -1.5])
def test_nifti_with_invalid_spacing(tmp_path, value):
    path = write_itk(tmp_path / "bad_spacing.nii", ramp_volume((3, 4, 5)))
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 80, value)  # pixdim[1]: the spacing along x
    path.write_bytes(bytes(data))
    message = _expect_error(path, "invalid voxel spacing")
    assert "pixdim[1]" in message


def test_compressed_nifti_with_zero_spacing(tmp_path):
    plain = write_itk(tmp_path / "plain.nii", ramp_volume((3, 4, 5)))
    data = bytearray(plain.read_bytes())
    struct.pack_into("<f", data, 84, 0.0)  # pixdim[2]
    path = tmp_path / "zero.nii.gz"
    path.write_bytes(gzip.compress(bytes(data)))
    _expect_error(path, r"invalid voxel spacing \(pixdim\[2\] = 0\)")


@pytest.mark.parametrize("data_file", ["../outside.raw", "/etc/hostname"])
def test_nrrd_whose_data_file_is_outside_its_folder(tmp_path, data_file):
    folder = tmp_path / "scans"
    folder.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(2 * 3 * 4))
    header = folder / "detached.nhdr"
    header.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 3 2\nencoding: raw\n"
                      f"data file: {data_file}\n")
    message = _expect_error(header, "lies outside the header's folder")
    assert data_file in message


def test_metaimage_whose_data_file_is_outside_its_folder(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(2 * 3 * 4))
    header = folder / "detached.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_UCHAR\n"
                      "ElementDataFile = ../outside.raw\n")
    _expect_error(header, "lies outside the header's folder")


def test_nrrd_with_its_data_file_beside_it_still_reads(tmp_path):
    (tmp_path / "inside.raw").write_bytes(bytes(range(24)))
    header = tmp_path / "detached.nhdr"
    header.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 3 2\nencoding: raw\ndata file: inside.raw\n")
    assert read_volume(header).array.shape == (2, 3, 4)


def _labels_case(tmp_path, array, name="labels.nii.gz"):
    from napari_vfmseg.io import Volume

    scan = Volume(np.zeros((4, 5, 6), np.int16), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    path = tmp_path / name
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0)[-array.ndim:])
    sitk.WriteImage(image, str(path))
    return path, scan


@pytest.mark.parametrize(
    ("array", "pattern"),
    [
        (np.zeros((4, 5, 7), np.uint8), r"label map of shape \(4, 5, 7\) does not match the scan's shape \(4, 5, 6\)"),
        (np.full((4, 5, 6), -2, np.int16), "negative values"),
        (np.full((4, 5, 6), 1.5, np.float32), r"non-integer values \(e.g. 1.5\)"),
    ],
)
def test_bad_label_files(tmp_path, array, pattern):
    from napari_vfmseg.io import read_labels

    path, scan = _labels_case(tmp_path, array)
    with pytest.raises(VolumeReadError, match=pattern) as info:
        read_labels(path, like=scan)
    assert "labels.nii.gz" in str(info.value)


def test_label_file_placed_elsewhere_is_refused(tmp_path):
    from napari_vfmseg.io import read_labels

    path, scan = _labels_case(tmp_path, np.zeros((4, 5, 6), np.uint8))
    moved = sitk.ReadImage(str(path))
    moved.SetOrigin((0.0, 0.0, 10.0))
    sitk.WriteImage(moved, str(path))
    with pytest.raises(VolumeReadError, match="label map's origin .* differs from the scan's"):
        read_labels(path, like=scan)
    assert read_labels(path).array.dtype == np.uint8  # without a scan to match, the file itself is fine


def test_2d_image_given_to_a_3d_only_command(tmp_path, capsys):
    from napari_vfmseg.cli import main

    path = write_itk(tmp_path / "photo.png", ramp_volume((1, 30, 40), np.uint8)[0])
    code = main(["embed", str(path), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "photo.png" in err and "needs a 3D volume" in err and err.count("\n") == 0


def test_dicom_segmentation_given_as_a_scan(tmp_path):
    import warnings

    from _dicom_builders import clean_series
    from napari_vfmseg.io import write_dicom_seg

    folder, _, _ = clean_series(tmp_path / "ct", shape=(3, 4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = read_volume(folder)
    seg = write_dicom_seg(tmp_path / "seg.dcm", np.ones((3, 4, 5), np.uint8), source)
    _expect_error(Path(seg), "is a DICOM Segmentation")

"""write_labels: exact geometry per format, dtype choice, validation and atomic replacement."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from _io_helpers import oblique_direction_itk, ramp_volume, write_itk
from napari_vfmseg.io import LabelWriteError, Volume, read_volume, write_labels
from napari_vfmseg.io import writer as writer_module

FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"]


def _labels(shape=(4, 5, 6)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[1:3, 1:4, 2:5] = 2
    labels[0, 0, 0] = 1
    return labels


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("oblique", [False, True])
def test_geometry_round_trip_for_each_format(tmp_path, ext, oblique):
    direction = oblique_direction_itk() if oblique else np.eye(3)
    source = write_itk(tmp_path / "src.mha", ramp_volume((4, 5, 6)), (0.7, 0.8, 3.0), (-10.5, 20.25, 5.5), direction)
    if oblique:
        with pytest.warns(UserWarning, match="oblique"):
            vol = read_volume(source)
    else:
        vol = read_volume(source)
    out = write_labels(tmp_path / f"labels{ext}", _labels(), like=vol)
    assert out == str(tmp_path / f"labels{ext}")
    back = sitk.ReadImage(out)
    ref = sitk.ReadImage(str(source))
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), _labels())
    assert back.GetPixelID() == sitk.sitkUInt8


@pytest.mark.parametrize(
    ("top", "dtype", "pixel_id"),
    [(1, np.uint8, sitk.sitkUInt8), (255, np.uint8, sitk.sitkUInt8), (256, np.uint16, sitk.sitkUInt16),
     (65535, np.uint16, sitk.sitkUInt16), (65536, np.uint32, sitk.sitkUInt32)],
)
def test_smallest_unsigned_type_is_chosen(tmp_path, top, dtype, pixel_id):
    labels = np.zeros((2, 3, 4), np.int64)
    labels[1, 2, 3] = top
    out = write_labels(tmp_path / "l.nrrd", labels)
    back = sitk.ReadImage(out)
    assert back.GetPixelID() == pixel_id
    assert sitk.GetArrayFromImage(back).dtype == dtype
    assert int(sitk.GetArrayFromImage(back)[1, 2, 3]) == top


def test_bool_labels_and_explicit_geometry(tmp_path):
    mask = np.zeros((3, 4, 5), bool)
    mask[1, 2, 3] = True
    out = write_labels(tmp_path / "m.nii.gz", mask, spacing=(2.0, 0.5, 0.25), origin=(7.0, 8.0, 9.0))
    back = sitk.ReadImage(out)
    np.testing.assert_allclose(back.GetSpacing(), (0.25, 0.5, 2.0))
    np.testing.assert_allclose(back.GetOrigin(), (9.0, 8.0, 7.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask.astype(np.uint8))


def test_2d_labels_for_an_rgb_image(tmp_path):
    rgb = Volume(np.zeros((6, 7, 3), np.uint8), spacing=(0.5, 0.25), origin=(1.0, 2.0), is_rgb=True)
    labels = np.zeros((6, 7), np.uint8)
    labels[2:4, 3:6] = 5
    out = write_labels(tmp_path / "photo_labels.nii.gz", labels, like=rgb)
    back = sitk.ReadImage(out)
    assert back.GetDimension() == 2
    np.testing.assert_allclose(back.GetSpacing(), (0.25, 0.5))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)


def test_shape_mismatch_names_both_shapes(tmp_path):
    vol = Volume(np.zeros((4, 5, 6)), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    with pytest.raises(LabelWriteError, match=r"\(4, 5, 7\).*\(4, 5, 6\)") as info:
        write_labels(tmp_path / "bad.nii.gz", np.zeros((4, 5, 7), np.uint8), like=vol)
    assert "bad.nii.gz" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_negative_and_non_integer_labels_are_refused(tmp_path):
    with pytest.raises(LabelWriteError, match="non-negative, found -3") as info:
        write_labels(tmp_path / "neg.nrrd", np.full((2, 2, 2), -3))
    assert "neg.nrrd" in str(info.value)
    with pytest.raises(LabelWriteError, match="whole numbers"):
        write_labels(tmp_path / "frac.nrrd", np.full((2, 2, 2), 0.5))
    assert not list(tmp_path.iterdir())


def test_unsupported_extension_lists_supported(tmp_path):
    with pytest.raises(LabelWriteError, match=r"\.png.*\.nii\.gz.*\.nrrd.*\.mha") as info:
        write_labels(tmp_path / "labels.png", np.zeros((2, 2), np.uint8))
    assert "labels.png" in str(info.value)


def test_geometry_given_twice_is_refused(tmp_path):
    vol = Volume(np.zeros((2, 2, 2)), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    with pytest.raises(LabelWriteError, match="not both"):
        write_labels(tmp_path / "l.nrrd", np.zeros((2, 2, 2), np.uint8), like=vol, spacing=(2.0, 2.0, 2.0))


def test_unwritable_destination_names_the_path(tmp_path):
    labels = np.zeros((2, 2, 2), np.uint8)
    missing = tmp_path / "no_such_folder" / "l.nii.gz"
    with pytest.raises(LabelWriteError, match="no_such_folder.*does not exist"):
        write_labels(missing, labels)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(LabelWriteError, match="a_file"):
        write_labels(blocker / "l.nii.gz", labels)
    (tmp_path / "dir.nrrd").mkdir()
    with pytest.raises(LabelWriteError, match="dir.nrrd.*folder"):
        write_labels(tmp_path / "dir.nrrd", labels)


@pytest.mark.parametrize("ext", [".nii.gz", ".mhd"])
def test_failed_write_keeps_earlier_export_and_leaves_no_temp_files(tmp_path, monkeypatch, ext):
    target = tmp_path / f"labels{ext}"
    first = _labels()
    write_labels(target, first)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def write_half_then_fail(image, filename, useCompression=False):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer_module.sitk, "WriteImage", write_half_then_fail)
    with pytest.raises(LabelWriteError, match="disk full") as info:
        write_labels(target, first * 2)
    assert target.name in str(info.value)
    monkeypatch.undo()

    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # same files, same bytes: nothing clobbered, no temp leftovers
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))), first)


def test_successful_write_replaces_earlier_export(tmp_path):
    target = tmp_path / "labels.mhd"
    write_labels(target, _labels())
    write_labels(target, _labels() * 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.mhd", "labels.zraw"]
    np.testing.assert_array_equal(read_volume(target).array, _labels() * 3)

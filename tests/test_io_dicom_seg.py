"""DICOM-SEG: labels of a DICOM series written with highdicom, referencing the source, read back
voxel-exact and geometry-exact (axis-aligned and oblique), from Python, the CLI and napari."""

from __future__ import annotations

import shutil
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest

from _dicom_builders import clean_series, slice_file
from _io_helpers import oblique_direction_itk
from napari_vfmseg._reader import read_layers
from napari_vfmseg._writer import LayerWriteError, write_labels_layer
from napari_vfmseg._layer_geometry import labels_layer_kwargs
from napari_vfmseg.io import LabelWriteError, VolumeReadError, read_volume, write_labels
from napari_vfmseg.io.dicom_seg import is_dicom_seg, read_segmentation, write_dicom_seg


def _read(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oblique notes
        return read_volume(path, **kwargs)


def _labels(shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    labels[1:4, 1:4, 2:6] = 3
    labels[5, 0:2, 0:3] = 300
    labels[6, 4, 6] = 1
    return labels


@pytest.mark.parametrize("oblique", [False, True])
def test_round_trip_is_voxel_and_geometry_exact(tmp_path, oblique):
    direction = oblique_direction_itk()[::-1, ::-1] if oblique else np.eye(3)
    folder, _, uid = clean_series(tmp_path / "ct", direction=direction)
    source = _read(folder)
    labels = _labels(source.spatial_shape)
    out = write_dicom_seg(tmp_path / "export" / "seg.dcm", labels, source, names={3: "liver", 300: "lesion"},
                          model="builtin", adapter="round2.safetensors")
    assert is_dicom_seg(out)

    back, scan = read_segmentation(out)  # the source is found beside the SEG's folder
    np.testing.assert_array_equal(back.array, labels)
    assert back.metadata["label_names"] == {1: "object 1", 3: "liver", 300: "lesion"}
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-9)
    assert scan.metadata["dicom_series_uid"] == uid

    seg = pydicom.dcmread(out)  # what a PACS sees: references and per-frame positions
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert seg.FrameOfReferenceUID == source.metadata["dicom_frame_of_reference_uid"]
    assert seg.StudyInstanceUID == source.metadata["dicom_study_uid"]
    first = pydicom.dcmread(slice_file(folder, 0))
    np.testing.assert_allclose(
        seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
        first.ImageOrientationPatient, atol=1e-6)
    source_position = {pydicom.dcmread(f).SOPInstanceUID: np.asarray(pydicom.dcmread(f).ImagePositionPatient, float)
                       for f in folder.iterdir()}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        referenced = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, source_position[referenced],
                                   atol=1e-6)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "builtin" and algorithm.AlgorithmVersion == "round2.safetensors"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"


def test_manual_segments_without_a_model(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct")
    source = _read(folder)
    out = write_dicom_seg(tmp_path / "seg.dcm", _labels(source.spatial_shape) > 0, source)
    seg = hd.seg.segread(out)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    back, _ = read_segmentation(out, source=folder)
    np.testing.assert_array_equal(back.array, _labels(source.spatial_shape) > 0)


def test_seg_whose_source_is_missing_names_the_series(tmp_path):
    folder, _, uid = clean_series(tmp_path / "ct")
    out = write_dicom_seg(tmp_path / "exports" / "seg.dcm", _labels((8, 6, 7)), _read(folder))
    shutil.rmtree(folder)
    with pytest.raises(VolumeReadError, match=f"seg.dcm: its source DICOM series {uid} is not in"):
        read_segmentation(out)
    with pytest.raises(VolumeReadError, match="seg.dcm: its source DICOM series"):
        read_layers(str(out))


def test_seg_needs_a_dicom_source_and_an_object(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct")
    source = _read(folder)
    nifti = tmp_path / "ct.nii.gz"
    write_labels(nifti, np.zeros(source.spatial_shape, np.uint8), like=source)
    with pytest.raises(LabelWriteError, match="was not read from a DICOM series folder"):
        write_dicom_seg(tmp_path / "a.dcm", _labels((8, 6, 7)), read_volume(nifti))
    with pytest.raises(LabelWriteError, match="hold no object"):
        write_dicom_seg(tmp_path / "b.dcm", np.zeros((8, 6, 7), np.uint8), source)
    with pytest.raises(LabelWriteError, match=r"labels shape \(8, 6, 6\) does not match"):
        write_dicom_seg(tmp_path / "c.dcm", np.zeros((8, 6, 6), np.uint8), source)
    assert not list(tmp_path.glob("*.dcm"))


def test_planes_interpolated_over_a_gap_are_left_out_with_a_warning(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct")
    slice_file(folder, 4).unlink()
    with pytest.warns(UserWarning, match="slices 3–4"):
        source = read_volume(folder)
    labels = np.zeros(source.spatial_shape, np.uint8)
    labels[3:6, 2:4, 2:4] = 1
    with pytest.warns(UserWarning, match=r"planes \[4\] were interpolated"):
        out = write_dicom_seg(tmp_path / "seg.dcm", labels, source)
    back, _ = read_segmentation(out, source=source)
    expected = labels.copy()
    expected[4] = 0
    np.testing.assert_array_equal(back.array, expected)


def test_napari_reader_and_writer(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct", direction=oblique_direction_itk()[::-1, ::-1])
    (image, image_kwargs, _), = _quiet_layers(str(folder))
    labels = _labels(image.shape)
    meta = {"name": "objects", "metadata": {"vfmseg": image_kwargs["metadata"]["vfmseg"], "label_names": {3: "liver"}}}
    written = write_labels_layer(str(tmp_path / "objects.dcm"), labels, meta)
    (data, kwargs, kind), = _quiet_layers(written[0])
    assert kind == "labels"
    np.testing.assert_array_equal(data, labels)
    np.testing.assert_allclose(kwargs["affine"], image_kwargs["affine"], atol=1e-9)
    assert kwargs["metadata"]["label_names"][3] == "liver"
    with pytest.raises(LayerWriteError, match="not read from a DICOM series"):
        write_labels_layer(str(tmp_path / "plain.dcm"), labels, {"name": "x", "metadata": {}})


def _quiet_layers(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return read_layers(path)


def test_labels_layer_kwargs_of_a_seg_place_it_on_the_source(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct")
    source = _read(folder)
    out = write_dicom_seg(tmp_path / "seg.dcm", _labels(source.spatial_shape), source)
    back, scan = read_segmentation(out)
    kwargs = labels_layer_kwargs(scan)
    np.testing.assert_allclose(kwargs["scale"], source.spacing)
    np.testing.assert_allclose(kwargs["translate"], source.origin)


def test_widget_export_function_writes_seg_or_label_file(tmp_path):
    from napari_vfmseg._layer_geometry import export_labels, geometry_from_layer, image_layer_kwargs

    folder, _, uid = clean_series(tmp_path / "ct")
    source = _read(folder)
    kwargs = image_layer_kwargs(source)
    labels = _labels(source.spatial_shape)
    geometry = geometry_from_layer(kwargs["metadata"], kwargs["scale"], kwargs["translate"], 3)
    seg = export_labels(tmp_path / "objects.dcm", labels, kwargs["metadata"], geometry, names={3: "liver"},
                        model="builtin", adapter=None)
    back, _ = read_segmentation(seg, source=source)
    np.testing.assert_array_equal(back.array, labels)
    assert back.metadata["label_names"][3] == "liver"
    nifti = export_labels(tmp_path / "objects.nii.gz", labels, kwargs["metadata"], geometry)
    np.testing.assert_allclose(read_volume(nifti).affine, source.affine, atol=1e-5)
    with pytest.raises(LabelWriteError, match="cannot write a DICOM-SEG"):
        export_labels(tmp_path / "x.dcm", labels, {}, geometry)


def test_write_labels_with_a_dcm_name_writes_a_seg(tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct")
    source = _read(folder)
    out = write_labels(tmp_path / "labels.dcm", _labels(source.spatial_shape), like=source)
    back, _ = read_segmentation(out, source=source)
    np.testing.assert_array_equal(back.array, _labels(source.spatial_shape))
    write_labels(tmp_path / "ct.nii.gz", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(VolumeReadError, match="ct.nii.gz: a series UID picks one series of a DICOM folder"):
        read_volume(tmp_path / "ct.nii.gz", series="1.2.3")

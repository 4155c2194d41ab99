"""napari's readers on a DICOM study folder: the default opens the largest series, the series reader
one layer per series; a DICOM-SEG opens as a labels layer on its series."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from _dicom_builders import clean_series
from napari_vfmseg.io import read_volume, write_dicom_series
from napari_vfmseg.io.dicom_seg import write_dicom_seg


@pytest.fixture
def study(tmp_path):
    folder, hu, uid_big = clean_series(tmp_path / "study")
    scout = -hu[:3] - 500
    uid_small = write_dicom_series(folder, scout, (2.5, 0.8, 0.7), series_description="scout",
                                   file_pattern="scout_{:04d}.dcm", seed=7)
    return folder, hu, scout, uid_big, uid_small


def test_default_reader_opens_the_largest_series(make_napari_viewer, study):
    folder, hu, _, uid_big, uid_small = study
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match=f"others: {uid_small}"):
        layers = viewer.open(str(folder), plugin="napari-vfmseg")
    assert len(layers) == 1
    np.testing.assert_array_equal(layers[0].data, hu)


def test_series_reader_gives_one_layer_per_series(make_napari_viewer, study):
    folder, hu, scout, uid_big, uid_small = study
    viewer = make_napari_viewer()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # each series is read by its UID: no "several series" note
        layers = viewer.open(str(folder), plugin="napari-vfmseg.get_series_reader")
    assert [layer.visible for layer in layers] == [True, False]
    np.testing.assert_array_equal(layers[0].data, hu)
    np.testing.assert_array_equal(layers[1].data, scout)
    assert "scout" in layers[1].name and "3 slices" in layers[1].name
    assert layers[1].metadata["vfmseg"]["dicom"]["dicom_series_uid"] == uid_small


def test_seg_opens_as_labels_on_its_series(make_napari_viewer, tmp_path):
    folder, _, _ = clean_series(tmp_path / "ct")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        source = read_volume(folder)
    labels = np.zeros(source.spatial_shape, np.uint8)
    labels[2:5, 1:4, 1:5] = 2
    seg = write_dicom_seg(tmp_path / "seg.dcm", labels, source, names={2: "liver"})
    viewer = make_napari_viewer()
    image = viewer.open(str(folder), plugin="napari-vfmseg")[0]
    layer = viewer.open(seg, plugin="napari-vfmseg")[0]
    assert layer.__class__.__name__ == "Labels" and layer.metadata["label_names"] == {2: "liver"}
    np.testing.assert_array_equal(layer.data, labels)
    for index in [(0, 0, 0), (3, 2, 4)]:
        np.testing.assert_allclose(layer.data_to_world(index), image.data_to_world(index))

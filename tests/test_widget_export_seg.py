"""The widget's Export writes a DICOM-SEG for a DICOM-sourced scan (issue #23): named objects,
the model recorded, labels on the source series' grid."""

from __future__ import annotations

import numpy as np
import pytest

from _dicom_builders import clean_series
from napari_vfmseg._reader import read_layers
from napari_vfmseg.io import LabelWriteError, read_volume
from napari_vfmseg.io.dicom_seg import read_segmentation
from napari_vfmseg.widgets.annotator import AnnotatorWidget


def _open_with_objects(viewer, source_layers):
    data, kwargs, _ = source_layers[0]
    layer = viewer.add_image(data, **kwargs)
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget, name="Segment (VFM)")
    assert widget.session is not None and widget.image_layer is layer
    labels = widget.session.labels
    labels[1, 2:6, 3:9] = 1
    labels[2:4, 8:12, 8:12] = 2
    widget.session.table.refresh(labels)
    widget.session.table.rename(1, "liver")
    return widget, labels.copy()


def test_export_dcm_from_the_widget_writes_a_seg_on_the_source(make_napari_viewer, tmp_path) -> None:
    folder, _, uid = clean_series(tmp_path / "ct", shape=(6, 16, 16))
    viewer = make_napari_viewer()
    widget, labels = _open_with_objects(viewer, read_layers(str(folder)))
    result = widget.export(tmp_path / "out" / "objects.dcm")
    back, scan = read_segmentation(result.labels, source=folder)
    np.testing.assert_array_equal(back.array, labels)
    assert back.metadata["label_names"][1] == "liver"
    assert scan.metadata["dicom_series_uid"] == uid
    assert result.csv.exists() and result.json.exists()
    nifti = widget.export(tmp_path / "out" / "objects.nii.gz")  # the same objects as a label file
    np.testing.assert_array_equal(read_volume(nifti.labels).array, labels)


def test_export_dcm_of_a_scan_not_read_from_dicom_is_refused(make_napari_viewer, tmp_path) -> None:
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 16, 16), np.float32), name="plain")
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget, name="Segment (VFM)")
    widget.session.labels[1, 2:5, 2:5] = 1
    with pytest.raises(LabelWriteError, match="cannot write a DICOM-SEG"):
        widget.export(tmp_path / "plain.dcm")
    assert not (tmp_path / "plain.dcm").exists()


def test_closing_the_viewer_with_the_widget_open_ends(make_napari_viewer, qtbot) -> None:
    """viewer.close() removes every layer in turn; the widget must not re-create its layers."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 16, 16), np.float32), name="plain")
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget, name="Segment (VFM)")
    assert len(viewer.layers) > 1  # the widget's own layers
    viewer.layers.clear()
    assert len(viewer.layers) == 0 and widget.session is None

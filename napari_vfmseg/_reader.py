"""napari reader contributions: NIfTI, NRRD, MetaImage, DICOM files, series folders and DICOM-SEG.

Two readers:

- ``get_reader`` (the default): each path as one layer. A DICOM folder with several series gives
  its largest series, with a warning naming the others; a DICOM-SEG file gives a labels layer
  placed on the series it was drawn on (found beside it).
- ``get_series_reader``: a DICOM folder as one image layer per series (largest shown, the others
  hidden), so the user picks a series in the layer list. From Python:
  ``viewer.open(folder, plugin="napari-vfmseg.get_series_reader")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

from napari_vfmseg._layer_geometry import image_layer_kwargs, labels_layer_kwargs
from napari_vfmseg.io import is_supported_path, read_volume

PathOrPaths = Union[str, list]
LayerData = tuple[Any, dict, str]


def get_reader(path: PathOrPaths) -> Optional[Callable[[PathOrPaths], list[LayerData]]]:
    """Return a reader if every path is something ``read_volume`` can open, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(is_supported_path(p) for p in paths):
        return None
    return read_layers


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Read each path as a volume (image layer in millimetres) or a DICOM-SEG (labels layer).

    Errors (corrupt file, non-DICOM folder, ...) propagate with a message naming the file: napari
    shows them as a notification instead of a crash dialog.
    """
    from napari_vfmseg.io.dicom_seg import is_dicom_seg

    paths = [path] if isinstance(path, str) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        if is_dicom_seg(p):
            layers.append(read_segmentation_layer(p))
            continue
        volume = read_volume(p)
        layers.append((volume.array, image_layer_kwargs(volume), "image"))
    return layers


def read_segmentation_layer(path: str, source=None) -> LayerData:
    """A DICOM-SEG as labels layer data on its source series' grid (``source``: folder or Volume)."""
    from napari_vfmseg.io.dicom_seg import read_segmentation

    labels, scan = read_segmentation(path, source=source)
    kwargs = labels_layer_kwargs(scan, name=Path(path).stem)
    kwargs["metadata"]["label_names"] = dict(labels.metadata["label_names"])
    return (labels.array, kwargs, "labels")


def get_series_reader(path: PathOrPaths) -> Optional[Callable[[PathOrPaths], list[LayerData]]]:
    """A reader for one folder holding DICOM, giving one layer per series; None for anything else."""
    from napari_vfmseg.io.dicom_headers import folder_has_dicom

    if not isinstance(path, str) or not Path(path).is_dir() or not folder_has_dicom(path):
        return None
    return read_each_series


def read_each_series(path: PathOrPaths) -> list[LayerData]:
    """Every image series of a DICOM folder as its own image layer, largest first and the only one visible."""
    from napari_vfmseg.io.dicom_headers import list_dicom_series

    folder = path if isinstance(path, str) else path[0]
    layers: list[LayerData] = []
    for index, info in enumerate(list_dicom_series(folder)):
        volume = read_volume(folder, series=info.uid)
        name = f"{info.description or Path(folder).name} ({info.n_slices} slices, …{info.uid[-6:]})"
        kwargs = image_layer_kwargs(volume, name=name)
        kwargs["visible"] = index == 0
        layers.append((volume.array, kwargs, "image"))
    return layers

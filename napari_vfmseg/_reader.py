"""napari reader contribution: NIfTI, NRRD, MetaImage, DICOM files and series folders."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from napari_vfmseg.io import is_supported_path, read_volume
from napari_vfmseg._layer_geometry import image_layer_kwargs

PathOrPaths = Union[str, list]
LayerData = tuple[Any, dict, str]


def get_reader(path: PathOrPaths) -> Optional[Callable[[PathOrPaths], list[LayerData]]]:
    """Return a reader if every path is something ``read_volume`` can open, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(is_supported_path(p) for p in paths):
        return None
    return read_layers


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Read each path as a volume and return napari image layer data in millimetres.

    Errors (corrupt file, non-DICOM folder, ...) propagate with a message naming the file: napari
    shows them as a notification instead of a crash dialog.
    """
    paths = [path] if isinstance(path, str) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        volume = read_volume(p)
        layers.append((volume.array, image_layer_kwargs(volume), "image"))
    return layers

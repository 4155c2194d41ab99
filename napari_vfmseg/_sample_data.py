"""napari sample-data contribution: the shipped phantoms with their ground-truth labels."""

from __future__ import annotations

from typing import Any

from napari_vfmseg.data import label_names, sample_paths
from napari_vfmseg.io import read_volume
from napari_vfmseg._layer_geometry import image_layer_kwargs, labels_layer_kwargs

LayerData = tuple[Any, dict, str]


def load_sample_layers(name: str) -> list[LayerData]:
    """Image and ground-truth labels of sample ``name`` as napari layer data, placed in mm."""
    image_path, labels_path = sample_paths(name)
    volume = read_volume(image_path)
    labels = read_volume(labels_path)
    image_kwargs = image_layer_kwargs(volume, name=name)
    labels_kwargs = labels_layer_kwargs(volume, name=f"{name} ground truth")
    labels_kwargs["metadata"]["label_names"] = {int(k): v for k, v in label_names(name).items()}
    labels_kwargs["opacity"] = 0.4
    return [
        (volume.array, image_kwargs, "image"),
        (labels.array.astype("uint8", copy=False), labels_kwargs, "labels"),
    ]


def abdomen_ct() -> list[LayerData]:
    return load_sample_layers("abdomen_ct")


def brain_mr() -> list[LayerData]:
    return load_sample_layers("brain_mr")


def ultrasound_2d() -> list[LayerData]:
    return load_sample_layers("ultrasound_2d")

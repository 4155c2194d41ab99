"""Training planes for small objects, cut as the engine cuts them: the zoomed crop around each one.

The engine segments a small box on a crop around it (:mod:`napari_vfmseg.engine.zoom`); a round
that trained only on whole planes would never see those pixels. :func:`with_zoomed_crops` adds,
for every object small enough to be zoomed, the crop :func:`~napari_vfmseg.engine.zoom.crop_for_box`
cuts around its tight box, with the labels cut alike and the plane's pixel aspect kept.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

import numpy as np

from napari_vfmseg.engine.zoom import ZoomPolicy, bounding_box_of, crop_for_box
from napari_vfmseg.training.data import LabelledImage, object_ids

__all__ = ["with_zoomed_crops", "zoomed_crops"]


def zoomed_crops(pair: LabelledImage, policy: ZoomPolicy, min_pixels: int = 20) -> list[LabelledImage]:
    """The crops of ``pair`` (image (rows, cols), labels alike) around each object the engine would
    zoom; objects of fewer than ``min_pixels`` pixels are left out, as in training."""
    labels = np.asarray(pair.labels)
    out = []
    for label in object_ids(labels, min_pixels):
        crop = crop_for_box(bounding_box_of(labels == label), labels.shape, pair.pixel_aspect, policy)
        if crop is None:
            continue
        out.append(replace(pair, image=np.ascontiguousarray(crop.cut(np.asarray(pair.image))),
                           labels=np.ascontiguousarray(crop.cut(labels)),
                           source=f"{pair.source} zoom {label} at {crop.as_tuple()}".strip(),
                           crop=crop.as_tuple()))
    return out


def with_zoomed_crops(pairs: Sequence[LabelledImage], policy: Optional[ZoomPolicy],
                      min_pixels: int = 20) -> list[LabelledImage]:
    """``pairs`` followed by the zoomed crops of their small objects (``pairs`` alone when ``policy`` is None)."""
    pairs = list(pairs)
    if policy is None:
        return pairs
    return pairs + [crop for pair in pairs for crop in zoomed_crops(pair, policy, min_pixels)]

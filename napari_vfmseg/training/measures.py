"""What a fine-tuning round measures: 1-click Dice through the engine, on held-out and guard planes.

Planes are :class:`~napari_vfmseg.training.data.LabelledImage` (uint8 (row, col) image, int label
map); scores compare the engine's answer with each object at the plane's full resolution.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from napari_vfmseg.training.data import LabelledImage, object_ids, pairs_from_volume

__all__ = ["guard_examples", "one_click_dice", "spread"]


def guard_examples(sample: str = "abdomen_ct", planes: int = 6, min_pixels: int = 20, window=None
                   ) -> list[LabelledImage]:
    """``planes`` evenly spaced labelled planes of a shipped sample (the original domain), windowed by
    the sample's modality (CT: soft tissue; MR: percentiles) unless ``window`` is given."""
    from napari_vfmseg.data import SAMPLES, load_sample

    if sample not in SAMPLES:
        raise ValueError(f"unknown guard sample {sample!r}; available: {', '.join(SAMPLES)}")
    image, labels = load_sample(sample)
    pairs = pairs_from_volume(np.asarray(image.array), np.asarray(labels.array), window=window,
                              modality=SAMPLES[sample].modality, min_pixels=min_pixels, source=sample)
    return spread(pairs, planes)


def spread(pairs: Sequence[LabelledImage], limit: Optional[int]) -> list[LabelledImage]:
    """At most ``limit`` of ``pairs``, evenly spaced (all of them when ``limit`` is None)."""
    pairs = list(pairs)
    if limit is None or len(pairs) <= limit:
        return pairs
    keep = np.unique(np.linspace(0, len(pairs) - 1, max(1, int(limit))).round().astype(int))
    return [pairs[i] for i in keep]


def one_click_dice(model_or_segmenter, pairs: Sequence[LabelledImage], min_pixels: int = 20,
                   max_planes: Optional[int] = None) -> Optional[float]:
    """Mean 1-click Dice over the objects of ``pairs``: one positive click at each object's most
    interior point, predicted by the engine (``Segmenter.predict``, best of three masks), compared
    with the object at the plane's full resolution. None when ``pairs`` hold no object.

    Accepts a ``LoadedModel`` or a ``Segmenter`` (whose embedding cache is then reused).
    """
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.training.metrics import interactive_protocol

    segmenter = model_or_segmenter if isinstance(model_or_segmenter, Segmenter) else Segmenter(model_or_segmenter)

    def predict(points, point_labels, box, mask_input):
        result = segmenter.predict(points=points, point_labels=point_labels, box=box, mask_input=mask_input)
        return result.mask, float(result.score), result.logits

    scores = []
    for pair in spread(pairs, max_planes):
        ids = object_ids(pair.labels, min_pixels)
        if not ids:
            continue
        aspect = float(getattr(pair, "pixel_aspect", 1.0) or 1.0)
        if aspect == 1.0:
            segmenter.set_image(np.asarray(pair.image))
        else:  # the plane's true proportions, as the viewer embeds it
            segmenter.set_image(np.asarray(pair.image), spacing=(aspect, 1.0))
        for label in ids:
            dices, _ = interactive_protocol(predict, pair.labels == label, first="point", max_clicks=1)
            scores.append(dices[0])
    return float(np.mean(scores)) if scores else None

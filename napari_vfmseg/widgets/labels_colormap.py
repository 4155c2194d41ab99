"""napari label colormaps for the objects and preview layers."""

from __future__ import annotations

import numpy as np

__all__ = ["direct_colormap"]


def direct_colormap(colours: dict[int, tuple[str, bool]]):
    """A napari label colormap: id → (hex colour, visible); 0 transparent, ids not listed white."""
    from napari.utils.colormaps import DirectLabelColormap
    from napari.utils.colormaps.standardize_color import transform_color

    mapping: dict = {None: (1.0, 1.0, 1.0, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for label_id, (colour, visible) in colours.items():
        rgba = np.asarray(transform_color(colour)[0], dtype=float)
        rgba[3] = 1.0 if visible else 0.0
        mapping[int(label_id)] = tuple(rgba)
    return DirectLabelColormap(color_dict=mapping)

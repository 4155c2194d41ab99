"""The napari layers of an annotation, and the conversion of their contents to plane prompts.

* a Points layer: positive (object) and negative (background) clicks, told apart by the
  ``positive`` feature, drawn green and red;
* a Shapes layer: rectangles, one box per plane (a newer box on a plane replaces the older);
* a Labels layer for the preview and one for the committed objects.

All are placed exactly on the image layer (same scale, translate, rotation, shear and affine),
but conversion never relies on that: a vertex goes layer data → world → image data
(``image_layer.world_to_data``), and (row, col) on a plane are the image's array axes other than
the plane axis (see :mod:`napari_vfmseg.annotation.planes`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from napari_vfmseg._layer_geometry import GEOMETRY_KEY
from napari_vfmseg.annotation.planes import Plane, plane_axes, plane_shape
from napari_vfmseg.annotation.prompts import PlanePrompts, clip_box, point_inside

__all__ = [
    "PromptLayers",
    "PromptReading",
    "placement_kwargs",
    "labels_layer_placement",
    "image_spatial_shape",
    "POSITIVE_COLOUR",
    "NEGATIVE_COLOUR",
    "BOX_COLOUR",
    "PREVIEW_COLOUR",
]

POSITIVE_COLOUR = "#39ff5a"
NEGATIVE_COLOUR = "#ff3b30"
BOX_COLOUR = "#ffd400"
PREVIEW_COLOUR = "#00e5ff"
POSITIVE = "positive"


def placement_kwargs(image_layer) -> dict:
    """Keyword arguments that put a new layer exactly where ``image_layer`` is in the world."""
    return {
        "scale": tuple(image_layer.scale),
        "translate": tuple(image_layer.translate),
        "rotate": np.asarray(image_layer.rotate),
        "shear": np.asarray(image_layer.shear),
        "affine": np.asarray(image_layer.affine.affine_matrix),
    }


def image_spatial_shape(image_layer) -> tuple[int, ...]:
    """Spatial shape of an image layer: (plane, row, col) or (row, col) (RGB channels dropped).

    Raises ValueError for what the annotator cannot segment (4D, 3D RGB, multiscale).
    """
    if getattr(image_layer, "multiscale", False):
        raise ValueError(f"layer {image_layer.name!r} is multiscale; open a single-resolution image to segment it")
    shape = tuple(int(s) for s in image_layer.data.shape)
    if image_layer.rgb:
        shape = shape[:-1]
        if len(shape) != 2:
            raise ValueError(f"layer {image_layer.name!r}: only 2D RGB images can be segmented; got shape {image_layer.data.shape}")
    if len(shape) not in (2, 3):
        raise ValueError(f"layer {image_layer.name!r}: only 2D and 3D images can be segmented; got shape {shape}")
    return shape


@dataclass
class PromptReading:
    """Prompts found in the layers for one plane axis, and what was wrong with the rest."""

    by_index: dict[int, PlanePrompts] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    superseded_boxes: list[int] = field(default_factory=list)   # shape indices replaced by a newer box


class PromptLayers:
    """The Points and Shapes layers holding the prompts of one image layer."""

    def __init__(self, viewer, image_layer, shape: tuple[int, ...]) -> None:
        self.viewer = viewer
        self.image_layer = image_layer
        self.shape = tuple(shape)
        ndim = len(self.shape)
        extent = max(self.shape[-2:])
        placement = placement_kwargs(image_layer)
        self.syncing = False
        self.boxes = viewer.add_shapes(
            ndim=ndim,
            name=f"{image_layer.name} box",
            edge_color=BOX_COLOUR,
            face_color="transparent",
            edge_width=max(1.0, extent / 200.0),
            **placement,
        )
        self.points = viewer.add_points(
            ndim=ndim,
            name=f"{image_layer.name} prompts",
            features={POSITIVE: np.zeros(0, dtype=bool)},
            face_color=POSITIVE_COLOUR,
            border_color="white",
            border_width=0.15,
            size=max(3.0, extent / 40.0),
            **placement,
        )
        self.set_positive(True)

    # ------------------------------------------------------------------------ state

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        """Changes made inside are the widget's own: its layer-event handlers skip them."""
        previous = self.syncing
        self.syncing = True
        try:
            yield
        finally:
            self.syncing = previous

    @property
    def positive(self) -> bool:
        return bool(self.points.feature_defaults[POSITIVE].iloc[0])

    def set_positive(self, positive: bool) -> None:
        """New clicks become object (True) or background (False) points.

        Points already placed keep their kind: napari would recolour the selected points (and fail
        on a selection left over from points that were removed), so the selection is dropped first.
        It is not restored: selecting a point makes napari take its kind as the default again.
        """
        self.points.selected_data = set()
        self.points.feature_defaults[POSITIVE] = bool(positive)
        self.points.current_face_color = POSITIVE_COLOUR if positive else NEGATIVE_COLOUR

    def point_polarity(self) -> np.ndarray:
        """(N,) bool: True for object points. A points layer without the feature counts all as object."""
        features = self.points.features
        if POSITIVE not in features:
            return np.ones(len(self.points.data), dtype=bool)
        return np.asarray(features[POSITIVE], dtype=bool)

    def recolour(self) -> None:
        """Face colours from the ``positive`` feature (green object, red background)."""
        if len(self.points.data) == 0:
            return
        colours = np.where(self.point_polarity()[:, None], _rgba(POSITIVE_COLOUR), _rgba(NEGATIVE_COLOUR))
        with self.muted():
            self.points.face_color = colours

    def layers(self) -> list:
        return [self.points, self.boxes]

    # ------------------------------------------------------------------------ coordinates

    def _to_image(self, layer, coords: np.ndarray) -> np.ndarray:
        """(N, ndim) layer data coordinates → (N, ndim) image data coordinates (via world).

        Rounded to 1e-6 pixel, so that a round trip through the transforms gives back the same prompt.
        """
        ndim = len(self.shape)
        out = [np.asarray(self.image_layer.world_to_data(layer.data_to_world(c)), dtype=float)[-ndim:] for c in coords]
        return np.round(np.asarray(out, dtype=float).reshape(-1, ndim), 6)

    def _from_image(self, layer, coords: np.ndarray) -> np.ndarray:
        """(N, ndim) image data coordinates → (N, ndim) data coordinates of ``layer``."""
        ndim = len(self.shape)
        out = [np.asarray(layer.world_to_data(self.image_layer.data_to_world(c)), dtype=float)[-ndim:] for c in coords]
        return np.asarray(out, dtype=float).reshape(-1, ndim)

    def _locate(self, coords: np.ndarray, axis: Optional[int]) -> tuple[Optional[int], np.ndarray]:
        """(plane index or None when off the image, (N, 2) row/col) of image coordinates on ``axis``."""
        rows, cols = plane_axes(len(self.shape), axis)
        if axis is None:
            return 0, coords[:, [rows, cols]]
        index = int(np.round(np.mean(coords[:, axis])))
        if not 0 <= index < self.shape[axis]:
            return None, coords[:, [rows, cols]]
        return index, coords[:, [rows, cols]]

    # ------------------------------------------------------------------------ reading

    def read(self, axis: Optional[int]) -> PromptReading:
        """Prompts of every plane along ``axis`` (None for a 2D image), as (row, col) on the plane."""
        reading = PromptReading()
        points: dict[int, list] = {}
        labels: dict[int, list] = {}
        polarity = self.point_polarity()
        if len(self.points.data):
            image_coords = self._to_image(self.points, np.asarray(self.points.data))
            for n, coords in enumerate(image_coords):
                index, rc = self._locate(coords[None], axis)
                where = ", ".join(f"{v:.1f}" for v in coords)
                if index is None or not point_inside(rc[0], plane_shape(self.shape, Plane(axis, index))):
                    reading.problems.append(f"point at ({where}) is outside the image of shape {self.shape}; it is ignored")
                    continue
                points.setdefault(index, []).append(tuple(rc[0]))
                labels.setdefault(index, []).append(1 if polarity[n] else 0)
        boxes: dict[int, tuple] = {}
        box_source: dict[int, int] = {}
        for n, (vertices, kind) in enumerate(zip(self.boxes.data, self.boxes.shape_type)):
            if kind != "rectangle":
                reading.problems.append(f"shape {n} is a {kind}; only rectangles are used as boxes")
                continue
            coords = self._to_image(self.boxes, np.asarray(vertices))
            index, rc = self._locate(coords, axis)
            box = None
            if index is not None:
                corners = (rc[:, 0].min(), rc[:, 1].min(), rc[:, 0].max(), rc[:, 1].max())
                box = clip_box(corners, plane_shape(self.shape, Plane(axis, index)))
            if box is None:
                reading.problems.append(f"box {n} does not overlap the image of shape {self.shape}; it is ignored")
                continue
            if index in box_source:
                reading.superseded_boxes.append(box_source[index])
            boxes[index], box_source[index] = box, n
        for index in sorted(set(points) | set(boxes)):
            reading.by_index[index] = PlanePrompts.build(points.get(index, ()), labels.get(index, ()), boxes.get(index))
        return reading

    # ------------------------------------------------------------------------ writing

    def show(self, axis: Optional[int], prompts: dict[Plane, PlanePrompts]) -> None:
        """Replace the layers' contents with ``prompts`` of planes along ``axis`` (the widget's own change)."""
        ndim = len(self.shape)
        rows, cols = plane_axes(ndim, axis)
        coords, polarity, rectangles = [], [], []
        for plane, plane_prompts in prompts.items():
            if plane.axis != axis:
                continue
            for (r, c), label in zip(plane_prompts.points, plane_prompts.labels):
                coords.append(self._full(axis, plane.index, rows, cols, r, c))
                polarity.append(label == 1)
            if plane_prompts.box is not None:
                r0, c0, r1, c1 = plane_prompts.box
                corners = [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]
                rectangles.append(np.asarray([self._full(axis, plane.index, rows, cols, r, c) for r, c in corners]))
        with self.muted():
            self.points.selected_data = set()
            self.points.data = self._from_image(self.points, np.asarray(coords, dtype=float).reshape(-1, ndim))
            self.points.features = {POSITIVE: np.asarray(polarity, dtype=bool)}
            self.boxes.data = []
            if rectangles:
                self.boxes.add_rectangles([self._from_image(self.boxes, r) for r in rectangles])
        self.recolour()

    def add_point(self, plane: Plane, point: tuple[float, float], positive: bool = True) -> None:
        """Add a point at (row, col) of ``plane``, as if clicked (the layer's data event fires)."""
        rows, cols = plane_axes(len(self.shape), plane.axis)
        coords = self._from_image(self.points, self._full(plane.axis, plane.index, rows, cols, *point)[None])
        previous = self.positive
        self.set_positive(positive)
        try:
            self.points.add(coords)
        finally:
            self.set_positive(previous)

    def add_box(self, plane: Plane, box: tuple[float, float, float, float]) -> None:
        """Add a rectangle (row0, col0, row1, col1) on ``plane``, as if dragged (the data event fires)."""
        rows, cols = plane_axes(len(self.shape), plane.axis)
        r0, c0, r1, c1 = box
        corners = [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]
        vertices = np.asarray([self._full(plane.axis, plane.index, rows, cols, r, c) for r, c in corners])
        self.boxes.add_rectangles(self._from_image(self.boxes, vertices))

    def _full(self, axis, index, rows, cols, r, c) -> np.ndarray:
        full = np.zeros(len(self.shape), dtype=float)
        if axis is not None:
            full[axis] = index
        full[rows], full[cols] = r, c
        return full

    def clear(self) -> None:
        with self.muted():
            self.points.selected_data = set()   # napari keeps a selection of points that no longer exist
            self.points.data = np.zeros((0, len(self.shape)))
            self.points.features = {POSITIVE: np.zeros(0, dtype=bool)}
            self.boxes.data = []

    def remove_boxes(self, indices: list[int]) -> None:
        """Delete shapes ``indices`` (boxes replaced by a newer one on their plane)."""
        keep = [n for n in range(len(self.boxes.data)) if n not in set(indices)]
        if len(keep) == len(self.boxes.data):
            return
        with self.muted():
            data = [self.boxes.data[n] for n in keep]
            kinds = [self.boxes.shape_type[n] for n in keep]
            self.boxes.data = []
            if data:
                self.boxes.add(data, shape_type=kinds)

    def remove(self) -> None:
        """Take both layers out of the viewer."""
        ids = {layer.unique_id for layer in self.layers()}
        for layer in list(self.viewer.layers):
            if layer.unique_id in ids:
                self.viewer.layers.remove(layer)


def labels_layer_placement(image_layer) -> dict:
    """Placement and geometry metadata for a Labels layer drawn on ``image_layer``.

    The image's scan geometry (``metadata["vfmseg"]``, from napari-vfmseg's reader) is copied, so
    saving the labels with napari's writer keeps the scan's spacing, origin and direction.
    """
    kwargs = placement_kwargs(image_layer)
    stored = (image_layer.metadata or {}).get(GEOMETRY_KEY)
    if stored:
        kwargs["metadata"] = {GEOMETRY_KEY: dict(stored)}
    return kwargs


def _rgba(colour: str) -> np.ndarray:
    from napari.utils.colormaps.standardize_color import transform_color

    return np.asarray(transform_color(colour)[0], dtype=float)

"""The annotator's layers: which image it annotates, where objects go, and the layers it owns.

:class:`LayerLifecycle` (a part of :class:`~napari_vfmseg.widgets.annotator.AnnotatorWidget`)
creates the objects layer (or reuses "<image> objects"), the preview layer and the prompt layers
when an image is chosen, binds the widget's shortcuts on its own layers only (never on the
viewer: they go away with those layers), follows the viewer's layer list, and removes its own
layers again (:meth:`LayerLifecycle._detach`) when the image changes, a managed layer is
removed, or the widget shuts down. The objects layer always stays.
"""

from __future__ import annotations

import numpy as np

from napari_vfmseg._layer_geometry import geometry_from_layer
from napari_vfmseg.annotation.session import AnnotationSession
from napari_vfmseg.widgets.layout import refill
from napari_vfmseg.widgets.labels_colormap import direct_colormap
from napari_vfmseg.widgets.prompt_layers import (
    PREVIEW_COLOUR,
    PromptLayers,
    image_spatial_shape,
    labels_layer_placement,
    placement_kwargs,
)
from napari_vfmseg._view_orientation import show_head_up
from napari_vfmseg.widgets.viewer_planes import displayed_axis

__all__ = ["LayerLifecycle", "same_layer", "remove_layer"]

_NEW_LAYER = "new labels layer"


def same_layer(a, b) -> bool:
    """Whether ``a`` and ``b`` are the same layer (napari hands plugins proxies, so never use ``is``)."""
    return a is not None and b is not None and a.unique_id == b.unique_id


def remove_layer(viewer, layer) -> None:
    """Remove ``layer`` (or the viewer's layer it proxies) from ``viewer``."""
    for candidate in list(viewer.layers):
        if same_layer(candidate, layer):
            viewer.layers.remove(candidate)


class LayerLifecycle:
    """Image choice, target labels layer, the widget's own layers and their shortcuts (a part of
    the annotator; uses its ``viewer``, ``session``, ``engine`` and controls)."""

    def _image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _layer_by_id(self, unique_id):
        if unique_id is None:
            return None
        return next((layer for layer in self.viewer.layers if layer.unique_id == unique_id), None)

    def _refresh_image_choices(self, auto_select: bool = True) -> None:
        """Refill the image and target menus; with ``auto_select`` and no image yet, pick the active one."""
        current = self.image_layer
        refill(self.image_combo, [("—", None)] + [(layer.name, layer.unique_id) for layer in self._image_layers()],
                current.unique_id if current is not None else None)
        if current is None and auto_select:
            layers = self._image_layers()
            active = self.viewer.layers.selection.active
            choice = next((layer for layer in layers if same_layer(layer, active)), layers[0] if layers else None)
            if choice is not None:
                self.set_image_layer(choice)
        self._refresh_target_choices()

    def _refresh_target_choices(self) -> None:
        from napari.layers import Labels

        items = [(_NEW_LAYER, None)] + [
            (layer.name, layer.unique_id)
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and not same_layer(layer, self.preview_layer)
        ]
        refill(self.target_combo, items, self.labels_layer.unique_id if self.labels_layer is not None else None)

    def _on_layers_changed(self, event=None) -> None:
        if not self._own_layer_change:
            self._refresh_image_choices()

    def _on_layer_removed(self, event) -> None:
        if self._own_layer_change:
            return
        layer = event.value
        managed = [self.image_layer, self.labels_layer, self.preview_layer] + (self.prompts.layers() if self.prompts else [])
        if any(same_layer(layer, m) for m in managed):
            self._detach()
            self._notify("warning", f"annotation stopped: layer {layer.name!r} was removed; choose the image again to continue")
        # a removal never picks an image by itself: re-creating layers here would fight the removal
        # (closing the viewer removes every layer in turn and would never end); the user chooses again
        self._refresh_image_choices(auto_select=False)

    def _on_image_choice(self, index: int) -> None:
        layer = self._layer_by_id(self.image_combo.itemData(index))
        if layer is None:
            self._detach()
        elif not same_layer(layer, self.image_layer):
            self.set_image_layer(layer)

    def set_image_layer(self, layer) -> bool:
        """Annotate ``layer`` (a 2D grey/RGB or 3D image layer). False (with a notification) if it cannot be."""
        if same_layer(layer, self.image_layer) and self.session is not None:
            return True
        try:
            shape = image_spatial_shape(layer)
        except ValueError as exc:
            self._notify("error", str(exc))
            self._refresh_image_choices()
            return False
        self._detach()
        self.image_layer = layer
        geometry = geometry_from_layer(layer.metadata, layer.scale, layer.translate, len(shape))
        self._own_layer_change = True
        try:
            target = self._existing_objects_layer(layer, shape)
            if target is None:
                target = self.viewer.add_labels(np.zeros(shape, dtype=np.uint16), name=f"{layer.name} objects", **labels_layer_placement(layer))
            self.session = AnnotationSession(shape, geometry, labels=target.data)
            self.preview_layer = self.viewer.add_labels(self.session.preview, name=f"{layer.name} preview", opacity=0.55, **placement_kwargs(layer))
            self.preview_layer.colormap = direct_colormap({1: (PREVIEW_COLOUR, True)})
            self.preview_layer.events.paint.connect(self._on_preview_painted)   # brush corrections of the preview
            self._bind_layer_keys(self.preview_layer, toggle=False)
            self.prompts = PromptLayers(self.viewer, layer, shape)
        finally:
            self._own_layer_change = False
        self._watch_labels(target)
        for prompt_layer in self.prompts.layers():
            prompt_layer.events.data.connect(self._on_prompt_layers)
            self._bind_layer_keys(prompt_layer, toggle=prompt_layer is self.prompts.points)
        self.prompts.points.mouse_drag_callbacks.insert(0, self._shift_click)
        self._prompt_axis = None if len(shape) == 2 else (displayed_axis(self.viewer.dims, layer, shape) or 0)
        show_head_up(self.viewer, layer)
        self.window_combo.setEnabled(not layer.rgb)
        self._show_model_window()
        self._refresh_image_choices()
        self._after_objects_changed()
        self._open_autosave(layer)
        self.activate_points()
        self._configure_engine()
        return True

    def _existing_objects_layer(self, image_layer, shape):
        from napari.layers import Labels

        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and layer.name == f"{image_layer.name} objects" and layer.data.shape == shape:
                return layer
        return None

    def _watch_labels(self, layer) -> None:
        if self.labels_layer is not None:
            try:
                self.labels_layer.events.paint.disconnect(self._on_labels_painted)
            except (TypeError, ValueError, RuntimeError):
                pass
        self.labels_layer = layer
        if layer is not None:
            layer.events.paint.connect(self._on_labels_painted)

    def _detach(self) -> None:
        """Stop annotating the current image: prompt and preview layers removed, objects kept."""
        if self._autosave_timer.isActive():   # the objects of the image being left, saved now
            self._autosave_timer.stop()
            self.autosave_now()
        self.engine.detach()
        self._watch_labels(None)
        self._own_layer_change = True
        try:
            if self.prompts is not None:
                self.prompts.remove()
            if self.preview_layer is not None:
                remove_layer(self.viewer, self.preview_layer)
        finally:
            self._own_layer_change = False
        self.prompts = self.preview_layer = self.image_layer = self.session = None
        self.objects_panel.show_table(None)
        self._update_buttons()
        self._update_status()

    def _on_target_choice(self, index: int) -> None:
        layer = self._layer_by_id(self.target_combo.itemData(index))
        if self.session is not None and not same_layer(layer, self.labels_layer):
            self.set_target_labels(layer)

    def set_target_labels(self, layer) -> bool:
        """Commit into ``layer`` (a Labels layer of the image's shape), or into a new layer (None)."""
        if self.session is None:
            return False
        if layer is None:
            self._own_layer_change = True
            try:
                layer = self.viewer.add_labels(
                    np.zeros(self.session.shape, dtype=np.uint16),
                    name=f"{self.image_layer.name} objects {len(self.viewer.layers)}",
                    **labels_layer_placement(self.image_layer),
                )
            finally:
                self._own_layer_change = False
        data = layer.data
        if not isinstance(data, np.ndarray) or data.shape != self.session.shape:
            self._notify(
                "error",
                f"labels layer {layer.name!r} has shape {tuple(getattr(data, 'shape', ()))} but image "
                f"{self.image_layer.name!r} has shape {self.session.shape}; choose a labels layer of the image's shape",
            )
            self._refresh_target_choices()
            return False
        try:
            self.session.set_labels(data)
        except ValueError as exc:
            self._notify("error", str(exc))
            self._refresh_target_choices()
            return False
        self._watch_labels(layer)
        self._refresh_target_choices()
        self._after_objects_changed()
        return True

    def _key_actions(self, toggle: bool) -> list:
        """(napari key, action) of the widget's shortcuts; ``toggle`` adds T (object/background points)."""
        actions = [
            ("Enter", lambda _: self.commit()),
            ("Escape", lambda _: self.clear_prompts()),
            ("Control-z", lambda _: self.undo()),
            ("Control-Shift-z", lambda _: self.redo()),
            ("m", lambda _: self.next_mask()),
        ]
        return actions + ([("t", lambda _: self.toggle_polarity())] if toggle else [])

    def _bind_layer_keys(self, layer, toggle: bool) -> None:
        """Bind the shortcuts on one of the widget's own layers (prompts, preview), never on the viewer:
        they then go away with the layers when the image changes or the dock closes."""
        for key, action in self._key_actions(toggle):
            layer.bind_key(key, action, overwrite=True)

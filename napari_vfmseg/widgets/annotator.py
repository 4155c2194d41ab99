"""The "Segment (VFM)" dock widget: the interactive segmentation flow in napari.

Choose an image layer, a model and an intensity window; click object/background points or drag
a box on any plane; the preview follows every prompt change; Enter commits it as a new object.

The widget is glue between napari events and three parts that do the work:
:class:`~napari_vfmseg.widgets.session.AnnotationSession` (Qt-free state: prompts per plane,
preview, objects, undo/redo, export), :class:`~napari_vfmseg.widgets.prompt_layers.PromptLayers`
(layers ↔ plane coordinates) and :class:`~napari_vfmseg.widgets.engine_link.EngineLink` (every
model call on a worker thread, never on the UI thread).

Extension point: :meth:`AnnotatorWidget.add_section` adds a panel (3D propagation, fine-tuning)
under the object list; such panels use the public attributes ``session``, ``segmenter``,
``engine``, ``image_layer``, ``labels_layer``, :meth:`current_plane`, :meth:`use_segmenter`,
:meth:`refresh_preview` and the signals ``model_changed``, ``objects_changed``,
``preview_changed`` and ``state_changed``. The 3D propagation section
(:class:`~napari_vfmseg.widgets.propagate_panel.PropagatePanel`) is one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_vfmseg._layer_geometry import GEOMETRY_KEY, geometry_from_layer
from napari_vfmseg.widgets._gl_compat import guard_triton
from napari_vfmseg.widgets.engine_link import EngineLink
from napari_vfmseg.widgets.finetune_panel import FinetunePanel
from napari_vfmseg.widgets.model_choice import NO_MODEL_HELP, ModelSource, default_model_name, load_engine
from napari_vfmseg.widgets.model_panel import ModelPanel
from napari_vfmseg.widgets.objects_panel import ObjectsPanel
from napari_vfmseg.widgets.planes import Plane
from napari_vfmseg.widgets.propagate_panel import PropagatePanel
from napari_vfmseg.widgets.prompt_layers import (
    PREVIEW_COLOUR,
    PromptLayers,
    image_spatial_shape,
    labels_layer_placement,
    placement_kwargs,
)
from napari_vfmseg.widgets.session import AnnotationSession, ExportResult
from napari_vfmseg.widgets.view_orientation import show_head_up
from napari_vfmseg.widgets.workers import run_in_background

# Shown under the preview when the model's mask contradicts the click just made (about half of the
# built-in model's first background clicks after a box on the CT phantom): say what works instead.
IGNORED_CLICK_HINT = ("the model did not follow your last click: correct the preview with napari's brush (2) "
                      "or eraser (1) on the preview layer, then commit")

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["AnnotatorWidget", "WINDOW_CHOICES", "SHORTCUTS"]

# (label shown, value given to the engine); "auto" = None: CT soft tissue, MR percentiles, 8-bit as is
WINDOW_CHOICES: tuple[tuple[str, Optional[str]], ...] = (
    ("auto", None),
    ("soft tissue (40/400)", "soft_tissue"),
    ("lung (-600/1500)", "lung"),
    ("bone (400/1800)", "bone"),
    ("brain (40/80)", "brain"),
    ("percentile 0.5-99.5", "percentile"),
)

SHORTCUTS = (
    "click: object point · Shift+click or T: background point · Box: drag a rectangle · "
    "M: next mask of a single click or a box · "
    "Enter: commit · Esc: clear prompts · Ctrl+Z / Ctrl+Shift+Z: undo / redo commits "
    "(on the objects layer: napari's brush undo)"
)

_NEW_LAYER = "new labels layer"


class AnnotatorWidget(QWidget):
    """Dock widget for interactive SAM segmentation of the images in ``napari_viewer``.

    ``autoload``: load :func:`~napari_vfmseg.widgets.model_choice.default_model_name` in the
    background when the widget opens (tests and scripts pass False and call :meth:`use_model`).
    """

    model_changed = Signal(object)     # the Segmenter now in use
    objects_changed = Signal()         # commit, undo, redo, rename, hide, delete, brush edits
    preview_changed = Signal(object)   # the Plane whose preview changed
    state_changed = Signal()           # prompts, preview, objects or image changed: sections update their controls

    def __init__(self, napari_viewer: "napari.viewer.Viewer", autoload: bool = True) -> None:
        super().__init__()
        guard_triton()  # before anything imports torch in a viewer that already has OpenGL up
        self.viewer = napari_viewer
        self.session: Optional[AnnotationSession] = None
        self.image_layer = None
        self.labels_layer = None
        self.preview_layer = None
        self.prompts: Optional[PromptLayers] = None
        self.engine = EngineLink(self)
        self.engine.ready.connect(self._update_status)
        self.engine.progress.connect(self._on_progress)
        self.engine.predicted.connect(self._on_predicted)
        self.engine.failed.connect(self._report)
        self._loading: Optional[object] = None
        self._prompt_axis: Optional[int] = None
        self._own_layer_change = False
        self._warned_no_model = False
        self._closed = False
        self._docked = False
        self.closing = None   # the thread that closes the engine after shutdown()

        self._build_ui()
        self._step_timer = QTimer(self)
        self._step_timer.setSingleShot(True)
        self._step_timer.setInterval(120)
        self._step_timer.timeout.connect(self._plane_settled)
        self._events = [
            (self.viewer.layers.events.inserted, self._on_layers_changed),
            (self.viewer.layers.events.removed, self._on_layer_removed),
            (self.viewer.dims.events.current_step, self._on_step),
            (self.viewer.dims.events.order, self._on_axes_changed),
            (self.viewer.dims.events.ndisplay, self._on_axes_changed),
        ]
        for emitter, handler in self._events:
            emitter.connect(handler)
        self._refresh_image_choices()
        self._update_status()
        if autoload and default_model_name() is not None:
            self.load_model()

    # ================================================================== UI

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        layout = QVBoxLayout(body)

        image_box = QGroupBox("Image")
        form = QFormLayout(image_box)
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_choice)
        form.addRow("image", self.image_combo)
        self.window_combo = QComboBox()
        for label, value in WINDOW_CHOICES:
            self.window_combo.addItem(label, value)
        self.window_combo.setToolTip("intensity window the model sees (the image is shown with it too)")
        self.window_combo.currentIndexChanged.connect(self._on_window_choice)
        form.addRow("window", self.window_combo)
        self.target_combo = QComboBox()
        self.target_combo.setToolTip("labels layer the committed objects are written into")
        self.target_combo.currentIndexChanged.connect(self._on_target_choice)
        form.addRow("objects into", self.target_combo)
        layout.addWidget(image_box)

        self.model_panel = ModelPanel()
        self.model_panel.load_requested.connect(self.load_model)
        layout.addWidget(self.model_panel)

        prompt_box = QGroupBox("Prompts")
        column = QVBoxLayout(prompt_box)
        self.points_mode_button = QPushButton("Points")
        self.box_mode_button = QPushButton("Box")
        self._mode_group = QButtonGroup(self)
        for button, action in ((self.points_mode_button, self.activate_points), (self.box_mode_button, self.activate_box)):
            button.setCheckable(True)
            button.clicked.connect(action)
            self._mode_group.addButton(button)
        column.addLayout(_row(self.points_mode_button, self.box_mode_button))
        self.positive_radio = QRadioButton("object (+)")
        self.negative_radio = QRadioButton("background (−)")
        self.positive_radio.setChecked(True)
        self.positive_radio.toggled.connect(lambda _: self.prompts and self.prompts.set_positive(self.positive_radio.isChecked()))
        column.addLayout(_row(self.positive_radio, self.negative_radio))
        self.clear_button = _button("Clear (Esc)", self.clear_prompts)
        self.commit_button = _button("Commit (Enter)", lambda: self.commit())
        column.addLayout(_row(self.clear_button, self.commit_button))
        self.next_mask_button = _button("Next mask (M)", self.next_mask)
        self.next_mask_button.setToolTip("a single click or a box alone is ambiguous (a part, the whole, or a ring or all it encloses): "
                                         "show the model's next reading of it")
        self.undo_button = _button("Undo", self.undo)
        self.redo_button = _button("Redo", self.redo)
        column.addLayout(_row(self.next_mask_button, self.undo_button, self.redo_button))
        self.preview_label = QLabel("")
        self.preview_label.setWordWrap(True)
        column.addWidget(self.preview_label)
        layout.addWidget(prompt_box)

        objects_box = QGroupBox("Objects")
        column = QVBoxLayout(objects_box)
        self.objects_panel = ObjectsPanel()
        self.objects_panel.renamed.connect(self.rename_object)
        self.objects_panel.visibility_changed.connect(self.set_object_visible)
        self.objects_panel.selected.connect(self.select_object)
        column.addWidget(self.objects_panel)
        self.delete_button = _button("Delete", self._delete_selected)
        self.export_button = _button("Export…", self._export_dialog)
        column.addLayout(_row(self.delete_button, self.export_button))
        layout.addWidget(objects_box)

        self.extensions = QVBoxLayout()
        layout.addLayout(self.extensions)
        self.propagate_panel = PropagatePanel(self)
        self.add_section("3D propagation", self.propagate_panel)
        self.finetune_panel = FinetunePanel(self)
        self.add_section("Fine-tune", self.finetune_panel)
        help_label = QLabel(SHORTCUTS)
        help_label.setWordWrap(True)
        help_label.setStyleSheet("color: gray;")
        layout.addWidget(help_label)
        layout.addStretch(1)
        body.setMinimumWidth(380)
        self._update_buttons()

    def add_section(self, title: str, widget: QWidget) -> QGroupBox:
        """Add a panel titled ``title`` under the object list and return its group box.

        Used by later features (3D propagation, fine-tuning); the panel talks to this widget
        through its public attributes and signals.
        """
        group = QGroupBox(title)
        QVBoxLayout(group).addWidget(widget)
        self.extensions.addWidget(group)
        return group

    # ================================================================== state

    @property
    def segmenter(self):
        """The :class:`~napari_vfmseg.engine.Segmenter` in use (None before a model is loaded)."""
        return self.engine.segmenter

    @property
    def stats(self) -> dict:
        """``embed_seconds`` (first plane of the image), ``predict_ms`` (recent clicks, model time)."""
        return self.engine.stats

    @property
    def busy(self) -> bool:
        """True while a model loads or an engine job (set image, prediction) is queued or running."""
        return self._loading is not None or self.engine.busy

    @property
    def engine_ready(self) -> bool:
        """The engine holds the current image (and axis): predictions can run."""
        return self.engine.is_ready

    @property
    def prefetching(self) -> bool:
        """Planes are being embedded in the background."""
        return self.engine.prefetching

    def plane_embedded(self, plane: Optional[Plane] = None) -> bool:
        """True when ``plane`` (default: the one on screen) has its embedding: a click answers at once."""
        return self.engine.plane_embedded(plane or self.current_plane())

    def current_plane(self) -> Optional[Plane]:
        """The plane the viewer shows (None in a 3D view or without an image)."""
        if self.session is None:
            return None
        if self.session.ndim == 2:
            return Plane(None, 0)
        axis = self._display_axis()
        if axis is None:
            return None
        point = np.asarray(self.viewer.dims.point, dtype=float)[-self.session.ndim:]
        data = np.asarray(self.image_layer.world_to_data(point), dtype=float)[-self.session.ndim:]
        index = int(np.clip(np.round(data[axis]), 0, self.session.shape[axis] - 1))
        return Plane(axis, index)

    def _display_axis(self) -> Optional[int]:
        """The image's array axis the 2D view slices through (None in a 3D view).

        Found through the layer's transform, so a permuted or flipped affine is handled too.
        """
        dims = self.viewer.dims
        if dims.ndisplay != 2:
            return None
        ndim = self.session.ndim
        offset = dims.ndim - ndim
        sliced = [a - offset for a in dims.not_displayed if a >= offset]
        if len(sliced) != 1:
            return None
        centre = np.asarray(self.session.shape, dtype=float) / 2.0
        origin = np.asarray(self.image_layer.data_to_world(centre), dtype=float)[-ndim:]
        weights = []
        for axis in range(ndim):
            step = centre.copy()
            step[axis] += 1.0
            delta = np.asarray(self.image_layer.data_to_world(step), dtype=float)[-ndim:] - origin
            weights.append(abs(delta[sliced[0]]) / (np.linalg.norm(delta) or 1.0))
        return int(np.argmax(weights))

    # ================================================================== image and layers

    def _image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _layer_by_id(self, unique_id):
        if unique_id is None:
            return None
        return next((layer for layer in self.viewer.layers if layer.unique_id == unique_id), None)

    def _refresh_image_choices(self) -> None:
        current = self.image_layer
        _refill(self.image_combo, [("—", None)] + [(layer.name, layer.unique_id) for layer in self._image_layers()],
                current.unique_id if current is not None else None)
        if current is None:
            layers = self._image_layers()
            active = self.viewer.layers.selection.active
            choice = next((layer for layer in layers if _same_layer(layer, active)), layers[0] if layers else None)
            if choice is not None:
                self.set_image_layer(choice)
        self._refresh_target_choices()

    def _refresh_target_choices(self) -> None:
        from napari.layers import Labels

        items = [(_NEW_LAYER, None)] + [
            (layer.name, layer.unique_id)
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and not _same_layer(layer, self.preview_layer)
        ]
        _refill(self.target_combo, items, self.labels_layer.unique_id if self.labels_layer is not None else None)

    def _on_layers_changed(self, event=None) -> None:
        if not self._own_layer_change:
            self._refresh_image_choices()

    def _on_layer_removed(self, event) -> None:
        if self._own_layer_change:
            return
        layer = event.value
        managed = [self.image_layer, self.labels_layer, self.preview_layer] + (self.prompts.layers() if self.prompts else [])
        if any(_same_layer(layer, m) for m in managed):
            self._detach()
            self._notify("warning", f"annotation stopped: layer {layer.name!r} was removed; choose the image again to continue")
        self._refresh_image_choices()

    def _on_image_choice(self, index: int) -> None:
        layer = self._layer_by_id(self.image_combo.itemData(index))
        if layer is None:
            self._detach()
        elif not _same_layer(layer, self.image_layer):
            self.set_image_layer(layer)

    def set_image_layer(self, layer) -> bool:
        """Annotate ``layer`` (a 2D grey/RGB or 3D image layer). False (with a notification) if it cannot be."""
        if _same_layer(layer, self.image_layer) and self.session is not None:
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
            self.preview_layer.colormap = _direct_colormap({1: (PREVIEW_COLOUR, True)})
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
        self._prompt_axis = None if len(shape) == 2 else (self._display_axis() or 0)
        show_head_up(self.viewer, layer)
        self.window_combo.setEnabled(not layer.rgb)
        self._refresh_image_choices()
        self._after_objects_changed()
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
        self.engine.detach()
        self._watch_labels(None)
        self._own_layer_change = True
        try:
            if self.prompts is not None:
                self.prompts.remove()
            if self.preview_layer is not None:
                _remove_layer(self.viewer, self.preview_layer)
        finally:
            self._own_layer_change = False
        self.prompts = self.preview_layer = self.image_layer = self.session = None
        self.objects_panel.show_table(None)
        self._update_buttons()
        self._update_status()

    def _on_target_choice(self, index: int) -> None:
        layer = self._layer_by_id(self.target_combo.itemData(index))
        if self.session is not None and not _same_layer(layer, self.labels_layer):
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

    # ================================================================== model

    def load_model(self, source: Optional[ModelSource] = None) -> None:
        """Load ``source`` (default: what the controls say) in the background, then use it."""
        source = source or self.model_panel.source()
        if not source.name and not source.checkpoint:
            self._notify("warning", f"choose a model: {NO_MODEL_HELP}")
            return
        cache_dir = self.model_panel.cache_dir()
        if self._loading is not None:
            self._loading.cancel()   # the newest choice wins; the older load's result is dropped
        self.model_panel.show_loading(source.describe())

        def done(segmenter) -> None:
            if self._closed:
                segmenter.close()
                return
            self.use_segmenter(segmenter)

        def failed(error: BaseException) -> None:
            self._loading = None
            self.model_panel.show_model(f"{self._model_text()} ({source.describe()} could not be loaded)")
            self.model_panel.show_progress(0, 1)
            self._report(f"loading model {source.describe()}", error)

        self._loading = run_in_background(lambda: load_engine(source, cache_dir=cache_dir), done, failed,
                                          name="vfmseg-load-model")

    def use_model(self, model, cache_dir=None) -> None:
        """Use a :class:`~napari_vfmseg.models.LoadedModel` already in memory (scripts, tests)."""
        from napari_vfmseg.engine import Segmenter

        self.use_segmenter(Segmenter(model, cache_dir=cache_dir))

    def use_segmenter(self, segmenter) -> None:
        """Use ``segmenter`` (a :class:`~napari_vfmseg.engine.Segmenter`) for every prediction from now on."""
        if self._loading is not None:
            self._loading.cancel()
        self._loading = None
        self.engine.set_segmenter(segmenter)
        self.model_panel.show_model(self._model_text())
        if self.session is not None:
            self.session.invalidate()
        self._configure_engine()
        self.model_changed.emit(segmenter)

    def _model_text(self) -> str:
        if self.segmenter is None:
            return "no model loaded"
        model = self.segmenter.model
        info = model.info or {}
        size = f" · {info['parameters'] / 1e6:.1f} M parameters" if info.get("parameters") else ""
        adapter = " · with adapter" if info.get("adapter") else ""
        return f"{model.name} on {model.device}{size}{adapter}"

    # ================================================================== engine

    def _window_value(self) -> Optional[str]:
        if self.image_layer is None or self.image_layer.rgb:
            return None
        return self.window_combo.currentData()

    def _modality(self) -> Optional[str]:
        stored = (self.image_layer.metadata or {}).get(GEOMETRY_KEY) or {}
        return stored.get("modality")

    def _on_window_choice(self, index: int) -> None:
        if self.session is None:
            return
        value = self._window_value()
        if value is not None:
            from napari_vfmseg.io.windowing import resolve_window

            window = resolve_window(value, np.asarray(self.image_layer.data), self._modality())
            self.image_layer.contrast_limits = (window.low, window.high)   # what you see is what the model sees
        self.session.invalidate()
        self._configure_engine()

    def _configure_engine(self) -> None:
        if self.session is None or self.segmenter is None:
            self._update_status()
            return
        self.engine.configure(
            self.session,
            np.asarray(self.image_layer.data),
            self._prompt_axis if self.session.ndim == 3 else None,
            self._window_value(),
            self._modality(),
            self.current_plane,
        )
        self._update_status()

    def _on_progress(self, done: int, total: int) -> None:
        self.model_panel.show_progress(done, total)
        self._update_status()

    def _update_status(self) -> None:
        panel = self.model_panel
        if self.session is None:
            panel.show_status("choose an image layer")
            return
        if self.segmenter is None:
            panel.show_status(f"{NO_MODEL_HELP}, then press Load model")
            return
        plane = self.current_plane()
        if plane is None:
            panel.show_status("3D view: switch to a 2D view to place prompts")
            return
        if not self.engine.is_ready:
            panel.show_status("preparing the image …")
            return
        state = "ready" if self.engine.plane_embedded(plane) else "embedding …"
        extra = ""
        if self.session.ndim == 3:
            extra = f" · {self.engine.embedded_count}/{self.session.shape[self.engine.axis]} planes embedded"
        panel.show_status(f"{plane.describe()}: {state}{extra} · encoder calls {self.segmenter.encoder_calls}")

    # ================================================================== planes

    def _on_step(self, event=None) -> None:
        if self.session is not None and self.session.ndim == 3:
            self._step_timer.start()

    def _plane_settled(self) -> None:
        self.engine.follow(self.current_plane())
        self._update_status()
        self._update_buttons()

    def _on_axes_changed(self, event=None) -> None:
        if self.session is None or self.session.ndim != 3:
            return
        show_head_up(self.viewer, self.image_layer)
        axis = self._display_axis()
        if axis is None or axis == self._prompt_axis:
            self._update_status()
            return
        self._prompt_axis = axis
        self.prompts.show(axis, {p: self.session.prompts(p) for p in self.session.planes_with_prompts()})
        self._configure_engine()

    # ================================================================== prompts

    def _on_prompt_layers(self, event=None) -> None:
        if self.prompts is None or self.prompts.syncing or self.session is None:
            return
        action = str(getattr(event, "action", "changed")).split(".")[-1].lower()
        if action not in ("added", "removed", "changed"):
            return
        if _same_layer(getattr(event, "source", None), self.prompts.points):
            self.prompts.recolour()
        self.sync_prompts()

    def sync_prompts(self) -> list[Plane]:
        """Read the prompt layers into the session; predict the planes whose prompts changed."""
        reading = self.prompts.read(self._prompt_axis)
        for problem in reading.problems:
            self._notify("warning", problem)
        if reading.superseded_boxes:
            stale = list(reading.superseded_boxes)
            QTimer.singleShot(0, lambda: self.prompts is not None and self.prompts.remove_boxes(stale))
        changed = self.session.set_axis_prompts(self._prompt_axis, reading.by_index)
        if changed:
            self.preview_layer.refresh()
        for plane in changed:
            self.engine.request(plane)
            self.preview_changed.emit(plane)
        if changed and self.segmenter is None and not self._warned_no_model:
            self._warned_no_model = True
            self._notify("warning", f"no model is loaded: {NO_MODEL_HELP}")
        self._update_buttons()
        return changed

    def _on_preview_painted(self, event=None) -> None:
        """napari's brush, eraser or fill on the preview: the painted planes keep what they show now."""
        session = self.session
        if session is None:
            return
        planes = _painted_planes(getattr(event, "value", None), self._prompt_axis, session.shape) or [self.current_plane()]
        # napari may announce an edit before writing it (a programmatic paint does): record it afterwards
        QTimer.singleShot(0, lambda: self._record_preview_paint(session, [p for p in planes if p is not None]))

    def _record_preview_paint(self, session: AnnotationSession, planes: list[Plane]) -> None:
        if session is not self.session:
            return
        for plane in planes:
            session.preview_painted(plane)
        self.refresh_preview()
        for plane in planes:
            self.preview_changed.emit(plane)

    def refresh_preview(self) -> None:
        """Redraw the preview and update the controls after the session's preview changed outside a
        prompt (a propagation, painting)."""
        if self.preview_layer is not None:
            self.preview_layer.refresh()
        self._update_buttons()

    def _on_predicted(self, plane: Plane, prediction, milliseconds: float) -> None:
        self.preview_layer.refresh()
        shown = self.session.candidate_of(plane) if self.session is not None else None
        which = f" · mask {shown[0]} of {shown[1]} (M: next)" if shown is not None and shown[1] > 1 else ""
        ignored = self.session is not None and self.session.last_click_ignored(plane)
        hint = f"\n{IGNORED_CLICK_HINT}" if ignored else ""
        self.preview_label.setText(f"preview: {plane.describe()} · score {prediction.score:.2f}{which} · {milliseconds:.0f} ms{hint}")
        self.preview_changed.emit(plane)
        self._update_buttons()
        self._update_status()

    def add_point(self, point: tuple[float, float], positive: bool = True, plane: Optional[Plane] = None) -> None:
        """Add a prompt point at (row, col) of ``plane`` (default: the plane on screen), as a click would."""
        self.prompts.add_point(self._require_plane(plane), point, positive)

    def add_box(self, box: tuple[float, float, float, float], plane: Optional[Plane] = None) -> None:
        """Add a box (row0, col0, row1, col1) on ``plane`` (default: the plane on screen), as a drag would."""
        self.prompts.add_box(self._require_plane(plane), box)

    def next_mask(self, plane: Optional[Plane] = None) -> bool:
        """Show the next of the model's masks for the single click or the box alone on ``plane``
        (default: the plane on screen). False, with a note in the status bar, when that plane has no
        such choice."""
        plane = plane or self.current_plane()
        session = self.session
        if plane is None or session is None or session.next_candidate_request(plane) is None:
            self._notify("info", "no other mask to show: only a single click or a box alone (no other prompt) has several")
            return False
        self.engine.request(plane, next_candidate=True)
        return True

    def _require_plane(self, plane: Optional[Plane]) -> Plane:
        plane = plane or self.current_plane()
        if plane is None or self.prompts is None:
            raise ValueError("no plane to place a prompt on: choose an image and a 2D view")
        if plane.axis != self._prompt_axis:
            raise ValueError(f"{plane.describe()} is not along the axis on screen (axis {self._prompt_axis})")
        return plane

    def _shift_click(self, layer, event):
        """Shift+click in the points layer adds a background point."""
        if layer.mode != "add" or "Shift" not in event.modifiers:
            return
        previous = self.prompts.positive
        self.prompts.set_positive(False)
        yield
        while event.type == "mouse_move":
            yield
        # napari adds the point after this release handler has run: restore the polarity after that
        QTimer.singleShot(0, lambda: self.prompts is not None and self.prompts.set_positive(previous))

    def set_positive(self, positive: bool) -> None:
        """New points mark the object (True) or the background (False)."""
        (self.positive_radio if positive else self.negative_radio).setChecked(True)
        if self.prompts is not None:
            self.prompts.set_positive(positive)

    def toggle_polarity(self) -> None:
        self.set_positive(not self.positive_radio.isChecked())

    def activate_points(self) -> None:
        """Make the points layer active, in add mode."""
        if self.prompts is not None:
            self.viewer.layers.selection.active = self.prompts.points
            self.prompts.points.mode = "add"
            self.points_mode_button.setChecked(True)

    def activate_box(self) -> None:
        """Make the box layer active, in rectangle mode."""
        if self.prompts is not None:
            self.viewer.layers.selection.active = self.prompts.boxes
            self.prompts.boxes.mode = "add_rectangle"
            self.box_mode_button.setChecked(True)

    def clear_prompts(self) -> None:
        """Forget all prompts and the preview (Escape)."""
        if self.session is None:
            return
        self.engine.discard_predictions()
        self.session.clear_prompts()
        self.prompts.clear()
        self.preview_layer.refresh()
        self.preview_label.setText("")
        self._update_buttons()

    # ================================================================== objects

    def commit(self, name: Optional[str] = None):
        """Write the preview into the objects layer under a new id (Enter). Returns the new record or None."""
        if self.session is None:
            return None
        try:
            record = self.session.commit(name)
        except ValueError as exc:
            self._notify("error", str(exc))
            return None
        if record is None:
            self._notify("info", "nothing to commit yet: click the object or drag a box around it first")
            return None
        self.engine.discard_predictions()
        self.prompts.clear()
        self.preview_layer.refresh()
        self.labels_layer.selected_label = record.id
        self.preview_label.setText(f"committed object {record.id} ({record.voxels:,} voxels)")
        self._after_objects_changed(select=record.id)
        return record

    def undo(self) -> None:
        """Undo the latest commit or deletion (Ctrl+Z)."""
        if self.session is not None and self.session.undo() is not None:
            self._after_objects_changed()

    def redo(self) -> None:
        """Redo the latest undone commit or deletion (Ctrl+Shift+Z)."""
        if self.session is not None and self.session.redo() is not None:
            self._after_objects_changed()

    def rename_object(self, label_id: int, name: str) -> None:
        if self.session is None:
            return
        try:
            self.session.table.rename(label_id, name)
        except (KeyError, ValueError) as exc:
            self._notify("warning", str(exc).strip("'\""))
        self._after_objects_changed(refresh_layer=False)

    def set_object_visible(self, label_id: int, visible: bool) -> None:
        if self.session is not None:
            self.session.table.set_visible(label_id, visible)
            self._update_colormap()
            self.objects_changed.emit()

    def delete_object(self, label_id: int) -> None:
        if self.session is not None:
            self.session.delete_object(label_id)
            self._after_objects_changed()

    def _delete_selected(self) -> None:
        label_id = self.objects_panel.selected_id()
        if label_id is None:
            self._notify("info", "select an object in the list to delete it")
        else:
            self.delete_object(label_id)

    def select_object(self, label_id: int) -> None:
        """Make ``label_id`` the label napari's brush paints with, and show a plane that holds it."""
        if self.session is None or self.labels_layer is None:
            return
        self.labels_layer.selected_label = int(label_id)
        plane = self.current_plane()
        if plane is None or plane.axis is None:
            return
        where = np.nonzero(self.session.labels == label_id)[plane.axis]
        if where.size == 0 or np.any(where == plane.index):
            return
        data_point = np.asarray(self.session.shape, dtype=float) / 2.0
        data_point[plane.axis] = int(np.median(where))
        world = np.asarray(self.image_layer.data_to_world(data_point), dtype=float)
        point = list(self.viewer.dims.point)
        offset = len(point) - len(world)
        world_axis = next(a for a in self.viewer.dims.not_displayed if a >= offset)
        point[world_axis] = world[world_axis - offset]
        self.viewer.dims.point = point

    def _on_labels_painted(self, event=None) -> None:
        # napari may announce an edit before writing it (a programmatic paint does): count afterwards
        QTimer.singleShot(0, self._recount_objects)

    def _recount_objects(self) -> None:
        if self.session is not None:
            self.session.labels_edited()
            self._after_objects_changed(refresh_layer=False)

    def _after_objects_changed(self, select: Optional[int] = None, refresh_layer: bool = True) -> None:
        if self.session is None:
            return
        if refresh_layer and self.labels_layer is not None:
            self.labels_layer.refresh()
        self._update_colormap()
        self.objects_panel.show_table(self.session.table)
        if select is not None:
            self.objects_panel.select_id(select)
        self._update_buttons()
        self.objects_changed.emit()

    def _update_colormap(self) -> None:
        if self.session is not None and self.labels_layer is not None:
            colours = {record.id: (record.colour, record.visible) for record in self.session.table.records()}
            self.labels_layer.colormap = _direct_colormap(colours)

    def _update_buttons(self) -> None:
        session = self.session
        has_prompts = session is not None and session.has_pending_object
        self.commit_button.setEnabled(has_prompts)
        self.clear_button.setEnabled(has_prompts)
        self.undo_button.setEnabled(session is not None and session.history.can_undo)
        self.redo_button.setEnabled(session is not None and session.history.can_redo)
        plane = self.current_plane() if session is not None else None
        self.next_mask_button.setEnabled(plane is not None and session.next_candidate_request(plane) is not None)
        self.delete_button.setEnabled(session is not None and len(session.table) > 0)
        for button in (self.export_button, self.points_mode_button, self.box_mode_button):
            button.setEnabled(session is not None)
        self.state_changed.emit()

    # ================================================================== export

    def export(self, path) -> ExportResult:
        """Write the objects' labels (with the image's geometry) and the object table (CSV, JSON)."""
        if self.session is None:
            raise ValueError("no image is being annotated")
        extra = {"image": self.image_layer.name}
        if self.segmenter is not None:
            extra["model"] = self.segmenter.model.name
        return self.session.export(path, extra)

    def _export_dialog(self) -> None:
        if self.session is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export labels and object table", f"{self.image_layer.name}_labels.nii.gz",
            "Labels (*.nii.gz *.nii *.nrrd *.mha *.mhd)",
        )
        if not path:
            return
        try:
            result = self.export(path)
        except (OSError, ValueError) as exc:
            self._notify("error", f"export failed: {exc}")
            return
        self._notify("info", f"wrote {result.labels}, {result.csv.name} and {result.json.name}")

    # ================================================================== keys, errors, closing

    def _key_actions(self, toggle: bool) -> list:
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

    def _notify(self, level: str, message: str) -> None:
        from napari.utils import notifications

        show = {"error": notifications.show_error, "warning": notifications.show_warning}.get(level, notifications.show_info)
        show(message)

    def _report(self, context: str, error: BaseException) -> None:
        """An engine error as one notification; the viewer stays usable."""
        if _is_out_of_memory(error):
            device = self.segmenter.model.device if self.segmenter is not None else "the device"
            message = (
                f"out of memory while {context} on {device}: choose a smaller model, the CPU, or close other "
                f"programs, then load the model again"
            )
        else:
            message = f"{context} failed: {str(error).strip() or type(error).__name__}"
        self.model_panel.show_status(message)
        self._notify("error", message)

    def shutdown(self) -> None:
        """Stop for good: called when the dock closes (napari re-parents the widget) or the widget closes.

        Viewer and layer event handlers are disconnected; the prompt and preview layers (and the
        shortcuts bound on them) are removed, the objects layer stays; a model still loading is
        dropped; a fine-tuning round is cancelled; queued engine jobs are dropped and the engine
        is closed on a background thread once its running job returns (:attr:`closing`), after
        which nothing here holds the model any more.
        """
        if self._closed:
            return
        self._closed = True
        if self._loading is not None:
            self._loading.cancel()
            self._loading = None
        self._step_timer.stop()
        for emitter, handler in self._events:
            try:
                emitter.disconnect(handler)
            except (TypeError, ValueError, RuntimeError):
                pass
        self.finetune_panel.shutdown()
        try:
            self._detach()
        except RuntimeError:   # the viewer's Qt objects are already gone (application exit)
            pass
        self.closing = self.engine.close()

    @property
    def closed(self) -> bool:
        """True after :meth:`shutdown`."""
        return self._closed

    def event(self, event) -> bool:  # noqa: D401 - Qt API
        # napari closes a dock by taking the widget out of it (setParent(None)), without close().
        if event.type() == QEvent.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked and not self._closed:
                self.shutdown()
        return super().event(event)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)


def _same_layer(a, b) -> bool:
    """Whether ``a`` and ``b`` are the same layer (napari hands plugins proxies, so never use ``is``)."""
    return a is not None and b is not None and a.unique_id == b.unique_id


def _remove_layer(viewer, layer) -> None:
    for candidate in list(viewer.layers):
        if _same_layer(candidate, layer):
            viewer.layers.remove(candidate)


def _refill(combo: QComboBox, items: list[tuple[str, object]], current) -> None:
    """Replace ``combo``'s items without emitting change signals; select the item whose data is ``current``."""
    combo.blockSignals(True)
    combo.clear()
    for text, data in items:
        combo.addItem(text, data)
    combo.setCurrentIndex(max(combo.findData(current), 0) if current is not None else 0)
    combo.blockSignals(False)


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


def _button(text: str, action) -> QPushButton:
    button = QPushButton(text)
    button.clicked.connect(action)
    return button


def _direct_colormap(colours: dict[int, tuple[str, bool]]):
    """A napari label colormap: id → (hex colour, visible); 0 transparent, ids not listed white."""
    from napari.utils.colormaps import DirectLabelColormap
    from napari.utils.colormaps.standardize_color import transform_color

    mapping: dict = {None: (1.0, 1.0, 1.0, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for label_id, (colour, visible) in colours.items():
        rgba = np.asarray(transform_color(colour)[0], dtype=float)
        rgba[3] = 1.0 if visible else 0.0
        mapping[int(label_id)] = tuple(rgba)
    return DirectLabelColormap(color_dict=mapping)


def _painted_planes(atoms, axis: Optional[int], shape: tuple[int, ...]) -> list[Plane]:
    """The planes along ``axis`` that a napari Labels paint event's history atoms touched.

    An atom is a masked edit (``slice_key``: a slice per array axis) or an (indices, before, after)
    triple. A 2D image has one plane. Returns [] when the atoms are not understood.
    """
    if not atoms:
        return []
    if axis is None:
        return [Plane(None, 0)]
    indices: set[int] = set()
    for atom in atoms:
        key = getattr(atom, "slice_key", None)
        if key is not None:
            start, stop, _ = key[axis].indices(shape[axis])
            indices.update(range(start, stop))
        elif isinstance(atom, tuple) and len(atom) == 3 and len(atom[0]) == len(shape):
            indices.update(int(i) for i in np.unique(np.asarray(atom[0][axis])))
        else:
            return []
    return [Plane(axis, i) for i in sorted(indices) if 0 <= i < shape[axis]]


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    import torch

    if isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()

"""The "Segment (VFM)" dock widget: the interactive segmentation flow in napari.

Choose an image layer, a model and an intensity window; click object/background points or drag
a box on any plane; the preview follows every prompt change; Enter commits it as a new object.

This module is the composition root: the signals, the public state and the wiring of viewer
events. The work is done by parts it is composed of: :mod:`.annotator_ui` builds the controls,
:class:`~napari_vfmseg.widgets.layer_lifecycle.LayerLifecycle` owns the layers and shortcuts,
:class:`~napari_vfmseg.widgets.model_actions.ModelActions` the model and the engine's image,
:class:`~napari_vfmseg.widgets.prompt_actions.PromptActions` and
:class:`~napari_vfmseg.widgets.object_actions.ObjectActions` what the user does,
:class:`~napari_vfmseg.widgets.autosave_actions.AutosaveActions` the autosave and its offer;
:mod:`.viewer_planes` says which plane is on screen. The state itself is Qt-free:
:class:`~napari_vfmseg.annotation.session.AnnotationSession` (prompts per plane, preview,
objects, undo/redo, export); every model call runs through
:class:`~napari_vfmseg.widgets.engine_link.EngineLink` on a worker thread, never on the UI thread.

Extension point: :meth:`AnnotatorWidget.add_section` adds a panel (3D propagation, fine-tuning)
under the object list; such panels use the public attributes ``session``, ``segmenter``,
``engine``, ``image_layer``, ``labels_layer``, :meth:`current_plane`, :meth:`use_segmenter`,
:meth:`refresh_preview` and the signals ``model_changed``, ``objects_changed``,
``preview_changed`` and ``state_changed``.

Closing: napari closes a dock by re-parenting the widget, not by ``close()``; the widget notices
(:meth:`AnnotatorWidget.event`) and shuts down (:meth:`AnnotatorWidget.shutdown`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

from qtpy.QtCore import QEvent, QTimer, Signal
from qtpy.QtWidgets import QGroupBox, QVBoxLayout, QWidget

from napari_vfmseg.annotation.autosave import AutosaveStore
from napari_vfmseg.annotation.model_choice import default_model_name
from napari_vfmseg.annotation.planes import Plane
from napari_vfmseg.annotation.session import AnnotationSession
from napari_vfmseg.widgets.annotator_ui import SHORTCUTS, WINDOW_CHOICES, build_ui
from napari_vfmseg.widgets.autosave_actions import AUTOSAVE_DELAY_MS, AutosaveActions
from napari_vfmseg.widgets.engine_link import EngineLink
from napari_vfmseg.widgets.layer_lifecycle import LayerLifecycle
from napari_vfmseg.widgets.model_actions import ModelActions
from napari_vfmseg.widgets.notify import notify
from napari_vfmseg.widgets.object_actions import ObjectActions
from napari_vfmseg.widgets.prompt_actions import IGNORED_CLICK_HINT, PromptActions
from napari_vfmseg._view_orientation import show_head_up
from napari_vfmseg.widgets.viewer_planes import current_plane, displayed_axis

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from napari_vfmseg.widgets.prompt_layers import PromptLayers

__all__ = ["AnnotatorWidget", "WINDOW_CHOICES", "SHORTCUTS", "IGNORED_CLICK_HINT"]


class AnnotatorWidget(LayerLifecycle, ModelActions, PromptActions, ObjectActions, AutosaveActions, QWidget):
    """Dock widget for interactive SAM segmentation of the images in ``napari_viewer``.

    ``autoload``: load :func:`~napari_vfmseg.annotation.model_choice.default_model_name` in the
    background when the widget opens (tests and scripts pass False and call :meth:`use_model`).
    ``autosave``: keep committed objects in the autosave folder and offer them back (True), in
    another folder (a path), or not at all (False); see :mod:`.autosave_actions`.
    """

    model_changed = Signal(object)     # the Segmenter now in use
    objects_changed = Signal()         # commit, undo, redo, rename, hide, delete, brush edits
    preview_changed = Signal(object)   # the Plane whose preview changed
    state_changed = Signal()           # prompts, preview, objects or image changed: sections update their controls

    def __init__(self, napari_viewer: "napari.viewer.Viewer", autoload: bool = True,
                 autosave: "bool | str | os.PathLike" = True) -> None:
        super().__init__()
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
        self.autosave_store = None if autosave is False else AutosaveStore(None if autosave is True else autosave)
        self.autosave_offer = None
        self._autosave_key: Optional[str] = None
        self._autosave_sequence = 0

        build_ui(self)
        self._step_timer = QTimer(self)
        self._step_timer.setSingleShot(True)
        self._step_timer.setInterval(120)
        self._step_timer.timeout.connect(self._plane_settled)
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(lambda: self.autosave_now(background=True))
        self.objects_changed.connect(self._schedule_autosave)
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
        return current_plane(self.viewer.dims, self.image_layer, self.session.shape)

    def _display_axis(self) -> Optional[int]:
        """The image's array axis the 2D view slices through (None in a 3D view)."""
        return displayed_axis(self.viewer.dims, self.image_layer, self.session.shape)

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

    # ================================================================== errors, closing

    def _notify(self, level: str, message: str) -> None:
        notify(level, message)

    def _report(self, context: str, error: BaseException) -> None:
        """An engine error as one notification; the viewer stays usable."""
        if _is_out_of_memory(error):
            device = self.segmenter.model.device if self.segmenter is not None else "the device"
            message = (
                f"out of memory while {context} on {device}: choose a smaller model, the CPU, or close other "
                f"programs, then load the model again"
            )
        else:
            from napari_vfmseg.engine.errors import NonFiniteImageError

            if isinstance(error, NonFiniteImageError):   # bad input, not a failure: say what is wrong
                message = f"{context}: {error}"
                self.model_panel.show_status(message)
                self._notify("warning", message)
                return
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
        self._autosave_timer.stop()
        try:
            self.autosave_now()   # the latest objects, written before the session goes
        except (OSError, ValueError) as exc:
            self._notify("warning", f"autosave failed: {exc}")
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


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    import torch

    if isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()

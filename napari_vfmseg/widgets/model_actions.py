"""The annotator's model and engine: load a model on a worker, hand the engine the image, window
and axis on screen, and say in the status line what the engine is doing.

:class:`ModelActions` is a part of :class:`~napari_vfmseg.widgets.annotator.AnnotatorWidget`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from napari_vfmseg._layer_geometry import GEOMETRY_KEY
from napari_vfmseg.annotation.model_choice import NO_MODEL_HELP, ModelSource, load_engine
from napari_vfmseg.widgets.workers import run_in_background

__all__ = ["ModelActions"]


class ModelActions:
    """Model loading and engine configuration of the annotator (uses its ``engine``, ``session``,
    ``image_layer`` and ``model_panel``)."""

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
        self.model_panel.show_zoom(getattr(segmenter, "zoom", None) is not None)
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
        self._show_model_window()
        self.session.invalidate()
        self._configure_engine()

    def set_zoom(self, on: bool) -> None:
        """Zoom in on small boxes (a crop around each, at full model resolution) or segment them on the
        whole plane; the previews of the prompted planes are predicted again."""
        from napari_vfmseg.engine.zoom import ZoomPolicy

        self.model_panel.show_zoom(on)
        if self.segmenter is None:
            return
        self.segmenter.zoom = ZoomPolicy() if on else None
        if self.session is not None:
            self.session.invalidate()   # logits of the other setting are not fed back
        self.engine.request_prompted()  # the image, its window and embeddings stay as they are

    def _show_model_window(self) -> None:
        """Set the image layer's contrast to the window the engine uses: what you see is what the model sees."""
        if self.image_layer is None or self.image_layer.rgb:
            return
        from napari_vfmseg.io.windowing import display_window

        window = display_window(self._window_value(), np.asarray(self.image_layer.data), self._modality())
        self.image_layer.contrast_limits = (window.low, window.high)

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
        if not self._plane_has_finite_voxels(plane):
            panel.show_status(f"{plane.describe()}: no finite voxel (all NaN or infinite): nothing to segment here")
            return
        state = "ready" if self.engine.plane_embedded(plane) else "embedding …"
        extra = ""
        if self.session.ndim == 3:
            extra = f" · {self.engine.embedded_count}/{self.session.shape[self.engine.axis]} planes embedded"
        # damaged disk-cache entries the engine found, deleted and computed again (0 on an older engine)
        damaged = getattr(getattr(self.segmenter, "stats", None), "damaged_entries", 0)
        repaired = f" · {damaged} damaged cache entr{'y' if damaged == 1 else 'ies'} recomputed" if damaged else ""
        panel.show_status(f"{plane.describe()}: {state}{extra} · encoder calls {self.segmenter.encoder_calls}{repaired}")

    def _plane_has_finite_voxels(self, plane) -> bool:
        """False when every voxel of ``plane`` of the image is NaN or infinite (integer images: always True)."""
        data = np.asarray(self.image_layer.data)
        if not np.issubdtype(data.dtype, np.floating):
            return True
        if plane.axis is not None:
            data = np.take(data, plane.index, axis=plane.axis)
        return bool(np.isfinite(data).any())

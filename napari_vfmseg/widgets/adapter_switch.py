"""Switching the adapter the viewer predicts with: a new version, an older one, or the base model.

:class:`AdapterSwitch` (a part of :class:`~napari_vfmseg.widgets.finetune_panel.FinetunePanel`)
runs the switch on the annotator's engine queue, so it never overlaps a prediction: background
embedding stops, :meth:`~napari_vfmseg.training.adapter_store.AdapterStore.swap` puts the adapter
on (or off; a failure puts the previous one back), the project index records the choice, and the
engine takes the image again, so an encoder-changing adapter re-embeds the plane on screen first.
"""

from __future__ import annotations

from typing import Optional

from napari_vfmseg.widgets.notify import notify as _notify

__all__ = ["AdapterSwitch", "dice_pair"]


class AdapterSwitch:
    """The versions list and activation of the fine-tune panel (uses its ``annotator``, ``store``,
    controls)."""

    def _model(self):
        segmenter = self.annotator.segmenter
        return None if segmenter is None else segmenter.model

    def _versions(self) -> list:
        model = self._model()
        if self.store is None or model is None:
            return []
        try:
            return self.store.versions(model.fingerprint)
        except (ValueError, OSError) as exc:
            self.compare_label.setText(str(exc))
            return []

    def active_version_name(self) -> Optional[str]:
        """The project version on the model in use (None: no adapter, or one not from this project)."""
        from napari_vfmseg.training.adapters import active_adapter

        model = self._model()
        info = active_adapter(model) if model is not None else None
        if info is None or self.store is None:
            return None
        try:
            version = self.store.find_by_fingerprint(info.fingerprint)
        except (ValueError, OSError):
            return None
        return version.name if version is not None else None

    def model_text(self) -> str:
        """"model … · adapter …": what predicts in the viewer now."""
        from napari_vfmseg.training.adapters import active_adapter

        model = self._model()
        if model is None:
            return "model: none loaded"
        info = active_adapter(model)
        if info is None:
            adapter = "none (base model)"
        else:
            name = self.active_version_name()
            adapter = f"{name} ({info.mode})" if name else f"{info.mode} adapter {info.fingerprint} (not in this project)"
        return f"model: {model.name} [{model.fingerprint[:8]}] · adapter: {adapter}"

    def _refresh_versions(self) -> None:
        versions = self._versions()
        current = self.versions_combo.currentData()
        active = self.active_version_name()
        self.versions_combo.blockSignals(True)
        self.versions_combo.clear()
        self.versions_combo.addItem("base model (no adapter)" + ("  ✓" if active is None else ""), None)
        for version in reversed(versions):
            self.versions_combo.addItem(version.describe() + ("  ✓" if version.name == active else ""), version.name)
        index = self.versions_combo.findData(current) if current is not None else 0
        self.versions_combo.setCurrentIndex(max(index, 0))
        self.versions_combo.blockSignals(False)
        self._show_comparison()

    def _show_comparison(self, *_args) -> None:
        """The selected version's figures beside the active one's."""
        name = self.versions_combo.currentData()
        active = self.active_version_name()
        if self.store is None or self._model() is None:
            self.compare_label.setText("")
            return
        lines = []
        for label, version_name in (("selected", name), ("in use", active)):
            if version_name is None:
                lines.append(f"{label}: base model")
                continue
            try:
                v = self.store.get(version_name)
            except (ValueError, OSError):
                continue
            lines.append(
                f"{label}: {v.name} · {v.created.replace('T', ' ')[:16]} · {v.mode}"
                f"{f' r{v.rank}' if v.rank else ''} · {v.n_planes} planes ({v.n_replayed} replayed), {v.n_examples} objects"
                f" · held-out {dice_pair(v.dice_before, v.dice_after)} · original domain {dice_pair(v.guard_before, v.guard_after)}"
                f" · from {v.parent or 'base'}"
            )
        self.compare_label.setText("\n".join(lines))

    def _on_use_new(self, checked: bool) -> None:
        result = self.last_result
        if result is None or result.version is None:
            return
        self.activate(result.version.name if checked else result.parent)

    def activate(self, name: Optional[str]) -> bool:
        """Put version ``name`` (None: no adapter) on the model in use, on the engine's queue.

        Background embedding stops first; afterwards the engine takes the image again, so an
        encoder-changing adapter re-embeds the plane on screen first. A failure puts the previous
        adapter back. Returns False when it cannot start.
        """
        segmenter = self.annotator.segmenter
        if segmenter is None or self.store is None or self.activating or self.running:
            return False
        model, store, engine = segmenter.model, self.store, self.annotator.engine
        self.activating = True
        self._update_controls()
        self.status_label.setText(f"switching to {name or 'the base model'} …")

        def prepare():
            running = engine.stop_prefetch()
            engine.detach()   # no prediction, prefetch or propagation may start until the switch is done

            def job():
                if running is not None:
                    running.join()                 # the plane being encoded is done before the weights change
                segmenter.cancel()
                return store.swap(model, name)     # a failure puts the previous adapter back

            return job

        def done(encoder_changed: bool) -> None:
            try:
                store.activate(name, model.fingerprint)
            except (ValueError, OSError) as exc:
                _notify("warning", f"the adapter is in use, but the project index could not record it: {exc}")
            self._finish_activation(name, True, encoder_changed, segmenter)

        def failed(error: BaseException) -> None:
            _notify("error", f"could not switch to {name or 'the base model'}: {str(error).strip() or type(error).__name__}; "
                             "the previous adapter stays in use")
            self._finish_activation(name, False, False, segmenter)

        engine.jobs.submit(("adapter", id(self)), prepare, done, failed)
        return True

    def _finish_activation(self, name: Optional[str], ok: bool, encoder_changed: bool, segmenter) -> None:
        self.activating = False
        current = self.annotator.segmenter   # another model may have been loaded meanwhile: attach that one
        if current is not None:
            self._reembedding = ok and encoder_changed and current is segmenter and self.annotator.session is not None
            self.annotator.use_segmenter(current)   # the engine takes the image again (new cache keys)
        version = getattr(self.last_result, "version", None)
        self.use_new_check.blockSignals(True)
        self.use_new_check.setChecked(version is not None and self.active_version_name() == version.name)
        self.use_new_check.blockSignals(False)
        active = self.active_version_name()   # the list shows what is in use now
        self.versions_combo.setCurrentIndex(max(self.versions_combo.findData(active), 0) if active else 0)
        if ok:
            self._status = (f"now using {name or 'the base model'}"
                            + (" · its encoder differs: planes are embedded again, the one on screen first"
                               if encoder_changed else ""))
        self.refresh()
        self.activation_finished.emit(name, ok)

    def _on_embed_progress(self, done: int, total: int) -> None:
        if not self._reembedding:
            return
        if total and done >= total:
            self._reembedding = False
            self._update_controls()
            return
        self.status_label.setText(f"embedding planes for the new encoder: {done} of {total or '…'}")


def dice_pair(before: Optional[float], after: Optional[float]) -> str:
    """"0.412 → 0.655" (– for a missing side; "not measured" when both are missing)."""
    if before is None and after is None:
        return "not measured"
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    return f"{fmt(before)} → {fmt(after)}"

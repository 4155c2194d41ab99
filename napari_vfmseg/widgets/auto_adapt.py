""""Adapt while I work": short fine-tuning rounds in the background as the user commits objects.

:class:`AutoAdapt` belongs to the fine-tune panel. When it is on, every ``every`` newly annotated
planes (planes holding committed objects, counted as the panel counts them) start a short round
(:data:`AUTO_STEPS` steps at most) with the panel's own :meth:`~napari_vfmseg.widgets.finetune_panel.FinetunePanel.start`,
so progress, **Cancel**, the version list and rollback work as for a round started by hand. A
round that saves a version switches the viewer to it (the engine takes the image again and the
planes with prompts are predicted again, the one on screen included); a cancelled or unimproved
round changes nothing. It is on by default for the built-in model, whose rounds are short.
"""

from __future__ import annotations

from typing import Optional

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QSpinBox

from napari_vfmseg.annotation.model_choice import BUILTIN_MODEL

__all__ = ["AutoAdapt", "AUTO_STEPS", "DEFAULT_EVERY"]

AUTO_STEPS = 30       # steps of an automatic round at most (the panel's setting when lower)
DEFAULT_EVERY = 3     # newly annotated planes between automatic rounds


class AutoAdapt(QObject):
    """The "Adapt while I work" switch of ``panel``. Signal ``started(planes)`` when it starts a
    round (``planes``: annotated planes counted then)."""

    started = Signal(int)

    def __init__(self, panel) -> None:
        super().__init__(panel)
        self.panel = panel
        self.check = QCheckBox("Adapt while I work")
        self.check.setToolTip("after every few newly annotated planes, train a short round in the background "
                              "and switch to the new version when it improves on the held-out planes")
        self.check.toggled.connect(self._on_toggled)
        self.every_spin = QSpinBox()
        self.every_spin.setRange(1, 100)
        self.every_spin.setValue(DEFAULT_EVERY)
        self.every_spin.setPrefix("every ")
        self.every_spin.setSuffix(" planes")
        self._chosen = False                 # the user set the switch: the model no longer decides
        self._baseline = 0                   # annotated planes when the last automatic round started
        self._round_is_auto = False
        panel._count_timer.timeout.connect(self.maybe_start)   # after the panel recounts
        panel.round_finished.connect(self._on_round_finished)
        panel.annotator.model_changed.connect(self._on_model_changed)

    def layout(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(self.check)
        row.addWidget(self.every_spin)
        return row

    @property
    def enabled(self) -> bool:
        return self.check.isChecked()

    def set_enabled(self, on: bool) -> None:
        """Turn the switch on or off as the user would."""
        self._chosen = True
        self.check.setChecked(bool(on))

    def _on_toggled(self, on: bool) -> None:
        if on:
            self._baseline = min(self._baseline, self._planes())

    def _on_model_changed(self, segmenter) -> None:
        if not self._chosen:
            self.check.blockSignals(True)
            self.check.setChecked(segmenter is not None and segmenter.model.name == BUILTIN_MODEL)
            self.check.blockSignals(False)

    def _planes(self) -> int:
        counts = self.panel._counts or self.panel.counts()
        return int(counts["planes"])

    def maybe_start(self) -> bool:
        """Start an automatic round when the switch is on, ``every`` new planes are annotated and the
        panel can start one. True when a round started."""
        panel = self.panel
        if not self.enabled or panel.running or panel.activating or panel.unavailable_reason() is not None:
            return False
        planes = self._planes()
        if planes - self._baseline < int(self.every_spin.value()):
            return False
        config = panel.round_config()
        from dataclasses import replace

        config = replace(config, steps=min(int(config.steps), AUTO_STEPS))
        self._round_is_auto = True
        if not panel.start(config):
            self._round_is_auto = False
            return False
        self._baseline = planes
        self.started.emit(planes)
        return True

    def _on_round_finished(self, result) -> None:
        auto, self._round_is_auto = self._round_is_auto, False
        version: Optional[object] = getattr(result, "version", None) if result is not None else None
        if auto and version is not None and not result.cancelled and self.enabled:
            self.panel.activate(version.name)

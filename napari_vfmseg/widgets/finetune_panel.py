"""The annotator's "Fine-tune" section: adapt the model to the objects committed in the viewer.

The panel counts the planes with committed objects in the open volumes (the annotated image and
every image whose "<name> objects" labels layer is open; optionally also a folder of image/label
pairs), and **Start** runs one round (:func:`napari_vfmseg.training.rounds.run_round`) on a
worker thread, with a progress bar, a live plot of the loss and the validation Dice, and
**Cancel**. Training runs on a *copy* of the model: the viewer keeps predicting with the model
and adapter in use, and nothing about them changes until you switch the new adapter on.

When a round ends, the panel shows the 1-click Dice before and after on the held-out planes and
on the original domain (a shipped sample), and the new version appears in the project folder's
version list. The switch "use vNNN" activates it; the list activates (compares, rolls back to)
any version or the base model. An activation runs on the annotator's engine queue, so it never
overlaps a prediction: background embedding stops, the adapter goes on (or off), and the engine
takes the image again — when the adapter changes the encoder, its embeddings have a new cache
key, so the plane on screen is embedded first, with progress, then the others. A cancelled or
failing round saves nothing and changes nothing in the viewer; a failed activation puts the
previous adapter back. The label at the top always names the model and the adapter in use.
**Distil** (:mod:`~napari_vfmseg.widgets.distill_action`) turns the model in use into a small student.
"""

from __future__ import annotations

import os
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QLabel, QLayout, QLineEdit, QProgressBar,
                            QPushButton, QSpinBox, QVBoxLayout, QWidget)

from napari_vfmseg.widgets.adapter_switch import AdapterSwitch, dice_pair
from napari_vfmseg.widgets.auto_adapt import AutoAdapt
from napari_vfmseg.widgets.distill_action import DistillAction
from napari_vfmseg.widgets.finetune_sources import AnnotatedSource, annotated_sources
from napari_vfmseg.widgets.layout import row
from napari_vfmseg.widgets.loss_plot import LossPlot
from napari_vfmseg.widgets.notify import notify as _notify
from napari_vfmseg.widgets.workers import run_in_background, set_all

if TYPE_CHECKING:  # pragma: no cover
    from napari_vfmseg.widgets.annotator import AnnotatorWidget

__all__ = ["FinetunePanel", "LossPlot", "default_project_folder", "MODES_SHOWN", "DEFAULT_STEPS", "DEFAULT_RANK"]

MODES_SHOWN = ("auto", "full", "decoder", "encoder-lora")  # auto: all weights for small models, LoRA for large
# Defaults of training.round_config.RoundConfig (the measured default round), repeated so that
# building the panel imports no torch (importing the training package would);
# tests/test_widget_finetune.py checks that they agree.
DEFAULT_STEPS = 60
DEFAULT_RANK = 4
_GROUP_OFFSET = 100_000   # plane numbers of different volumes never share a split block


def default_project_folder() -> Path:
    """``$VFMSEG_HOME/finetune`` or ``~/.cache/napari-vfmseg/finetune`` (created on the first save)."""
    home = os.environ.get("VFMSEG_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "napari-vfmseg"
    return base / "finetune"


class FinetunePanel(AdapterSwitch, QWidget):
    """Fine-tuning controls for ``annotator`` (see the module docstring).

    Public state: ``store`` (the project's :class:`~napari_vfmseg.training.adapter_store.AdapterStore`),
    ``last_result`` (the latest round's RoundResult, None before), ``running``, ``activating``.
    ``guard_sample``: the shipped sample measured as the original domain (None: no guard).
    Signals: ``round_finished(result or None)``, ``activation_finished(name or None, ok)``;
    ``progressed(RoundProgress)`` is emitted from the worker thread and handled on the UI thread.
    """

    progressed = Signal(object)
    round_finished = Signal(object)
    activation_finished = Signal(object, bool)

    def __init__(self, annotator: "AnnotatorWidget", parent: Optional[QWidget] = None,
                 project: Optional[str | os.PathLike] = None) -> None:
        super().__init__(parent)
        self.annotator = annotator
        self.store = None
        self.last_result = None
        self.running = False
        self.activating = False
        self.guard_sample: Optional[str] = "abdomen_ct"
        self._cancel: Optional[threading.Event] = None
        self._reembedding = False
        self._status = ""
        self._counts: Optional[dict] = None
        self._round_call = None
        self.distil: Optional[DistillAction] = None   # built below; it asks busy_reason() while it is built

        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SetMinimumSize)  # word-wrapped labels must not squeeze the form rows
        layout.setContentsMargins(0, 0, 0, 0)
        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        self.model_label.setStyleSheet("font-weight: bold;")
        layout.addWidget(self.model_label)

        self.project_edit = QLineEdit()
        self.project_edit.setToolTip("project folder: adapter versions, their history and the planes kept for replay")
        self.project_edit.editingFinished.connect(lambda: self.set_project(self.project_edit.text()))
        self.project_button = QPushButton("…")
        self.project_button.setMaximumWidth(32)
        self.project_button.clicked.connect(self._choose_project)
        form = QFormLayout()
        form.addRow("project", row(self.project_edit, self.project_button))
        self.pairs_edit = QLineEdit()
        self.pairs_edit.setPlaceholderText("optional: folder of image/label pairs")
        self.pairs_edit.setToolTip("images/ + masks/ with matching names, or NAME.png beside NAME_mask.png")
        self.pairs_edit.editingFinished.connect(self.refresh)
        self.pairs_button = QPushButton("…")
        self.pairs_button.setMaximumWidth(32)
        self.pairs_button.clicked.connect(self._choose_pairs)
        form.addRow("also", row(self.pairs_edit, self.pairs_button))
        self.mode_combo = QComboBox()
        for mode in MODES_SHOWN:
            self.mode_combo.addItem(mode, mode)
        self.mode_combo.setToolTip("decoder: fast, the image encoder stays as it is · encoder-lora: LoRA on the encoder "
                                   "too, for images unlike the model's (another contrast or modality)")
        self.mode_combo.currentIndexChanged.connect(self._on_mode)
        form.addRow("mode", self.mode_combo)
        self.rank_spin = QSpinBox()
        self.rank_spin.setRange(1, 64)
        self.rank_spin.setValue(DEFAULT_RANK)
        self.rank_spin.setToolTip("LoRA rank (encoder-lora mode)")
        form.addRow("rank", self.rank_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(5, 5000)
        self.steps_spin.setSingleStep(10)
        self.steps_spin.setValue(DEFAULT_STEPS)
        self.steps_spin.setToolTip("training steps of one round")
        form.addRow("steps", self.steps_spin)
        layout.addLayout(form)

        self.counts_label = QLabel("")
        self.counts_label.setWordWrap(True)
        layout.addWidget(self.counts_label)
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("train a new adapter version on the committed objects (on a copy of the model)")
        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        layout.addLayout(row(self.start_button, self.cancel_button))
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%v / %m steps")
        layout.addWidget(self.progress_bar)
        self.plot = LossPlot()
        layout.addWidget(self.plot)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        layout.addWidget(self.result_label)
        self.use_new_check = QCheckBox("use the new adapter")
        self.use_new_check.setEnabled(False)
        self.use_new_check.toggled.connect(self._on_use_new)
        layout.addWidget(self.use_new_check)

        self.versions_combo = QComboBox()
        self.versions_combo.setToolTip("adapter versions of this project for the model in use")
        self.versions_combo.currentIndexChanged.connect(self._show_comparison)
        self.activate_button = QPushButton("Activate")
        self.activate_button.setToolTip("use the selected version (or the base model): compare, or roll back")
        self.activate_button.clicked.connect(lambda: self.activate(self.versions_combo.currentData()))
        layout.addLayout(row(self.versions_combo, self.activate_button))
        self.compare_label = QLabel("")
        self.compare_label.setWordWrap(True)
        self.compare_label.setStyleSheet("color: gray;")
        layout.addWidget(self.compare_label)
        self.distil = DistillAction(self)   # never at the same time as a round (each checks the other)
        layout.addWidget(self.distil)

        self.progressed.connect(self._on_progress)
        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(250)
        self._count_timer.timeout.connect(self.refresh)
        annotator.objects_changed.connect(self._count_timer.start)
        self.auto = AutoAdapt(self)
        layout.insertLayout(layout.indexOf(self.counts_label) + 1, self.auto.layout())
        annotator.model_changed.connect(self._on_model_changed)
        annotator.state_changed.connect(self._update_controls)
        annotator.engine.progress.connect(self._on_embed_progress)
        # The slot must not be a method of this panel: Qt deletes child widgets before the parent's
        # ``destroyed`` is emitted, and calling into a deleted panel at exit can abort the process.
        self._round_events: list[threading.Event] = []
        annotator.destroyed.connect(partial(set_all, self._round_events))
        # The project opens with the first model (opening it imports the training code, and torch).
        self._pending_project: Optional[str] = str(project if project is not None else default_project_folder())
        self.project_edit.setText(self._pending_project)
        self.refresh()

    def shutdown(self) -> None:
        """The annotator is closing: cancel a running round (nothing is saved) and drop its result."""
        self._count_timer.stop()
        self.distil.shutdown()
        set_all(self._round_events)
        if self._round_call is not None:
            self._round_call.cancel()
            self._round_call = None
        self.running = False

    # ================================================================== project and versions

    def set_project(self, folder) -> bool:
        """Use ``folder`` as the project (created on the first save). False, with a notification, if unusable."""
        from napari_vfmseg.training.adapter_store import AdapterStore, AdapterStoreError

        self._pending_project = None
        text = str(folder).strip()
        if not text:
            return False
        try:
            store = AdapterStore(text)
            store.versions()
        except (AdapterStoreError, OSError) as exc:
            _notify("error", f"cannot use the project folder: {exc}")
            self.project_edit.setText(str(self.store.folder) if self.store is not None else "")
            return False
        self.store = store
        self.project_edit.setText(str(store.folder))
        self.refresh()
        return True

    def _choose_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Fine-tuning project folder", self.project_edit.text())
        if folder:
            self.set_project(folder)

    def _choose_pairs(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of image/label pairs", self.pairs_edit.text())
        if folder:
            self.pairs_edit.setText(folder)
            self.refresh()

    # ================================================================== counts and controls

    def sources(self, copy: bool = True) -> list[AnnotatedSource]:
        """The open annotated volumes (see :func:`~napari_vfmseg.widgets.finetune_sources.annotated_sources`)."""
        return annotated_sources(self.annotator, copy)

    def counts(self) -> dict:
        """``planes`` and ``objects`` (committed, per plane) and ``volumes`` available for training."""
        from napari_vfmseg.training.rounds import count_annotated

        return count_annotated([(source.labels, source.axis) for source in self.sources(copy=False)])

    def refresh(self) -> None:
        """Recount the annotated planes, reload the version list, update the labels and buttons."""
        if self.store is None and self._pending_project and self._model() is not None:
            self.set_project(self._pending_project)
            return
        counts = self.counts()
        text = (f"{counts['objects']} objects on {counts['planes']} planes in {counts['volumes']} open volume"
                f"{'s' if counts['volumes'] != 1 else ''}")
        if self.pairs_edit.text().strip():
            text += " + the folder's pairs"
        if self.store is not None:
            stored = self._versions()
            text += f" · project: {len(stored)} version{'s' if len(stored) != 1 else ''} for this model"
        self.counts_label.setText(text)
        self._counts = counts
        self.model_label.setText(self.model_text())
        self._refresh_versions()
        self._update_controls()

    def busy_reason(self) -> Optional[str]:
        """Why no training of any kind (round or distillation) can start now, or None."""
        if self.running:
            return "a fine-tuning round is under way"
        if self.distil is not None and self.distil.running:
            return "a distillation is under way"
        if self.activating:
            return "an adapter is being switched"
        if self._model() is None:
            return "load a model first"
        if self.store is None:
            return "choose a project folder (…)"
        return None

    def unavailable_reason(self) -> Optional[str]:
        """Why Start cannot run now, or None when it can."""
        reason = self.busy_reason()
        if reason is not None:
            return reason
        counts = self._counts if self._counts is not None else self.counts()
        if counts["planes"] < 2 and not self.pairs_edit.text().strip():
            return "commit objects on a few planes first (at least 2; 10–20 spread over the volume work well)"
        return None

    def _update_controls(self) -> None:
        reason = self.unavailable_reason()
        self.start_button.setEnabled(reason is None)
        self.start_button.setToolTip(reason or "train a new adapter version on the committed objects (on a copy of the model)")
        self.cancel_button.setEnabled(self.running)
        idle = not self.running and not self.activating and not self.distil.running
        for widget in (self.mode_combo, self.steps_spin, self.project_edit, self.project_button,
                       self.pairs_edit, self.pairs_button):
            widget.setEnabled(idle)
        self.rank_spin.setEnabled(idle and self.mode_combo.currentData() == "encoder-lora")
        has_model = self._model() is not None
        # No switching while a round runs: the round copies the model (and its adapter) as it starts.
        self.activate_button.setEnabled(has_model and idle and self.store is not None)
        version = getattr(self.last_result, "version", None)
        usable = (version is not None and has_model and version.base_fingerprint == self._model().fingerprint)
        self.use_new_check.setEnabled(usable and idle)
        if not self.running and not self._reembedding:
            self.status_label.setText(self._status if reason is None or self._status else reason)
        self.distil.update_controls()

    def _on_mode(self, *_args) -> None:
        self._update_controls()

    def _on_model_changed(self, segmenter) -> None:
        self.refresh()

    # ================================================================== a round

    def round_config(self):
        """The RoundConfig chosen in the controls."""
        from napari_vfmseg.training.rounds import RoundConfig

        return RoundConfig(mode=self.mode_combo.currentData(), rank=int(self.rank_spin.value()),
                           steps=int(self.steps_spin.value()))

    def start(self, config=None) -> bool:
        """Start a round (``config``: default the controls') in the background. False, with a notification, when it cannot."""
        self.refresh()
        reason = self.unavailable_reason()
        if reason is not None:
            _notify("info", f"cannot fine-tune now: {reason}")
            return False
        config = config or self.round_config()
        sources = self.sources()
        folder = self.pairs_edit.text().strip() or None
        model, store, guard_sample = self._model(), self.store, self.guard_sample
        cancel = threading.Event()
        self._cancel = cancel
        self._round_events[:] = [cancel]
        emit = self.progressed.emit

        def job():
            from napari_vfmseg.training import rounds
            from napari_vfmseg.training.data import pairs_from_folder

            groups = [rounds.gather_examples(s.image, s.labels, axis=s.axis or 0, window=s.window,
                                             modality=s.modality, source=s.name, spacing=s.spacing) for s in sources]
            if folder is not None:
                groups.append(pairs_from_folder(folder))
            pairs = []
            for index, group in enumerate(groups):
                for pair in group:
                    pair.plane = index * _GROUP_OFFSET + (pair.plane or 0)
                    pairs.append(pair)
            guard = rounds.guard_examples(guard_sample) if guard_sample else []
            return rounds.run_round(model, pairs, store, config, guard=guard, progress=emit, cancel=cancel)

        self.running = True
        self.last_result = None
        self._status = ""
        self.use_new_check.blockSignals(True)
        self.use_new_check.setChecked(False)
        self.use_new_check.setText("use the new adapter")
        self.use_new_check.blockSignals(False)
        self.result_label.setText("")
        self.plot.reset(config.steps)
        self.progress_bar.setRange(0, 0)
        self.status_label.setText(f"preparing a {config.mode} round on a copy of {model.name} …")
        self._update_controls()
        self._round_call = run_in_background(job, self._on_done, self._on_failed, name="vfmseg-finetune-round")
        return True

    def cancel(self) -> None:
        """Stop the round before its next step; nothing is saved and the adapter in use stays."""
        if self.running and self._cancel is not None:
            self._cancel.set()
            self.status_label.setText("cancelling …")

    def _on_progress(self, progress) -> None:
        if not self.running:
            return
        if progress.phase == "training":
            self.progress_bar.setRange(0, max(1, progress.total))
            self.progress_bar.setValue(min(progress.step, progress.total))
            self.plot.add(progress.step, progress.loss, progress.val_dice)
            dice = f" · held-out Dice {progress.val_dice:.3f}" if progress.val_dice is not None else ""
            self.status_label.setText(f"training: step {progress.step} of {progress.total} · loss {progress.loss:.3f}"
                                      f"{dice} · {progress.elapsed_s:.0f} s")
        else:
            self.status_label.setText(f"{progress.phase} … ({progress.elapsed_s:.0f} s)")

    def _on_done(self, result) -> None:
        self.running = False
        self._cancel = None
        self.last_result = result
        steps = result.config.steps
        self.progress_bar.setRange(0, steps)
        self.progress_bar.setValue(min(result.train.steps_done, steps))
        self.result_label.setText(describe_round(result))
        if result.cancelled:
            self._status = "cancelled: nothing was saved; the adapter in use is unchanged"
            _notify("info", f"fine-tuning {self._status}")
        elif result.version is None:
            self._status = "; ".join(result.notes) or "nothing was saved"
            _notify("warning", f"fine-tuning finished: {self._status}")
        else:
            self._status = f"saved {result.version.name} in {self.store.folder if self.store else 'the project'}"
            self.use_new_check.setText(f"use {result.version.name}")
            for note in result.notes:
                _notify("warning", f"{result.version.name}: {note}")
        self.refresh()
        self.round_finished.emit(result)

    def _on_failed(self, error: BaseException) -> None:
        self.running = False
        self._cancel = None
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        message = str(error).strip() or type(error).__name__
        self._status = f"fine-tuning failed: {message}; the adapter in use is unchanged"
        _notify("error", self._status)
        self.refresh()
        self.round_finished.emit(None)


def describe_round(result) -> str:
    """The result text of a finished round: held-out and original-domain Dice before → after."""
    plan = result.plan
    lines = [
        f"{plan.describe()} · {result.train.steps_done} steps (best {result.train.best_step}) in {result.seconds:.0f} s",
        f"held-out planes ({len(plan.held_out)}), 1-click Dice: {dice_pair(result.dice_before, result.dice_after)}",
        f"original domain, 1-click Dice: {dice_pair(result.guard_before, result.guard_after)}",
    ]
    lines += [f"warning: {note}" for note in getattr(result, "notes", [])]
    if result.version is not None:
        lines.insert(0, f"new version {result.version.name} ({result.config.mode})")
    return "\n".join(lines)

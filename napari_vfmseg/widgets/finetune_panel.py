"""The annotator's "Fine-tune" section: adapt the model to the objects committed in the viewer.

The panel counts the planes with committed objects in the open volumes (the annotated image and
every image whose "<name> objects" labels layer is open; optionally also a folder of image/label
pairs), and **Start** runs one round (:func:`napari_vfmseg.training.rounds.run_round`) on a napari
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
"""

from __future__ import annotations

import os
import threading
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from qtpy.QtCore import QPointF, QTimer, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_vfmseg._layer_geometry import GEOMETRY_KEY
from napari_vfmseg.widgets.workers import run_in_background

if TYPE_CHECKING:  # pragma: no cover
    from napari_vfmseg.widgets.annotator import AnnotatorWidget

__all__ = ["FinetunePanel", "LossPlot", "default_project_folder", "MODES_SHOWN", "DEFAULT_STEPS", "DEFAULT_RANK"]

MODES_SHOWN = ("decoder", "encoder-lora")
# Defaults of training.rounds.RoundConfig, repeated so that building the panel does not import torch.
DEFAULT_STEPS = 50
DEFAULT_RANK = 4
_GROUP_OFFSET = 100_000   # plane numbers of different volumes never share a split block


def default_project_folder() -> Path:
    """``$VFMSEG_HOME/finetune`` or ``~/.cache/napari-vfmseg/finetune`` (created on the first save)."""
    home = os.environ.get("VFMSEG_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "napari-vfmseg"
    return base / "finetune"


@dataclass
class _Source:
    """One annotated volume, captured on the UI thread: labels copied, image as shown."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    axis: Optional[int]
    window: object
    modality: Optional[str]


class LossPlot(QWidget):
    """Training loss (grey, scaled to its own range) and validation Dice (orange dots, 0–1) per step."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.total = 1
        self.losses: list[tuple[int, float]] = []
        self.dices: list[tuple[int, float]] = []
        self.setMinimumHeight(90)
        self.setToolTip("grey: training loss (own scale) · orange: validation Dice on held-out planes (0–1)")

    def reset(self, total: int) -> None:
        self.total = max(1, int(total))
        self.losses, self.dices = [], []
        self.update()

    def add(self, step: int, loss: Optional[float], val_dice: Optional[float]) -> None:
        if loss is not None and np.isfinite(loss):
            self.losses.append((int(step), float(loss)))
        if val_dice is not None:
            self.dices.append((int(step), float(val_dice)))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        rect = self.rect().adjusted(4, 14, -4, -4)
        painter.setPen(QPen(QColor(128, 128, 128), 1))
        painter.drawRect(rect)
        painter.drawText(6, 11, "loss")
        painter.setPen(QColor(230, 140, 40))
        painter.drawText(40, 11, "val Dice")

        def x_of(step: int) -> float:
            return rect.left() + rect.width() * step / self.total

        if len(self.losses) > 1:
            values = np.array([v for _, v in self.losses])
            low, high = float(values.min()), float(values.max())
            span = (high - low) or 1.0
            line = QPolygonF([QPointF(x_of(s), rect.bottom() - rect.height() * (v - low) / span) for s, v in self.losses])
            painter.setPen(QPen(QColor(160, 160, 160), 1.2))
            painter.drawPolyline(line)
        if self.dices:
            painter.setPen(QPen(QColor(230, 140, 40), 1.5))
            points = [QPointF(x_of(s), rect.bottom() - rect.height() * min(max(v, 0.0), 1.0)) for s, v in self.dices]
            if len(points) > 1:
                painter.drawPolyline(QPolygonF(points))
            painter.setBrush(QColor(230, 140, 40))
            for point in points:
                painter.drawEllipse(point, 2.5, 2.5)
        painter.end()


class FinetunePanel(QWidget):
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
        form.addRow("project", _row(self.project_edit, self.project_button))
        self.pairs_edit = QLineEdit()
        self.pairs_edit.setPlaceholderText("optional: folder of image/label pairs")
        self.pairs_edit.setToolTip("images/ + masks/ with matching names, or NAME.png beside NAME_mask.png")
        self.pairs_edit.editingFinished.connect(self.refresh)
        self.pairs_button = QPushButton("…")
        self.pairs_button.setMaximumWidth(32)
        self.pairs_button.clicked.connect(self._choose_pairs)
        form.addRow("also", _row(self.pairs_edit, self.pairs_button))
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
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        layout.addLayout(_row(self.start_button, self.cancel_button))
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
        layout.addLayout(_row(self.versions_combo, self.activate_button))
        self.compare_label = QLabel("")
        self.compare_label.setWordWrap(True)
        self.compare_label.setStyleSheet("color: gray;")
        layout.addWidget(self.compare_label)

        self.progressed.connect(self._on_progress)
        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(250)
        self._count_timer.timeout.connect(self.refresh)
        annotator.objects_changed.connect(self._count_timer.start)
        annotator.model_changed.connect(self._on_model_changed)
        annotator.state_changed.connect(self._update_controls)
        annotator.engine.progress.connect(self._on_embed_progress)
        # The slot must not be a method of this panel: Qt deletes child widgets before the parent's
        # ``destroyed`` is emitted, and calling into a deleted panel at exit can abort the process.
        self._round_events: list[threading.Event] = []
        annotator.destroyed.connect(partial(_set_all, self._round_events))
        # The project opens with the first model (opening it imports the training code, and torch).
        self._pending_project: Optional[str] = str(project if project is not None else default_project_folder())
        self.project_edit.setText(self._pending_project)
        self.refresh()

    def shutdown(self) -> None:
        """The annotator is closing: cancel a running round (nothing is saved) and drop its result."""
        self._count_timer.stop()
        _set_all(self._round_events)
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
                f" · held-out {_pair(v.dice_before, v.dice_after)} · original domain {_pair(v.guard_before, v.guard_after)}"
                f" · from {v.parent or 'base'}"
            )
        self.compare_label.setText("\n".join(lines))

    # ================================================================== counts and controls

    def sources(self, copy: bool = True) -> list[_Source]:
        """The open annotated volumes: the annotator's image (its window and axis) and every image
        layer with an "<name> objects" labels layer of its shape. Labels are copied (for a round that
        trains while the user edits) unless ``copy`` is False (counting only)."""
        from napari.layers import Image, Labels

        annotator = self.annotator
        out: list[_Source] = []
        seen = set()
        session = annotator.session
        if session is not None and annotator.image_layer is not None and not annotator.image_layer.rgb:
            layer = annotator.image_layer
            plane = annotator.current_plane()
            axis = None if session.ndim == 2 else (plane.axis if plane is not None else (annotator.engine.axis or 0))
            out.append(_Source(layer.name, np.asarray(layer.data), _labels_array(session.labels, copy), axis,
                               annotator.window_combo.currentData(), _modality(layer)))
            seen.add(layer.unique_id)
        layers = list(annotator.viewer.layers)
        for layer in layers:
            if not isinstance(layer, Image) or layer.unique_id in seen or layer.rgb:
                continue
            target = next((lab for lab in layers if isinstance(lab, Labels) and lab.name == f"{layer.name} objects"
                           and lab.data.shape == layer.data.shape), None)
            if target is None:
                continue
            out.append(_Source(layer.name, np.asarray(layer.data), _labels_array(target.data, copy),
                               0 if layer.data.ndim == 3 else None, None, _modality(layer)))
        return out

    def counts(self) -> dict:
        """``planes`` and ``objects`` (committed, per plane) and ``volumes`` available for training."""
        planes = objects = volumes = 0
        for source in self.sources(copy=False):
            labels = source.labels if source.axis is None else np.moveaxis(source.labels, source.axis, 0)
            stack = labels[None] if labels.ndim == 2 else labels
            flat = stack.reshape(stack.shape[0], -1)
            filled = np.flatnonzero(flat.any(axis=1))
            if filled.size:
                volumes += 1
            planes += int(filled.size)
            objects += sum(int(np.count_nonzero(np.bincount(flat[p].astype(np.int64))[1:] >= 20)) for p in filled)
        return {"planes": planes, "objects": objects, "volumes": volumes}

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

    def unavailable_reason(self) -> Optional[str]:
        """Why Start cannot run now, or None when it can."""
        if self.running:
            return "a round is under way"
        if self.activating:
            return "an adapter is being switched"
        if self._model() is None:
            return "load a model first"
        if self.store is None:
            return "choose a project folder (…)"
        counts = self._counts if self._counts is not None else self.counts()
        if counts["planes"] < 2 and not self.pairs_edit.text().strip():
            return "commit objects on a few planes first (at least 2; 10–20 spread over the volume work well)"
        return None

    def _update_controls(self) -> None:
        reason = self.unavailable_reason()
        self.start_button.setEnabled(reason is None)
        self.start_button.setToolTip(reason or "train a new adapter version on the committed objects (on a copy of the model)")
        self.cancel_button.setEnabled(self.running)
        idle = not self.running and not self.activating
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

    def start(self) -> bool:
        """Start a round in the background (the Start button). False, with a notification, when it cannot."""
        self.refresh()
        reason = self.unavailable_reason()
        if reason is not None:
            _notify("info", f"cannot fine-tune now: {reason}")
            return False
        config = self.round_config()
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
                                             modality=s.modality, source=s.name) for s in sources]
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

    # ================================================================== activation

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
            engine.detach()   # no prediction, prefetch or propagation may start until the switch is done

            def job():
                from napari_vfmseg.training.adapters import (
                    active_adapter,
                    apply_adapter_tensors,
                    current_adapter_tensors,
                    remove_adapter,
                )

                segmenter.close()                         # background embedding finished, joined
                previous = active_adapter(model)
                saved = (current_adapter_tensors(model), previous) if previous is not None else None
                try:
                    store.apply(model, name)
                except BaseException:
                    remove_adapter(model)
                    if saved is not None:
                        apply_adapter_tensors(model, *saved)
                    raise
                encoder_changed = (previous is not None and previous.changes_encoder) or (
                    active_adapter(model) is not None and active_adapter(model).changes_encoder)
                return encoder_changed

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


def _set_all(events: list, *_args) -> None:
    """Set every event in ``events`` (cancels a running round when the annotator goes away)."""
    for event in events:
        event.set()


def describe_round(result) -> str:
    """The result text of a finished round: held-out and original-domain Dice before → after."""
    plan = result.plan
    lines = [
        f"{plan.describe()} · {result.train.steps_done} steps (best {result.train.best_step}) in {result.seconds:.0f} s",
        f"held-out planes ({len(plan.held_out)}), 1-click Dice: {_pair(result.dice_before, result.dice_after)}",
        f"original domain, 1-click Dice: {_pair(result.guard_before, result.guard_after)}",
    ]
    lines += [f"warning: {note}" for note in getattr(result, "notes", [])]
    if result.version is not None:
        lines.insert(0, f"new version {result.version.name} ({result.config.mode})")
    return "\n".join(lines)


def _pair(before: Optional[float], after: Optional[float]) -> str:
    if before is None and after is None:
        return "not measured"
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    return f"{fmt(before)} → {fmt(after)}"


def _labels_array(data, copy: bool) -> np.ndarray:
    """The labels as a numpy array: a copy, or a view where one is possible (counting only)."""
    return np.array(data, copy=True) if copy else np.asarray(data)


def _modality(layer) -> Optional[str]:
    return ((layer.metadata or {}).get(GEOMETRY_KEY) or {}).get("modality")


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


def _notify(level: str, message: str) -> None:
    from napari.utils import notifications

    show = {"error": notifications.show_error, "warning": notifications.show_warning}.get(level, notifications.show_info)
    show(message)

"""The fine-tune panel's "Distil" action: the model in use, with its adapter, into a small, fast student.

:class:`DistillAction` (a section of :class:`~napari_vfmseg.widgets.finetune_panel.FinetunePanel`)
runs :func:`napari_vfmseg.training.distill.distill` on a worker thread. The teacher is a *copy* of
the model in use with its active adapter merged in, so the viewer keeps predicting while it runs.
The transfer set is the annotated volumes open in the viewer (as a fine-tuning round reads them,
each windowed as the engine windows it), their committed objects the labelled planes. The bar
shows the stage and step ("embed 120 / 300"); **Cancel** stops before the next step.

Files, in the project folder: ``students/<teacher>-<adapter>-<size>-<YYYYmmdd-HHMMSS>.safetensors``
(``<adapter>``: the project version in use, the adapter's fingerprint, or ``base``), with its
resume checkpoint ``<same name>.checkpoint.safetensors`` next to it while the run is under way.
A cancelled run writes no student and keeps the checkpoint; the next **Distil** with the same
teacher (model and adapter) and size takes that name again and resumes. A checkpoint the run
cannot resume (other settings or other annotated data) is replaced by a fresh run under the same
name. A finished student is added to the model list (and selected there); **Use student** loads it.
A round and a distillation never run at the same time.
"""

from __future__ import annotations

import re
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QLabel, QLayout, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_vfmseg.widgets.layout import row
from napari_vfmseg.widgets.notify import notify as _notify
from napari_vfmseg.widgets.workers import run_in_background, set_all

if TYPE_CHECKING:  # pragma: no cover
    from napari_vfmseg.widgets.finetune_panel import FinetunePanel
    from napari_vfmseg.widgets.finetune_sources import AnnotatedSource

__all__ = ["DistillAction", "SIZES_SHOWN", "DEFAULT_SIZE", "STUDENTS_FOLDER", "output_path", "distill_inputs",
           "teacher_copy", "describe_card"]

# models.student.STUDENT_SIZES, smallest first, repeated so that building the panel imports no torch;
# tests/test_widget_distill.py checks that they agree.
SIZES_SHOWN = ("nano", "tiny", "small", "builtin")
DEFAULT_SIZE = "tiny"
STUDENTS_FOLDER = "students"
_CHECKPOINT = ".checkpoint.safetensors"
_FOREIGN_CHECKPOINT = "checkpoint of another distillation"   # training.distill.loop's refusal to resume


class DistillAction(QWidget):
    """The "Distil" controls of ``panel`` (see the module docstring).

    Public state: ``running``, ``student_path`` (the latest student written, None before),
    ``config`` (a DistillConfig overriding the defaults, its student size taken from the list; for
    tests and scripts), ``timing_repeats`` (encoder timings in the card). Signals:
    ``progressed(DistillProgress)`` (emitted from the worker, handled on the UI thread) and
    ``finished(DistillResult or None)`` (None: failed).
    """

    progressed = Signal(object)
    finished = Signal(object)

    def __init__(self, panel: "FinetunePanel") -> None:
        super().__init__(panel)
        self.panel = panel
        self.running = False
        self.student_path: Optional[Path] = None
        self.config = None
        self.timing_repeats = 10
        self._cancel: Optional[threading.Event] = None
        self._call = None
        self._status = ""
        self._listed_folder: Optional[Path] = None

        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SetMinimumSize)  # the word-wrapped status must not be squeezed
        layout.setContentsMargins(0, 6, 0, 0)
        title = QLabel("Distil a fast student")
        title.setStyleSheet("font-weight: bold;")
        title.setToolTip("train a small model that imitates the model in use (with its adapter) on these scans")
        layout.addWidget(title)
        self.size_combo = QComboBox()
        for size in SIZES_SHOWN:
            self.size_combo.addItem(size, size)
        self.size_combo.setCurrentIndex(SIZES_SHOWN.index(DEFAULT_SIZE))
        self.size_combo.setToolTip("student encoder size: nano is fastest, builtin the size of the built-in model")
        self.distil_button = QPushButton("Distil")
        self.distil_button.clicked.connect(lambda: self.start())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop before the next step: no student is written, the checkpoint is kept")
        self.cancel_button.clicked.connect(self.cancel)
        layout.addLayout(row(self.size_combo, self.distil_button, self.cancel_button))
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.use_button = QPushButton("Use student")
        self.use_button.setToolTip("load the latest student into the viewer (it is in the model list too)")
        self.use_button.clicked.connect(self.use_student)
        layout.addWidget(self.use_button)

        self.progressed.connect(self._on_progress)
        # Not a method of this widget: it may be deleted before the annotator's ``destroyed`` arrives.
        self._events: list[threading.Event] = []
        panel.annotator.destroyed.connect(partial(set_all, self._events))
        self.update_controls()

    def _show_status(self, text: str) -> None:
        """Set the status line; its height follows the wrapped text (a nested layout would squeeze it)."""
        self.status_label.setText(text)
        width = max(self.status_label.width(), self.width(), 200)
        self.status_label.setMinimumHeight(self.status_label.heightForWidth(width) if text else 0)

    def shutdown(self) -> None:
        """The annotator is closing: cancel a running distillation (its checkpoint is kept) and drop its result."""
        set_all(self._events)
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self.running = False

    # ================================================================== controls

    def unavailable_reason(self) -> Optional[str]:
        """Why Distil cannot run now, or None when it can."""
        panel = self.panel
        reason = panel.busy_reason()
        if reason is not None:
            return reason
        if panel.annotator.session is None:
            return "choose an image layer first"
        return None

    def update_controls(self) -> None:
        """Enable the buttons for the current state (the panel calls this whenever it updates its own)."""
        reason = self.unavailable_reason()
        self.distil_button.setEnabled(reason is None)
        self.distil_button.setToolTip(reason or "distil the model in use (with its adapter) into a student, "
                                                "on the annotated volumes open in the viewer")
        self.cancel_button.setEnabled(self.running)
        self.size_combo.setEnabled(not self.running)
        self.use_button.setEnabled(self.student_path is not None and self.student_path.is_file())
        if not self.running:
            self._show_status(self._status or reason or "")
        if self.panel.store is not None and self._listed_folder != self.panel.store.folder:
            self._list_students(self.panel.store.folder)

    def distill_config(self):
        """The DistillConfig of a run: ``config`` (default: DistillConfig()) with the size chosen in the list."""
        from dataclasses import replace

        from napari_vfmseg.training.distill.config import DistillConfig

        return replace(self.config or DistillConfig(), student_size=self.size_combo.currentData())

    def _list_students(self, folder: Path) -> None:
        """Offer the students already in ``folder``/students in the model list (not selected)."""
        self._listed_folder = folder
        for path in sorted((Path(folder) / STUDENTS_FOLDER).glob("*.safetensors")):
            if not path.name.endswith(_CHECKPOINT):
                self.panel.annotator.model_panel.offer_file(str(path), f"student: {path.stem}", select=False)

    # ================================================================== a run

    def start(self) -> bool:
        """Start a distillation in the background. False, with a notification, when it cannot."""
        panel = self.panel
        panel.refresh()
        reason = self.unavailable_reason()
        sources = panel.sources() if reason is None else []
        if reason is None and not sources:
            reason = "no grey-level image is open in the annotator"
        if reason is not None:
            _notify("info", f"cannot distil now: {reason}")
            return False
        model, config = panel._model(), self.distill_config()
        adapter_tag = _adapter_tag(model, panel.active_version_name())
        out, resume = output_path(Path(panel.store.folder) / STUDENTS_FOLDER, model.name, adapter_tag,
                                  config.student_size)
        cancel = threading.Event()
        self._cancel = cancel
        self._events[:] = [cancel]
        emit, repeats = self.progressed.emit, self.timing_repeats

        def report(progress) -> None:
            if not cancel.is_set():
                try:
                    emit(progress)
                except RuntimeError:   # the widget is gone (viewer closing): nobody is listening
                    cancel.set()

        def job():
            from napari_vfmseg.training.distill import distill

            teacher = teacher_copy(model)
            volumes, labels = distill_inputs(sources)
            out.parent.mkdir(parents=True, exist_ok=True)
            run = partial(distill, teacher, volumes, out, labels=labels, config=config, progress=report,
                          cancel=cancel, timing_repeats=repeats)
            try:
                return run(resume=resume)
            except ValueError as exc:
                if not resume or _FOREIGN_CHECKPOINT not in str(exc):
                    raise
                return run(resume=False)   # that checkpoint belongs to other settings or data: start afresh

        self.running = True
        self._status = ""
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat("")
        what = f"resuming {out.name}" if resume else f"a {config.student_size} student of {model.name}"
        self._show_status(f"preparing {what} …")
        panel._update_controls()
        self._call = run_in_background(job, partial(self._on_done, out), self._on_failed, name="vfmseg-distill")
        return True

    def cancel(self) -> None:
        """Stop before the next step: no student file is written; the checkpoint stays for a later resume."""
        if self.running and self._cancel is not None:
            self._cancel.set()
            self._show_status("cancelling …")

    def use_student(self) -> None:
        """Load the latest student into the viewer (in the background, as the Load model button does)."""
        if self.student_path is None:
            return
        from napari_vfmseg.annotation.model_choice import ModelSource

        model_panel = self.panel.annotator.model_panel
        model_panel.offer_file(str(self.student_path), f"student: {self.student_path.stem}")
        self.panel.annotator.load_model(ModelSource(checkpoint=str(self.student_path),
                                                    device=model_panel.device_combo.currentText()))

    def _on_progress(self, progress) -> None:
        if not self.running:
            return
        self.progress_bar.setRange(0, max(1, progress.total))
        self.progress_bar.setValue(min(progress.step, progress.total))
        self.progress_bar.setFormat(f"{progress.stage} %v / %m")
        loss = f" · loss {progress.loss:.4f}" if progress.loss is not None else ""
        what = "teacher pass" if progress.stage == "teacher" else f"{progress.stage} stage"
        self._show_status(f"{what}: {progress.step} of {progress.total}{loss} · {progress.elapsed_s:.0f} s")

    def _finish(self) -> None:
        self.running = False
        self._cancel = None
        self._call = None
        self._events.clear()
        self.panel._update_controls()

    def _on_done(self, out: Path, result) -> None:
        if result.cancelled:
            kept = result.checkpoint is not None and Path(result.checkpoint).is_file()
            self._status = ("cancelled: no student was written; " + (
                f"the checkpoint {Path(result.checkpoint).name} is kept: Distil again (same model, adapter and "
                f"size) to resume" if kept else "nothing to resume (stopped during the teacher pass)"))
            _notify("info", f"distillation {self._status}")
        else:
            self.student_path = out
            self.panel.annotator.model_panel.offer_file(str(out), f"student: {out.stem}")
            self._status = f"saved {out.name} · {describe_card(result.card, result.seconds)}"
            _notify("info", f"student {out.name} is ready: {describe_card(result.card, result.seconds)}. "
                            "It is selected in the model list: press Load model (or Use student) to switch to it.")
        self._finish()
        self.finished.emit(result)

    def _on_failed(self, error: BaseException) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        self._status = f"distillation failed: {str(error).strip() or type(error).__name__}"
        _notify("error", self._status)
        self._finish()
        self.finished.emit(None)


def _slug(text: str) -> str:
    """``text`` (a model name, maybe a file name) as a piece of a file name without "-"."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", Path(str(text)).stem).strip("_") or "model"


def _adapter_tag(model, version: Optional[str]) -> str:
    """The project version on ``model``, else its adapter's fingerprint (8 hex digits), else "base"."""
    from napari_vfmseg.training.adapters import active_adapter

    info = active_adapter(model)
    return "base" if info is None else (version or str(info.fingerprint or "adapter")[:8])


def output_path(folder: Path, teacher: str, adapter: str, size: str) -> tuple[Path, bool]:
    """(student file, resume): the newest unfinished run of this teacher, adapter and size in
    ``folder`` (its checkpoint there, no student file), else a new time-stamped name."""
    prefix = f"{_slug(teacher)}-{_slug(adapter)}-{size}-"
    pending = [path for path in sorted(Path(folder).glob(f"{prefix}*{_CHECKPOINT}"))
               if not path.with_name(path.name[: -len(_CHECKPOINT)] + ".safetensors").exists()]
    if pending:
        return pending[-1].with_name(pending[-1].name[: -len(_CHECKPOINT)] + ".safetensors"), True
    return Path(folder) / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}.safetensors", False


def teacher_copy(model):
    """A copy of the ``LoadedModel`` in use with its active adapter merged in (``model`` is untouched)."""
    from napari_vfmseg.training.adapters import active_adapter, apply_adapter_tensors, current_adapter_tensors
    from napari_vfmseg.training.rounds import copy_model

    teacher = copy_model(model)
    info = active_adapter(teacher)
    if info is not None:
        apply_adapter_tensors(teacher, current_adapter_tensors(teacher), info, merge=True, source="the adapter in use")
    return teacher


def distill_inputs(sources: list["AnnotatedSource"]) -> tuple[list, list]:
    """(volumes, labels) for :func:`~napari_vfmseg.training.distill.distill` from the open annotated volumes.

    Each volume is windowed as the engine windows it (its window choice, on the whole volume) to uint8
    and turned so that its annotation axis comes first (the labelled planes are taken along axis 0);
    ``labels`` pairs each volume that holds committed objects with its label map.
    """
    from napari_vfmseg.io import Volume
    from napari_vfmseg.io.windowing import apply_window, model_window

    volumes, labels = [], []
    for source in sources:
        image = np.asarray(source.image)
        window = model_window(source.window, image, source.modality)
        grey = image if window is None else apply_window(image, window)
        maps = np.asarray(source.labels)
        spacing = tuple(source.spacing or ())
        if len(spacing) != grey.ndim or not all(np.isfinite(v) and v > 0 for v in spacing):
            spacing = (1.0,) * grey.ndim
        axis = source.axis or 0
        if grey.ndim == 3 and axis:
            grey, maps = np.moveaxis(grey, axis, 0), np.moveaxis(maps, axis, 0)
            spacing = (spacing[axis], *(v for i, v in enumerate(spacing) if i != axis))
        volume = Volume(np.ascontiguousarray(grey), spacing, (0.0,) * grey.ndim, path=source.name,
                        modality=source.modality)
        volumes.append(volume)
        if maps.any():
            labels.append((volume, np.ascontiguousarray(maps)))
    return volumes, labels


def describe_card(card: dict, seconds: float) -> str:
    """The figures of a student card: encoder time against the teacher's, agreement, wall time."""
    figures = card.get("figures") or {}
    parts = []
    student_ms, teacher_ms = figures.get("student_encoder_ms"), figures.get("teacher_encoder_ms")
    if student_ms is not None and teacher_ms is not None:
        speedup = figures.get("encoder_speedup")
        parts.append(f"encoder {student_ms:.1f} ms vs the teacher's {teacher_ms:.1f} ms per plane"
                     + (f" ({speedup:.1f} x faster)" if speedup else ""))
    if figures.get("box_agreement_dice") is not None:
        parts.append(f"agreement with the teacher (box Dice) {figures['box_agreement_dice']:.3f}")
    parts.append(f"{seconds:.0f} s")
    return " · ".join(parts)

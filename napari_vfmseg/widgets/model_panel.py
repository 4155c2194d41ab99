"""The annotator's model controls: registry model or checkpoint file, adapter, device, cache, status."""

from __future__ import annotations

from typing import Optional

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QWidget,
)

from napari_vfmseg.annotation.model_choice import ModelSource, default_model_name

__all__ = ["ModelPanel", "FILE_CHOICE"]

FILE_CHOICE = "checkpoint file…"


class ModelPanel(QGroupBox):
    """Choose a model and see its state. ``load_requested(ModelSource)`` when the user presses Load."""

    load_requested = Signal(object)
    zoom_changed = Signal(bool)   # the user ticked or cleared "zoom in on small boxes"

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__("Model", parent)
        self._files: set[str] = set()   # model files offered in the list (distilled students)
        form = QFormLayout(self)
        self.model_combo = QComboBox()
        self._fill_choices()
        self.model_combo.currentIndexChanged.connect(self._on_choice)
        form.addRow("model", self.model_combo)
        self.checkpoint_edit, self._checkpoint_row = self._path_row("checkpoint (.pth, .pt, .safetensors)", "Checkpoints (*.pth *.pt *.safetensors)")
        self.checkpoint_label = QLabel("checkpoint")
        form.addRow(self.checkpoint_label, self._checkpoint_row)
        self.adapter_edit, adapter_row = self._path_row("optional fine-tuned adapter (.safetensors)", "Adapters (*.safetensors)")
        form.addRow("adapter", adapter_row)
        self.device_combo = QComboBox()
        for device in _device_choices():
            self.device_combo.addItem(device)
        form.addRow("device", self.device_combo)
        self.disk_cache_check = QCheckBox("disk cache")
        self.disk_cache_check.setChecked(True)
        self.disk_cache_check.setToolTip("keep embeddings on disk and reuse them in later sessions (content-keyed, in the napari-vfmseg home folder)")
        form.addRow("embeddings", self.disk_cache_check)
        self.zoom_check = QCheckBox("zoom in on small boxes")
        self.zoom_check.setToolTip(
            "segment a small box on a crop around it, at the model's full resolution: small structures "
            "(lesions, nodules) come out much better. One more encoder pass per box: on by default for "
            "fast models (the built-in one, distilled students), off for SAM ViTs on a CPU")
        self.zoom_check.clicked.connect(self.zoom_changed.emit)   # clicks only, not show_zoom
        form.addRow("small objects", self.zoom_check)
        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(lambda: self.load_requested.emit(self.source()))
        form.addRow(self.load_button)
        self.model_label = QLabel("no model loaded")
        self.model_label.setWordWrap(True)
        form.addRow(self.model_label)
        self.progress = QProgressBar()
        self.progress.setFormat("embeddings %v/%m")
        self.show_progress(0, 1)
        form.addRow(self.progress)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        form.addRow(self.status_label)
        self._on_choice()

    def _fill_choices(self) -> None:
        from napari_vfmseg.models import list_models

        for record in list_models():
            size = record.get("size_bytes")
            note = "" if record["present"] else (f" (download {size / 1e6:.0f} MB)" if size else " (download)")
            self.model_combo.addItem(f"{record['name']}{note}", record["name"])
            self.model_combo.setItemData(self.model_combo.count() - 1, record["description"], Qt.ToolTipRole)
        self.model_combo.addItem(FILE_CHOICE, None)
        default = default_model_name()
        index = self.model_combo.findData(default) if default is not None else self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)

    def offer_file(self, path: str, label: str, select: bool = True) -> int:
        """List the model file ``path`` (e.g. a distilled student) as ``label``, before the checkpoint
        choice, and select it when ``select``: Load model then loads it. Returns its index."""
        path = str(path)
        index = self.model_combo.findData(path) if path in self._files else -1
        if index < 0:
            index = self.model_combo.findText(FILE_CHOICE)
            self.model_combo.insertItem(index, label, path)
            self.model_combo.setItemData(index, path, Qt.ToolTipRole)
            self._files.add(path)
        if select:
            self.model_combo.setCurrentIndex(index)
        return index

    def _path_row(self, placeholder: str, file_filter: str) -> tuple[QLineEdit, QWidget]:
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        browse = QPushButton("…")
        browse.setMaximumWidth(32)

        def choose() -> None:
            path, _ = QFileDialog.getOpenFileName(self, placeholder, "", file_filter)
            if path:
                edit.setText(path)

        browse.clicked.connect(choose)
        holder = QWidget()
        row = QHBoxLayout(holder)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit)
        row.addWidget(browse)
        return edit, holder

    def _on_choice(self, index: int = 0) -> None:
        is_file = self.model_combo.currentData() is None
        self.checkpoint_label.setVisible(is_file)
        self._checkpoint_row.setVisible(is_file)

    def source(self) -> ModelSource:
        """The model these controls describe."""
        name = self.model_combo.currentData()
        checkpoint = self.checkpoint_edit.text().strip() or None
        adapter = self.adapter_edit.text().strip() or None
        if name in self._files:   # an offered file: loaded as a checkpoint path
            name, checkpoint = None, name
        return ModelSource(name=name, checkpoint=None if name else checkpoint, adapter=adapter, device=self.device_combo.currentText())

    def cache_dir(self):
        """Folder of the disk embedding cache, or None when it is switched off."""
        from napari_vfmseg.models.paths import vfmseg_home

        return vfmseg_home() if self.disk_cache_check.isChecked() else None

    def show_loading(self, what: str) -> None:
        self.model_label.setText(f"loading {what} …")
        self.load_button.setEnabled(False)
        self.show_progress(0, 0)

    def show_model(self, text: str) -> None:
        self.model_label.setText(text)
        self.load_button.setEnabled(True)

    def show_progress(self, done: int, total: int) -> None:
        """``total`` 0: busy without a count."""
        self.progress.setRange(0, max(0, total))
        self.progress.setValue(min(done, total) if total else 0)

    def show_zoom(self, on: bool) -> None:
        """Show whether the engine zooms in on small boxes (the loaded model's default, or the user's choice)."""
        self.zoom_check.setChecked(bool(on))

    def show_status(self, text: str) -> None:
        self.status_label.setText(text)


def _device_choices() -> list[str]:
    import torch

    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices.append("cuda")
    backend = getattr(torch.backends, "mps", None)
    if backend is not None and backend.is_available():
        choices.append("mps")
    return choices

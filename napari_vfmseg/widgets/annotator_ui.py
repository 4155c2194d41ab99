"""The controls of the "Segment (VFM)" dock widget, built onto it: image, model, prompts, objects,
the extension sections (3D propagation, fine-tuning) and the shortcut help.

:func:`build_ui` only creates widgets and connects them to the annotator's methods; it holds no
state of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_vfmseg.io.windowing import WINDOW_CHOICES  # (label, value); "auto" = None
from napari_vfmseg.widgets.finetune_panel import FinetunePanel
from napari_vfmseg.widgets.layout import button, row
from napari_vfmseg.widgets.model_panel import ModelPanel
from napari_vfmseg.widgets.objects_panel import ObjectsPanel
from napari_vfmseg.widgets.propagate_panel import PropagatePanel

if TYPE_CHECKING:  # pragma: no cover
    from napari_vfmseg.widgets.annotator import AnnotatorWidget

__all__ = ["build_ui", "WINDOW_CHOICES", "SHORTCUTS"]

SHORTCUTS = (
    "click: object point · Shift+click or T: background point · Box: drag a rectangle · "
    "M: next mask of a single click or a box · "
    "Enter: commit · Esc: clear prompts · Ctrl+Z / Ctrl+Shift+Z: undo / redo commits "
    "(shortcuts work while a prompt or the preview layer is selected; on the objects layer Ctrl+Z "
    "is napari's brush undo)"
)


def build_ui(widget: "AnnotatorWidget") -> None:
    """Create the annotator's controls as attributes of ``widget`` and connect them to its methods."""
    outer = QVBoxLayout(widget)
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
    widget.image_combo = QComboBox()
    widget.image_combo.currentIndexChanged.connect(widget._on_image_choice)
    form.addRow("image", widget.image_combo)
    widget.window_combo = QComboBox()
    for label, value in WINDOW_CHOICES:
        widget.window_combo.addItem(label, value)
    widget.window_combo.setToolTip("intensity window the model sees (the image is shown with it too)")
    widget.window_combo.currentIndexChanged.connect(widget._on_window_choice)
    form.addRow("window", widget.window_combo)
    widget.target_combo = QComboBox()
    widget.target_combo.setToolTip("labels layer the committed objects are written into")
    widget.target_combo.currentIndexChanged.connect(widget._on_target_choice)
    form.addRow("objects into", widget.target_combo)
    layout.addWidget(image_box)

    widget.model_panel = ModelPanel()
    widget.model_panel.load_requested.connect(widget.load_model)
    widget.model_panel.zoom_changed.connect(widget.set_zoom)
    layout.addWidget(widget.model_panel)

    prompt_box = QGroupBox("Prompts")
    column = QVBoxLayout(prompt_box)
    widget.points_mode_button = QPushButton("Points")
    widget.box_mode_button = QPushButton("Box")
    widget._mode_group = QButtonGroup(widget)
    for mode_button, action in ((widget.points_mode_button, widget.activate_points), (widget.box_mode_button, widget.activate_box)):
        mode_button.setCheckable(True)
        mode_button.clicked.connect(action)
        widget._mode_group.addButton(mode_button)
    column.addLayout(row(widget.points_mode_button, widget.box_mode_button))
    widget.positive_radio = QRadioButton("object (+)")
    widget.negative_radio = QRadioButton("background (−)")
    widget.positive_radio.setChecked(True)
    widget.positive_radio.toggled.connect(lambda _: widget.prompts and widget.prompts.set_positive(widget.positive_radio.isChecked()))
    column.addLayout(row(widget.positive_radio, widget.negative_radio))
    widget.clear_button = button("Clear (Esc)", widget.clear_prompts)
    widget.commit_button = button("Commit (Enter)", lambda: widget.commit())
    column.addLayout(row(widget.clear_button, widget.commit_button))
    widget.next_mask_button = button("Next mask (M)", widget.next_mask)
    widget.next_mask_button.setToolTip("a single click or a box alone is ambiguous (a part, the whole, or a ring or all it encloses): "
                                     "show the model's next reading of it")
    widget.undo_button = button("Undo", widget.undo)
    widget.redo_button = button("Redo", widget.redo)
    column.addLayout(row(widget.next_mask_button, widget.undo_button, widget.redo_button))
    widget.preview_label = QLabel("")
    widget.preview_label.setWordWrap(True)
    column.addWidget(widget.preview_label)
    layout.addWidget(prompt_box)

    objects_box = QGroupBox("Objects")
    column = QVBoxLayout(objects_box)
    widget.objects_panel = ObjectsPanel()
    widget.objects_panel.renamed.connect(widget.rename_object)
    widget.objects_panel.visibility_changed.connect(widget.set_object_visible)
    widget.objects_panel.selected.connect(widget.select_object)
    column.addWidget(widget.objects_panel)
    widget.delete_button = button("Delete", widget._delete_selected)
    widget.export_button = button("Export…", widget._export_dialog)
    column.addLayout(row(widget.delete_button, widget.export_button))
    layout.addWidget(objects_box)

    widget.extensions = QVBoxLayout()
    layout.addLayout(widget.extensions)
    widget.propagate_panel = PropagatePanel(widget)
    widget.add_section("3D propagation", widget.propagate_panel)
    widget.finetune_panel = FinetunePanel(widget)
    widget.add_section("Fine-tune", widget.finetune_panel)
    help_label = QLabel(SHORTCUTS)
    help_label.setWordWrap(True)
    help_label.setStyleSheet("color: gray;")
    layout.addWidget(help_label)
    layout.addStretch(1)
    body.setMinimumWidth(380)
    widget._update_buttons()

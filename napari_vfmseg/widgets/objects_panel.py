"""The object list of the annotator: colour, id, editable name, voxels, mL (or mm²), visibility."""

from __future__ import annotations

from typing import Optional

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_vfmseg.annotation.objects import ObjectTable

__all__ = ["ObjectsPanel"]

_COLUMNS = ("", "id", "name", "voxels", "mL", "show")
_COLOUR, _ID, _NAME, _VOXELS, _SIZE, _SHOW = range(len(_COLUMNS))


class ObjectsPanel(QTableWidget):
    """Shows an :class:`ObjectTable`; edits go out as signals, the widget applies them to the session."""

    renamed = Signal(int, str)
    visibility_changed = Signal(int, bool)
    selected = Signal(int)

    def __init__(self, parent=None) -> None:
        super().__init__(0, len(_COLUMNS), parent)
        self.setHorizontalHeaderLabels(_COLUMNS)
        self.verticalHeader().setVisible(False)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(_NAME, QHeaderView.Stretch)
        self.setMinimumHeight(110)
        self._filling = False
        self.itemChanged.connect(self._on_item_changed)
        self.itemSelectionChanged.connect(self._on_selection)

    def show_table(self, table: Optional[ObjectTable]) -> None:
        """Refill the rows from ``table`` (keeping the selected object selected)."""
        keep = self.selected_id()
        self._filling = True
        try:
            records = table.records() if table is not None else []
            size_header = "mL" if table is None or table.ndim == 3 else "mm²"
            self.setHorizontalHeaderItem(_SIZE, QTableWidgetItem(size_header))
            self.setRowCount(len(records))
            for row, record in enumerate(records):
                swatch = QTableWidgetItem("")
                swatch.setData(Qt.DecorationRole, QColor(record.colour))   # a swatch that selection does not hide
                swatch.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
                self.setItem(row, _COLOUR, swatch)
                self.setItem(row, _ID, _readonly(str(record.id), record.id))
                name = QTableWidgetItem(record.name)
                name.setData(Qt.UserRole, record.id)
                name.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable | Qt.ItemIsEditable)
                self.setItem(row, _NAME, name)
                self.setItem(row, _VOXELS, _readonly(f"{record.voxels:,}", record.id))
                size = table.ml(record) if table.ndim == 3 else table.area_mm2(record)
                self.setItem(row, _SIZE, _readonly(f"{size:.2f}", record.id))
                show = QTableWidgetItem("")
                show.setData(Qt.UserRole, record.id)
                show.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable | Qt.ItemIsUserCheckable)
                show.setCheckState(Qt.Checked if record.visible else Qt.Unchecked)
                self.setItem(row, _SHOW, show)
                if record.id == keep:
                    self.selectRow(row)
        finally:
            self._filling = False

    def selected_id(self) -> Optional[int]:
        rows = self.selectionModel().selectedRows() if self.selectionModel() else []
        if not rows:
            return None
        item = self.item(rows[0].row(), _ID)
        return None if item is None else int(item.data(Qt.UserRole))

    def select_id(self, label_id: int) -> None:
        for row in range(self.rowCount()):
            item = self.item(row, _ID)
            if item is not None and int(item.data(Qt.UserRole)) == label_id:
                self.selectRow(row)
                return

    def row_values(self, row: int) -> dict:
        """The texts shown in ``row`` (for tests and accessibility tools)."""
        return {
            "id": int(self.item(row, _ID).text()),
            "name": self.item(row, _NAME).text(),
            "voxels": self.item(row, _VOXELS).text(),
            "size": self.item(row, _SIZE).text(),
            "visible": self.item(row, _SHOW).checkState() == Qt.Checked,
            "colour": QColor(self.item(row, _COLOUR).data(Qt.DecorationRole)).name(),
        }

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._filling:
            return
        label_id = int(item.data(Qt.UserRole))
        if item.column() == _NAME:
            self.renamed.emit(label_id, item.text())
        elif item.column() == _SHOW:
            self.visibility_changed.emit(label_id, item.checkState() == Qt.Checked)

    def _on_selection(self) -> None:
        if self._filling:
            return
        label_id = self.selected_id()
        if label_id is not None:
            self.selected.emit(label_id)


def _readonly(text: str, label_id: int) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setData(Qt.UserRole, label_id)
    item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
    item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
    return item

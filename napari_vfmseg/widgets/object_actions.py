"""What the user does with committed objects: commit, undo/redo, rename, hide, delete, select,
brush edits on the objects layer, and export.

:class:`ObjectActions` is a part of :class:`~napari_vfmseg.widgets.annotator.AnnotatorWidget`;
the state lives in its :class:`~napari_vfmseg.annotation.session.AnnotationSession`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from napari_vfmseg.annotation.session import ExportResult
from napari_vfmseg.widgets.labels_colormap import direct_colormap

__all__ = ["ObjectActions"]


class ObjectActions:
    """Object handling of the annotator (uses its ``session``, ``labels_layer``, controls)."""

    def commit(self, name: Optional[str] = None):
        """Write the preview into the objects layer under a new id (Enter). Returns the new record or None."""
        if self.session is None:
            return None
        try:
            record = self.session.commit(name)
        except ValueError as exc:
            self._notify("error", str(exc))
            return None
        if record is None:
            self._notify("info", "nothing to commit yet: click the object or drag a box around it first")
            return None
        self.engine.discard_predictions()
        self.prompts.clear()
        self.preview_layer.refresh()
        self.labels_layer.selected_label = record.id
        self.preview_label.setText(f"committed object {record.id} ({record.voxels:,} voxels)")
        self._after_objects_changed(select=record.id)
        return record

    def undo(self) -> None:
        """Undo the latest commit or deletion (Ctrl+Z)."""
        if self.session is not None and self.session.undo() is not None:
            self._after_objects_changed()

    def redo(self) -> None:
        """Redo the latest undone commit or deletion (Ctrl+Shift+Z)."""
        if self.session is not None and self.session.redo() is not None:
            self._after_objects_changed()

    def rename_object(self, label_id: int, name: str) -> None:
        if self.session is None:
            return
        try:
            self.session.table.rename(label_id, name)
        except (KeyError, ValueError) as exc:
            self._notify("warning", str(exc).strip("'\""))
        self._after_objects_changed(refresh_layer=False)

    def set_object_visible(self, label_id: int, visible: bool) -> None:
        if self.session is not None:
            self.session.table.set_visible(label_id, visible)
            self._update_colormap()
            self.objects_changed.emit()

    def delete_object(self, label_id: int) -> None:
        if self.session is not None:
            self.session.delete_object(label_id)
            self._after_objects_changed()

    def _delete_selected(self) -> None:
        label_id = self.objects_panel.selected_id()
        if label_id is None:
            self._notify("info", "select an object in the list to delete it")
        else:
            self.delete_object(label_id)

    def select_object(self, label_id: int) -> None:
        """Make ``label_id`` the label napari's brush paints with, and show a plane that holds it."""
        if self.session is None or self.labels_layer is None:
            return
        self.labels_layer.selected_label = int(label_id)
        plane = self.current_plane()
        if plane is None or plane.axis is None:
            return
        where = np.nonzero(self.session.labels == label_id)[plane.axis]
        if where.size == 0 or np.any(where == plane.index):
            return
        data_point = np.asarray(self.session.shape, dtype=float) / 2.0
        data_point[plane.axis] = int(np.median(where))
        world = np.asarray(self.image_layer.data_to_world(data_point), dtype=float)
        point = list(self.viewer.dims.point)
        offset = len(point) - len(world)
        world_axis = next(a for a in self.viewer.dims.not_displayed if a >= offset)
        point[world_axis] = world[world_axis - offset]
        self.viewer.dims.point = point

    def _on_labels_painted(self, event=None) -> None:
        # napari may announce an edit before writing it (a programmatic paint does): count afterwards
        QTimer.singleShot(0, self._recount_objects)

    def _recount_objects(self) -> None:
        if self.session is not None:
            self.session.labels_edited()
            self._after_objects_changed(refresh_layer=False)

    def _after_objects_changed(self, select: Optional[int] = None, refresh_layer: bool = True) -> None:
        if self.session is None:
            return
        if refresh_layer and self.labels_layer is not None:
            self.labels_layer.refresh()
        self._update_colormap()
        self.objects_panel.show_table(self.session.table)
        if select is not None:
            self.objects_panel.select_id(select)
        self._update_buttons()
        self.objects_changed.emit()

    def _update_colormap(self) -> None:
        if self.session is not None and self.labels_layer is not None:
            colours = {record.id: (record.colour, record.visible) for record in self.session.table.records()}
            self.labels_layer.colormap = direct_colormap(colours)

    def _update_buttons(self) -> None:
        session = self.session
        has_prompts = session is not None and session.has_pending_object
        self.commit_button.setEnabled(has_prompts)
        self.clear_button.setEnabled(has_prompts)
        self.undo_button.setEnabled(session is not None and session.history.can_undo)
        self.redo_button.setEnabled(session is not None and session.history.can_redo)
        plane = self.current_plane() if session is not None else None
        self.next_mask_button.setEnabled(plane is not None and session.next_candidate_request(plane) is not None)
        self.delete_button.setEnabled(session is not None and len(session.table) > 0)
        for button in (self.export_button, self.points_mode_button, self.box_mode_button):
            button.setEnabled(session is not None)
        self.state_changed.emit()

    def export(self, path) -> ExportResult:
        """Write the objects' labels (with the image's geometry) and the object table (CSV, JSON)."""
        if self.session is None:
            raise ValueError("no image is being annotated")
        from napari_vfmseg._layer_geometry import export_labels

        extra = {"image": self.image_layer.name}
        model = adapter = None
        if self.segmenter is not None:
            extra["model"] = model = self.segmenter.model.name
            adapter_info = (self.segmenter.model.info or {}).get("adapter") or {}
            adapter = adapter_info.get("fingerprint")
        names = {record.id: record.name for record in self.session.table.records()}
        metadata, geometry = dict(self.image_layer.metadata or {}), self.session.geometry

        def write(target, labels):  # a DICOM-SEG for a .dcm name (DICOM sources only), else a label file
            return export_labels(target, labels, metadata, geometry, names=names, model=model, adapter=adapter)

        return self.session.export(path, extra, write=write)

    def _export_dialog(self) -> None:
        if self.session is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export labels and object table", f"{self.image_layer.name}_labels.nii.gz",
            "Labels (*.nii.gz *.nii *.nrrd *.mha *.mhd);;DICOM-SEG, for a DICOM series (*.dcm)",
        )
        if not path:
            return
        try:
            result = self.export(path)
        except (OSError, ValueError) as exc:
            self._notify("error", f"export failed: {exc}")
            return
        self._notify("info", f"wrote {result.labels}, {result.csv.name} and {result.json.name}")

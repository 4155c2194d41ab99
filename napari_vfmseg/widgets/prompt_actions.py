"""What the user does with prompts: points, boxes, the preview brush, next mask, clear.

:class:`PromptActions` (a part of :class:`~napari_vfmseg.widgets.annotator.AnnotatorWidget`)
reads the prompt layers into the session (:meth:`PromptActions.sync_prompts`), asks the engine
for the planes whose prompts changed, records brush corrections of the preview, and shows each
new mask. Points and boxes are in the plane's (row, col) order; a box is (row0, col0, row1, col1).
"""

from __future__ import annotations

from typing import Optional

from qtpy.QtCore import QTimer

from napari_vfmseg.annotation.model_choice import NO_MODEL_HELP
from napari_vfmseg.annotation.planes import Plane
from napari_vfmseg.annotation.session import AnnotationSession
from napari_vfmseg.widgets.layer_lifecycle import same_layer
from napari_vfmseg.widgets.viewer_planes import painted_planes

__all__ = ["PromptActions", "IGNORED_CLICK_HINT"]

# Shown under the preview when the model's mask contradicts the click just made (about half of the
# built-in model's first background clicks after a box on the CT phantom): say what works instead.
IGNORED_CLICK_HINT = ("the model did not follow your last click: correct the preview with napari's brush (2) "
                      "or eraser (1) on the preview layer, then commit")


class PromptActions:
    """Prompt handling of the annotator (uses its ``session``, ``prompts``, ``engine``, controls)."""

    def _on_prompt_layers(self, event=None) -> None:
        if self.prompts is None or self.prompts.syncing or self.session is None:
            return
        action = str(getattr(event, "action", "changed")).split(".")[-1].lower()
        if action not in ("added", "removed", "changed"):
            return
        if same_layer(getattr(event, "source", None), self.prompts.points):
            self.prompts.recolour()
        self.sync_prompts()

    def sync_prompts(self) -> list[Plane]:
        """Read the prompt layers into the session; predict the planes whose prompts changed."""
        reading = self.prompts.read(self._prompt_axis)
        for problem in reading.problems:
            self._notify("warning", problem)
        if reading.superseded_boxes:
            stale = list(reading.superseded_boxes)
            QTimer.singleShot(0, lambda: self.prompts is not None and self.prompts.remove_boxes(stale))
        changed = self.session.set_axis_prompts(self._prompt_axis, reading.by_index)
        if changed:
            self.preview_layer.refresh()
        for plane in changed:
            self.engine.request(plane)
            self.preview_changed.emit(plane)
        if changed and self.segmenter is None and not self._warned_no_model:
            self._warned_no_model = True
            self._notify("warning", f"no model is loaded: {NO_MODEL_HELP}")
        self._update_buttons()
        return changed

    def _on_preview_painted(self, event=None) -> None:
        """napari's brush, eraser or fill on the preview: the painted planes keep what they show now."""
        session = self.session
        if session is None:
            return
        planes = painted_planes(getattr(event, "value", None), self._prompt_axis, session.shape) or [self.current_plane()]
        # napari may announce an edit before writing it (a programmatic paint does): record it afterwards
        QTimer.singleShot(0, lambda: self._record_preview_paint(session, [p for p in planes if p is not None]))

    def _record_preview_paint(self, session: AnnotationSession, planes: list[Plane]) -> None:
        if session is not self.session:
            return
        for plane in planes:
            session.preview_painted(plane)
        self.refresh_preview()
        for plane in planes:
            self.preview_changed.emit(plane)

    def refresh_preview(self) -> None:
        """Redraw the preview and update the controls after the session's preview changed outside a
        prompt (a propagation, painting)."""
        if self.preview_layer is not None:
            self.preview_layer.refresh()
        self._update_buttons()

    def _on_predicted(self, plane: Plane, prediction, milliseconds: float) -> None:
        self.preview_layer.refresh()
        shown = self.session.candidate_of(plane) if self.session is not None else None
        which = f" · mask {shown[0]} of {shown[1]} (M: next)" if shown is not None and shown[1] > 1 else ""
        ignored = self.session is not None and self.session.last_click_ignored(plane)
        hint = f"\n{IGNORED_CLICK_HINT}" if ignored else ""
        self.preview_label.setText(f"preview: {plane.describe()} · score {prediction.score:.2f}{which} · {milliseconds:.0f} ms{hint}")
        self.preview_changed.emit(plane)
        self._update_buttons()
        self._update_status()

    def add_point(self, point: tuple[float, float], positive: bool = True, plane: Optional[Plane] = None) -> None:
        """Add a prompt point at (row, col) of ``plane`` (default: the plane on screen), as a click would."""
        self.prompts.add_point(self._require_plane(plane), point, positive)

    def add_box(self, box: tuple[float, float, float, float], plane: Optional[Plane] = None) -> None:
        """Add a box (row0, col0, row1, col1) on ``plane`` (default: the plane on screen), as a drag would."""
        self.prompts.add_box(self._require_plane(plane), box)

    def next_mask(self, plane: Optional[Plane] = None) -> bool:
        """Show the next of the model's masks for the single click or the box alone on ``plane``
        (default: the plane on screen). False, with a note in the status bar, when that plane has no
        such choice."""
        plane = plane or self.current_plane()
        session = self.session
        if plane is None or session is None or session.next_candidate_request(plane) is None:
            self._notify("info", "no other mask to show: only a single click or a box alone (no other prompt) has several")
            return False
        self.engine.request(plane, next_candidate=True)
        return True

    def _require_plane(self, plane: Optional[Plane]) -> Plane:
        plane = plane or self.current_plane()
        if plane is None or self.prompts is None:
            raise ValueError("no plane to place a prompt on: choose an image and a 2D view")
        if plane.axis != self._prompt_axis:
            raise ValueError(f"{plane.describe()} is not along the axis on screen (axis {self._prompt_axis})")
        return plane

    def _shift_click(self, layer, event):
        """Shift+click in the points layer adds a background point."""
        if layer.mode != "add" or "Shift" not in event.modifiers:
            return
        previous = self.prompts.positive
        self.prompts.set_positive(False)
        yield
        while event.type == "mouse_move":
            yield
        # napari adds the point after this release handler has run: restore the polarity after that
        QTimer.singleShot(0, lambda: self.prompts is not None and self.prompts.set_positive(previous))

    def set_positive(self, positive: bool) -> None:
        """New points mark the object (True) or the background (False)."""
        (self.positive_radio if positive else self.negative_radio).setChecked(True)
        if self.prompts is not None:
            self.prompts.set_positive(positive)

    def toggle_polarity(self) -> None:
        self.set_positive(not self.positive_radio.isChecked())

    def activate_points(self) -> None:
        """Make the points layer active, in add mode."""
        if self.prompts is not None:
            self.viewer.layers.selection.active = self.prompts.points
            self.prompts.points.mode = "add"
            self.points_mode_button.setChecked(True)

    def activate_box(self) -> None:
        """Make the box layer active, in rectangle mode."""
        if self.prompts is not None:
            self.viewer.layers.selection.active = self.prompts.boxes
            self.prompts.boxes.mode = "add_rectangle"
            self.box_mode_button.setChecked(True)

    def clear_prompts(self) -> None:
        """Forget all prompts and the preview (Escape)."""
        if self.session is None:
            return
        self.engine.discard_predictions()
        self.session.clear_prompts()
        self.prompts.clear()
        self.preview_layer.refresh()
        self.preview_label.setText("")
        self._update_buttons()

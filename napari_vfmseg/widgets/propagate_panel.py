"""The annotator's "3D propagation" section: carry the preview through the volume, plane by plane.

The planes along the axis on screen where the user made a mask — predicted from prompts, or
painted on the preview — are the key planes. **Propagate** runs
:func:`napari_vfmseg.engine.propagate` from them on the annotator's worker thread
(:meth:`~napari_vfmseg.widgets.engine_link.EngineLink.propagate`), with a progress bar and
**Cancel**; the result becomes the preview of the current object, which **Commit** writes as one
object. Correct any plane (prompts or the brush on the preview) and propagate again: the corrected
planes are kept as key planes. The panel only shows state and forwards clicks; the walk itself is
the engine's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari_vfmseg.widgets.annotator import AnnotatorWidget

__all__ = ["PropagatePanel", "describe_result", "STOP_TEXT"]

# Why a walk direction ended, in the words of the status line (keys: engine.propagate.STOP_REASONS).
STOP_TEXT: dict[str, str] = {
    "low_score": "the model's score fell below the minimum (lower it if the object goes on)",
    "score_drop": "the model's score dropped well below its best on this object",
    "appearance": "the intensities under the mask changed (the object ended, or the mask moved onto another tissue)",
    "vanished": "the object ended",
    "area_jump": "the mask grew too fast (a leak into a neighbour?)",
    "lost": "the mask lost contact with the previous plane",
    "volume_end": "end of the volume",
    "key_plane": "reached a key plane",
    "max_planes": "plane limit reached",
    "cancelled": "cancelled",
}

# Defaults of engine.PropagationConfig, repeated so that building the panel does not import torch.
DEFAULT_MIN_SCORE = 0.5
DEFAULT_LARGEST_COMPONENT = False


def describe_result(result, applied: bool) -> str:
    """The status line for a finished propagation (``result``: a PropagationResult or None)."""
    if result is None:
        return "propagation did not finish: see the notification, or the image, window or model changed"
    predictions = len(result.visits)
    if result.cancelled:
        return f"cancelled after {predictions} predicted planes: the preview is unchanged"
    if not applied:
        return "the preview was cleared or committed while propagating: nothing changed"
    planes = result.planes
    if not planes:
        return "propagation found no object: the key planes are empty"
    keys = ", ".join(str(k) for k in result.key_planes)
    lines = [
        f"object on planes {planes[0]}–{planes[-1]} along axis {result.axis} ({len(planes)} planes) · "
        f"key planes {keys} · {len(result.planes_visited)} planes visited in {result.seconds:.1f} s"
    ]
    for stop in result.stops:
        if stop.reason == "key_plane":
            continue
        arrow = "↓" if stop.direction < 0 else "↑"
        where = f"plane {stop.stopped_at} rejected: " if stop.stopped_at is not None else ""
        lines.append(f"{arrow} from {stop.seed} to {stop.last_plane} · {where}{STOP_TEXT.get(stop.reason, stop.reason)}")
    return "\n".join(lines)


class PropagatePanel(QWidget):
    """Propagate / Cancel, a progress bar, two settings and a status line for ``annotator``.

    Enabled for a 3D image with a model ready and a non-empty mask on some plane along the axis on
    screen. ``last_result``: the latest finished walk's PropagationResult (None before).
    """

    def __init__(self, annotator: "AnnotatorWidget", parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.annotator = annotator
        self.last_result = None
        self._summary = ""   # the latest finished walk, for the status line
        self._session = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip("carry the preview through the volume from the planes you segmented (key planes)")
        self.propagate_button.clicked.connect(self.propagate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.propagate_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%v / %m planes")
        layout.addWidget(self.progress_bar)

        form = QFormLayout()
        self.min_score_spin = QDoubleSpinBox()
        self.min_score_spin.setRange(0.0, 1.0)
        self.min_score_spin.setSingleStep(0.05)
        self.min_score_spin.setDecimals(2)
        self.min_score_spin.setValue(DEFAULT_MIN_SCORE)
        self.min_score_spin.setToolTip("a plane whose predicted IoU is below this ends the walk in that direction")
        form.addRow("min score", self.min_score_spin)
        self.largest_component_check = QCheckBox("keep the largest 3D part")
        self.largest_component_check.setChecked(DEFAULT_LARGEST_COMPONENT)
        self.largest_component_check.setToolTip("drop islands not connected to the main object (key planes are kept as drawn)")
        form.addRow("clean-up", self.largest_component_check)
        self.appearance_check = QCheckBox("stop where the tissue changes")
        self.appearance_check.setToolTip(
            "compare the scan's intensities under each new mask with the object's: stop where they change "
            "(a vertebra's disc, the liver around a lesion) and trim pixels of another tissue. "
            "Set from the model's defaults when a model loads (on for the built-in model)")
        form.addRow("intensities", self.appearance_check)
        self._checks_model = None   # the model whose defaults set the check box
        layout.addLayout(form)

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        engine = annotator.engine
        annotator.state_changed.connect(self.refresh)
        engine.ready.connect(self.refresh)
        engine.propagation_progress.connect(self._on_progress)
        engine.propagated.connect(self._on_propagated)
        self.refresh()

    # ------------------------------------------------------------------ state

    def settings(self) -> dict:
        """The engine's PropagationConfig overrides chosen here."""
        settings = {"min_score": float(self.min_score_spin.value()), "largest_component": self.largest_component_check.isChecked()}
        if not self.appearance_check.isChecked():
            settings.update(min_appearance_similarity=0.0, appearance_trim=None)
        elif not self._model_defaults().uses_appearance:  # the model's preset has no checks: use the tight preset's
            from napari_vfmseg.engine.propagate import preset

            checked = preset("tight")
            settings.update(min_appearance_similarity=checked.min_appearance_similarity,
                            appearance_trim=checked.appearance_trim)
        return settings

    def _model_defaults(self):
        """The propagation preset of the loaded model (engine imported here, once a model exists)."""
        from napari_vfmseg.engine.propagate import PropagationConfig, segmenter_model

        return PropagationConfig.for_model(segmenter_model(self.annotator.segmenter))

    def unavailable_reason(self) -> Optional[str]:
        """Why Propagate cannot run now, or None when it can."""
        annotator = self.annotator
        session = annotator.session
        if session is None:
            return "choose an image layer"
        if session.ndim != 3:
            return "propagation needs a 3D volume"
        if annotator.segmenter is None:
            return "load a model first"
        if not annotator.engine_ready:
            return "preparing the image …"
        plane = annotator.current_plane()
        if plane is None:
            return "switch to a 2D view"
        if annotator.engine.axis != plane.axis:
            return "preparing the image along this axis …"
        if not any(mask.any() for mask in session.key_planes(plane.axis).values()):
            return "segment the object on a plane first (a box or a click), then propagate"
        return None

    def refresh(self) -> None:
        """Enable the controls for the current state; show why Propagate is off."""
        if self.annotator.session is not self._session:   # another image: forget the previous walk
            self._session, self._summary, self.last_result = self.annotator.session, "", None
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
        model = getattr(self.annotator.segmenter, "model", None)
        if self.annotator.segmenter is not None and model is not self._checks_model:   # a model loaded: its defaults
            self._checks_model = model
            self.appearance_check.setChecked(self._model_defaults().uses_appearance)
        running = self.annotator.engine.propagating
        reason = None if running else self.unavailable_reason()
        self.propagate_button.setEnabled(not running and reason is None)
        self.cancel_button.setEnabled(running)
        self.propagate_button.setToolTip(reason or "carry the preview through the volume from the planes you segmented (key planes)")
        if not running:
            self.status_label.setText(self._summary if self._summary and reason is None else (reason or self._summary))

    # ------------------------------------------------------------------ actions

    def propagate(self) -> bool:
        """Start propagating along the axis on screen (the Propagate button). False when it cannot start."""
        reason = self.unavailable_reason()
        if reason is not None or self.annotator.engine.propagating:
            from napari.utils.notifications import show_info

            show_info(f"cannot propagate now: {reason or 'a propagation is under way'}")
            return False
        plane = self.annotator.current_plane()
        keys = ", ".join(str(k) for k in self.annotator.session.key_planes(plane.axis))
        if not self.annotator.engine.propagate(**self.settings()):
            return False
        self.progress_bar.setRange(0, 0)   # busy until the first plane reports
        self.status_label.setText(f"propagating from key planes {keys} along axis {plane.axis} …")
        self.refresh()
        return True

    def cancel(self) -> None:
        """Stop the propagation after the plane being predicted; the preview stays as it was."""
        if self.annotator.engine.propagating:
            self.annotator.engine.cancel_propagation()
            self.status_label.setText("cancelling …")

    def _on_progress(self, done: int, total: int, plane: int) -> None:
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(min(done, max(1, total)))
        self.status_label.setText(f"propagating … plane {plane} ({done} of at most {total})")

    def _on_propagated(self, result, applied: bool) -> None:
        if result is not None:
            self.last_result = result
        done = len(result.visits) if result is not None else 0
        self.progress_bar.setRange(0, max(1, done))
        self.progress_bar.setValue(done if result is not None and not result.cancelled else 0)
        self._summary = describe_result(result, applied)
        if applied:
            self.annotator.refresh_preview()
        self.refresh()
        self.status_label.setText(self._summary)

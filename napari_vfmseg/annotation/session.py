"""An annotation session: prompts per plane, the preview, committed objects, undo/redo, export.

Qt-free and napari-free. The annotator widget turns layer events into calls here and shows the
results; the expensive call (:meth:`PredictionRequest.run`, the model) runs wherever the caller
puts it — the widget runs it on a worker thread.

Arrays, in array axis order:

* ``labels``  (plane, row, col) or (row, col) unsigned ints: the committed objects, shared with
  the napari Labels layer that shows them (napari's paint/erase tools write into it directly).
* ``preview`` same shape, uint8: 1 where the current, not yet committed, object is.

Prompts are kept per :class:`~napari_vfmseg.annotation.planes.Plane`; each plane with prompts has
its own prediction, and the preview is their union. A correction click (prompts that extend the
previous ones by new points) feeds the previous low-resolution logits back to the model.

A plane's *own mask* is what the user made there: painted on the preview (napari's brush,
:meth:`AnnotationSession.preview_painted`), else predicted from its prompts. A 3D propagation
(:meth:`AnnotationSession.propagation_request` → engine → :meth:`AnnotationSession.accept_propagation`)
starts from the own masks along one axis (the key planes) and becomes the base of the preview:
there the preview is the propagated mask, with each key plane's own mask in place of its slice,
plus the own masks of planes along other axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from napari_vfmseg.annotation.history import EditHistory, LabelEdit
from napari_vfmseg.annotation.objects import ObjectRecord, ObjectTable
from napari_vfmseg.annotation.planes import Plane, plane_region, plane_shape
from napari_vfmseg.annotation.preview import VolumePreview, compose_all, compose_plane
from napari_vfmseg.annotation.prompts import PlanePrompts

__all__ = ["AnnotationSession", "PredictionRequest", "PropagationRequest", "Predictor", "ExportResult", "object_table_paths"]


class Predictor(Protocol):
    """What a session needs from the engine: :meth:`napari_vfmseg.engine.Segmenter.predict`."""

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask=None, plane=None,
                candidate=None) -> Any:
        ...


@dataclass(frozen=True)
class PredictionRequest:
    """One model call: the prompts of ``plane`` and the logits of the mask they correct (or None).
    ``candidate``: which of an ambiguous prompt's masks to return (None: the model's default one)."""

    plane: Plane
    prompts: PlanePrompts
    mask_input: Optional[np.ndarray]
    epoch: int
    candidate: Optional[int] = None

    def run(self, predictor: Predictor):
        """Call the model (safe on any thread; touches no session state). Returns its Prediction."""
        points, labels, box = self.prompts.arrays()
        choice = {} if self.candidate is None else {"candidate": self.candidate}
        return predictor.predict(
            points=points,
            point_labels=labels,
            box=box,
            mask_input=self.mask_input,
            plane=None if self.plane.axis is None else self.plane.index,
            **choice,
        )


@dataclass(frozen=True)
class PropagationRequest:
    """One 3D propagation: ``seeds`` maps a key plane's index along ``axis`` to its own mask, bool
    (rows, cols) (copies, safe to read on any thread). ``epoch`` and ``generation`` identify the
    session state it was made from; :meth:`AnnotationSession.accept_propagation` drops a result
    when either changed (another model or window, prompts cleared, a commit)."""

    axis: int
    seeds: dict
    epoch: int
    generation: int

    @property
    def key_planes(self) -> list[int]:
        return sorted(self.seeds)


@dataclass
class _PlaneResult:
    prompts: PlanePrompts
    mask: np.ndarray               # bool (rows, cols)
    logits: Optional[np.ndarray]   # low-resolution logits of mask, fed back on a correction click
    score: float
    epoch: int
    candidate: int = 0             # which of the decoder's masks this is
    candidates: int = 1            # how many it returned (3 for a single click, 4 for a box alone)


@dataclass(frozen=True)
class ExportResult:
    labels: Path
    csv: Path
    json: Path


def object_table_paths(labels_path: str | Path) -> tuple[Path, Path]:
    """(CSV, JSON) paths written beside an exported label file: ``<stem>.objects.csv/json``."""
    from napari_vfmseg.io.reader import path_extension

    path = Path(labels_path)
    extension = path_extension(path)
    stem = path.name[: -len(extension)] if extension else path.name
    return path.with_name(f"{stem}.objects.csv"), path.with_name(f"{stem}.objects.json")


class AnnotationSession:
    """State of one annotated image.

    ``shape``: spatial shape, (plane, row, col) or (row, col) — an RGB image's channels excluded.
    ``geometry``: ``{"spacing", "origin", "direction"}`` in array order (mm), written with exports
    and used for the physical size of objects. ``labels``: an existing label map to continue
    (shared, not copied), or None for a new one (uint16). ``history_size``: undo steps kept.
    """

    def __init__(
        self,
        shape: Sequence[int],
        geometry: dict,
        labels: Optional[np.ndarray] = None,
        history_size: int = 32,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise ValueError(f"can only annotate 2D or 3D images; got spatial shape {self.shape}")
        self.geometry = {
            "spacing": tuple(float(s) for s in geometry["spacing"]),
            "origin": tuple(float(o) for o in geometry["origin"]),
            "direction": np.asarray(geometry["direction"], dtype=float),
        }
        if len(self.geometry["spacing"]) != self.ndim:
            raise ValueError(f"geometry has {len(self.geometry['spacing'])} spacings for a {self.ndim}D image")
        self.history = EditHistory(history_size)
        self.labels = np.zeros(self.shape, dtype=np.uint16)
        self.table = ObjectTable(self.geometry["spacing"])
        if labels is not None:
            self.set_labels(labels)
        self.preview = np.zeros(self.shape, dtype=np.uint8)
        self.epoch = 0   # bumped when the model or the window changes: older logits are not fed back
        self._prompts: dict[Plane, PlanePrompts] = {}
        self._results: dict[Plane, _PlaneResult] = {}
        self._painted: dict[Plane, np.ndarray] = {}      # plane → bool (rows, cols) painted on the preview
        self._volume: Optional[VolumePreview] = None    # the latest accepted 3D propagation
        self.generation = 0   # bumped when the preview is cleared (Esc, commit): older propagations are dropped

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def set_labels(self, labels: np.ndarray) -> None:
        """Commit into ``labels`` from now on (shared, not copied); its objects join the table, history restarts."""
        if not isinstance(labels, np.ndarray):
            raise ValueError(f"the target labels must be an in-memory numpy array; got {type(labels).__name__}")
        if labels.shape != self.shape:
            raise ValueError(f"labels of shape {labels.shape} do not match the image of shape {self.shape}")
        if labels.dtype.kind not in "ui":
            raise ValueError(f"labels must hold integers; got dtype {labels.dtype}")
        self.labels = labels
        self.table = ObjectTable(self.geometry["spacing"])
        self.table.refresh(self.labels)
        self.history.clear()

    # ------------------------------------------------------------------------ prompts

    def plane_shape(self, plane: Plane) -> tuple[int, int]:
        return plane_shape(self.shape, plane)

    def prompts(self, plane: Plane) -> PlanePrompts:
        return self._prompts.get(plane, PlanePrompts())

    def planes_with_prompts(self) -> list[Plane]:
        return sorted(self._prompts, key=_plane_order)

    def set_axis_prompts(self, axis: Optional[int], by_index: dict[int, PlanePrompts]) -> list[Plane]:
        """Replace the prompts of every plane along ``axis`` (None: the 2D image, index 0).

        Planes missing from ``by_index`` lose their prompts. Returns the planes whose prompts
        changed; a plane left without an object prompt (a positive point or a box) loses its
        prediction at once, the others keep theirs until :meth:`accept` gives a new one.
        """
        new = {}
        for index, prompts in by_index.items():
            plane = Plane(axis, int(index))
            self.plane_shape(plane)  # raises for a plane outside the image
            if not prompts.empty:
                new[plane] = prompts
        current = {p: pr for p, pr in self._prompts.items() if p.axis == axis}
        changed = []
        for plane in sorted(set(current) | set(new)):
            if current.get(plane) == new.get(plane):
                continue
            changed.append(plane)
            if plane in new:
                self._prompts[plane] = new[plane]
            else:
                del self._prompts[plane]
            if plane not in new or not new[plane].has_object_prompt:
                if self._results.pop(plane, None) is not None:
                    self._compose(plane)
        return changed

    def request(self, plane: Plane) -> Optional[PredictionRequest]:
        """The model call for ``plane``'s current prompts; None when they hold no object prompt."""
        prompts = self._prompts.get(plane)
        if prompts is None or not prompts.has_object_prompt:
            return None
        previous = self._results.get(plane)
        mask_input = None
        if previous is not None and previous.epoch == self.epoch and previous.logits is not None and prompts.extends(previous.prompts):
            mask_input = previous.logits
        return PredictionRequest(plane, prompts, mask_input, self.epoch)

    def next_candidate_request(self, plane: Plane) -> Optional[PredictionRequest]:
        """The model call that shows the next of ``plane``'s candidate masks (after the last, the
        first again); None unless the plane's current prediction came with several (a single click or a
        box alone)."""
        result = self._results.get(plane)
        if result is None or result.candidates < 2 or result.epoch != self.epoch:
            return None
        if self._prompts.get(plane) != result.prompts or plane in self._painted:
            return None
        return PredictionRequest(plane, result.prompts, None, self.epoch, (result.candidate + 1) % result.candidates)

    def candidate_of(self, plane: Plane) -> Optional[tuple[int, int]]:
        """(shown, count) of ``plane``'s candidate masks, 1-based; None without a prediction."""
        result = self._results.get(plane)
        return None if result is None else (result.candidate + 1, result.candidates)

    def requests(self) -> list[PredictionRequest]:
        """Requests for every plane with an object prompt (after a model or window change)."""
        return [r for r in (self.request(p) for p in self.planes_with_prompts()) if r is not None]

    def invalidate(self) -> None:
        """The model or its input changed: previous logits are not fed back any more."""
        self.epoch += 1

    def accept(self, request: PredictionRequest, prediction) -> bool:
        """Store ``prediction`` (a Prediction: mask (rows, cols) bool, logits, score) for its plane.

        Ignored (returns False) when the plane's prompts or the model changed since the request.
        """
        plane = request.plane
        if self._prompts.get(plane) != request.prompts or request.epoch != self.epoch:
            return False
        mask = np.asarray(prediction.mask, dtype=bool)
        if mask.shape != self.plane_shape(plane):
            raise ValueError(f"the model returned a mask of shape {mask.shape} for {plane.describe()} of shape {self.plane_shape(plane)}")
        logits = getattr(prediction, "logits", None)
        scores = getattr(prediction, "candidate_scores", None)
        self._results[plane] = _PlaneResult(
            request.prompts, mask, None if logits is None else np.asarray(logits), float(getattr(prediction, "score", 0.0)),
            request.epoch, int(getattr(prediction, "index", 0)), 1 if scores is None else max(1, len(scores)),
        )
        self._painted.pop(plane, None)   # the newest edit of a plane wins: a new prediction replaces painting
        self._compose(plane)
        return True

    def mask(self, plane: Plane) -> Optional[np.ndarray]:
        """The predicted mask of ``plane`` (bool (rows, cols)), or None."""
        result = self._results.get(plane)
        return None if result is None else result.mask

    def last_click_ignored(self, plane: Plane) -> bool:
        """True when ``plane``'s predicted mask contradicts its most recent point: a background point
        inside the mask, or an object point outside it (the model did not follow that click)."""
        result = self._results.get(plane)
        if result is None or not result.prompts.points:
            return False
        rows, cols = result.mask.shape
        row, col = result.prompts.points[-1]
        inside = bool(result.mask[min(max(int(round(row)), 0), rows - 1), min(max(int(round(col)), 0), cols - 1)])
        return inside != bool(result.prompts.labels[-1])

    def score(self, plane: Plane) -> Optional[float]:
        result = self._results.get(plane)
        return None if result is None else result.score

    def clear_prompts(self) -> list[Plane]:
        """Forget every prompt, prediction, painted plane and propagation; the preview becomes empty.
        Returns the planes cleared."""
        cleared = sorted(set(self._prompts) | set(self._results) | set(self._painted), key=_plane_order)
        self._prompts.clear()
        self._results.clear()
        self._painted.clear()
        self._volume = None
        self.generation += 1
        self.preview[...] = 0
        return cleared

    @property
    def has_pending_object(self) -> bool:
        """True when something is not committed yet: prompts, painted planes or a propagated preview."""
        return bool(self._prompts or self._painted or self._volume is not None)

    # ------------------------------------------------------------------------ painting and 3D propagation

    def preview_painted(self, plane: Plane) -> None:
        """``plane``'s slice of ``preview`` was edited in place (napari's brush, eraser or fill on the
        preview layer): what it shows now becomes the plane's own mask (any value > 0 is the object)."""
        self.plane_shape(plane)  # raises for a plane outside the image
        self._painted[plane] = self.preview[plane_region(self.ndim, plane)] > 0
        self._compose(plane)

    def own_mask(self, plane: Plane) -> Optional[np.ndarray]:
        """The user's mask of ``plane``, bool (rows, cols): painted on the preview, else predicted
        from its prompts; None when the plane has neither."""
        painted = self._painted.get(plane)
        if painted is not None:
            return painted
        result = self._results.get(plane)
        return None if result is None else result.mask

    def _own_masks(self) -> dict[Plane, np.ndarray]:
        return {plane: self.own_mask(plane) for plane in set(self._results) | set(self._painted)}

    def key_planes(self, axis: int) -> dict[int, np.ndarray]:
        """Planes along ``axis`` with an own mask (predicted or painted, possibly empty): index → bool
        (rows, cols) copy, ascending. These are the key planes a propagation along ``axis`` keeps."""
        masks = self._own_masks()
        return {p.index: masks[p].copy() for p in sorted(masks, key=_plane_order) if p.axis == axis}

    def propagation_request(self, axis: int) -> Optional[PropagationRequest]:
        """The propagation along ``axis`` from :meth:`key_planes`; None when no key plane holds any object
        (or the image is 2D)."""
        if self.ndim != 3:
            return None
        seeds = self.key_planes(axis)
        if not any(mask.any() for mask in seeds.values()):
            return None
        return PropagationRequest(int(axis), seeds, self.epoch, self.generation)

    def accept_propagation(self, request: PropagationRequest, mask: np.ndarray) -> bool:
        """Show ``mask`` (bool, the image's shape: the propagation's result) as the preview's base.

        Ignored (returns False) when the model or window changed or the preview was cleared or
        committed since the request. Key planes edited since then keep their newer own mask.
        """
        if request.epoch != self.epoch or request.generation != self.generation:
            return False
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.shape:
            raise ValueError(f"the propagated mask has shape {mask.shape} but the image has shape {self.shape}")
        self._volume = VolumePreview(request.axis, mask)
        self._compose_all()
        return True

    @property
    def propagation_axis(self) -> Optional[int]:
        """The axis of the propagated preview, or None when the preview holds no propagation."""
        return None if self._volume is None else self._volume.axis

    def _compose_all(self) -> None:
        compose_all(self.preview, self._volume, self._own_masks())

    def _compose(self, plane: Plane) -> None:
        compose_plane(self.preview, plane, self._volume, self._own_masks())

    # ------------------------------------------------------------------------ objects

    def commit(self, name: Optional[str] = None) -> Optional[ObjectRecord]:
        """Write the preview into ``labels`` under a new id (over whatever was there); clear prompts.

        Returns the new object, or None when the preview is empty.
        """
        where = self.preview > 0
        if not where.any():
            return None
        new_id = self.table.next_id(self.labels)
        if self.labels.dtype.kind in "ui" and new_id > np.iinfo(self.labels.dtype).max:
            raise ValueError(f"the target labels ({self.labels.dtype}) cannot hold another object id ({new_id})")
        before = self.table.snapshot()
        edit = LabelEdit.assign(self.labels, where, new_id, f"commit object {new_id}")
        edit.apply(self.labels)
        record = self.table.add(new_id, name)
        self.table.refresh(self.labels)
        edit.table_before, edit.table_after = before, self.table.snapshot()
        self.history.push(edit)
        self.clear_prompts()
        return record

    def delete_object(self, label_id: int) -> None:
        """Erase object ``label_id`` from the labels and the table (undoable)."""
        record = self.table.get(label_id)
        before = self.table.snapshot()
        edit = LabelEdit.assign(self.labels, self.labels == record.id, 0, f"delete object {record.id}")
        self.table.remove(record.id)
        if edit is None:  # no voxels left: only the table entry goes
            return
        edit.apply(self.labels)
        self.table.refresh(self.labels)
        edit.table_before, edit.table_after = before, self.table.snapshot()
        self.history.push(edit)

    def undo(self) -> Optional[LabelEdit]:
        """Undo the latest commit or deletion (labels exactly as before it). None if nothing to undo."""
        edit = self.history.undo(self.labels)
        if edit is not None:
            self._restore_table(edit.table_before)
        return edit

    def redo(self) -> Optional[LabelEdit]:
        edit = self.history.redo(self.labels)
        if edit is not None:
            self._restore_table(edit.table_after)
        return edit

    def _restore_table(self, snapshot: list[ObjectRecord]) -> None:
        """Bring back the snapshot's set of objects, keeping current names/visibility of those that stayed."""
        current = {r.id: r for r in self.table.records()}
        self.table.restore([current.get(r.id, r) for r in snapshot])
        self.table.refresh(self.labels)

    def labels_edited(self) -> list[int]:
        """The labels were changed outside the session (brush, eraser, fill): recount. Returns new ids."""
        return self.table.refresh(self.labels)

    # ------------------------------------------------------------------------ export

    def export(self, path: str | Path, extra: Optional[dict] = None,
               write: Optional[Callable[[Path, np.ndarray], str | Path]] = None) -> ExportResult:
        """Write the labels with the image geometry (or with ``write(path, labels)`` → written path,
        e.g. the widget's DICOM-SEG writer), and the object table as CSV and JSON beside them."""
        from napari_vfmseg.io import write_labels

        self.table.refresh(self.labels)
        written = Path(write(Path(path), self.labels) if write else write_labels(path, self.labels, **self.geometry))
        csv_path, json_path = object_table_paths(written)
        self.table.write_csv(csv_path)
        self.table.write_json(json_path, {"labels_file": written.name, **(extra or {})})
        return ExportResult(written, csv_path, json_path)


def _plane_order(plane: Plane) -> tuple[int, int]:
    return (-1 if plane.axis is None else plane.axis, plane.index)

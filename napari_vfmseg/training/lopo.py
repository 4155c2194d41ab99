"""Leave-one-plane-out validation: judging a round when the user corrected only a few planes.

With three corrected planes there is nothing to hold out without losing a third of the data. A
round therefore validates on the user's own planes in folds: for each fold plane, a copy of the
starting model trains on the *other* planes (``fold_steps`` steps, same recipe) and is scored on
the plane it did not see, before and after, with a tight box and with one interior click through
the engine (:class:`~napari_vfmseg.engine.Segmenter`, the plane's true pixel proportions). The
mean change over the folds estimates what the round does to a plane it has not seen; the round
keeps its adapter only when that change is positive (see :func:`napari_vfmseg.training.rounds.run_round`).

Planes are :class:`~napari_vfmseg.training.data.LabelledImage` (uint8 (row, col) image, label map).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np

from napari_vfmseg.training.data import LabelledImage, object_ids
from napari_vfmseg.training.measures import spread
from napari_vfmseg.training.metrics import dice
from napari_vfmseg.training.prompts import bounding_box, interior_point

__all__ = ["FoldScore", "LopoReport", "pair_scores", "leave_one_plane_out"]


@dataclass
class FoldScore:
    """One fold: the plane left out (``source``) and its box / 1-click Dice before and after."""

    source: str
    box_before: float
    box_after: float
    click_before: float
    click_after: float
    seconds: float


@dataclass
class LopoReport:
    """All folds of a leave-one-plane-out validation; means over folds."""

    folds: list[FoldScore] = field(default_factory=list)
    fold_steps: int = 0
    cancelled: bool = False
    seconds: float = 0.0

    def _mean(self, name: str) -> Optional[float]:
        values = [getattr(f, name) for f in self.folds]
        return float(np.mean(values)) if values else None

    @property
    def box_before(self) -> Optional[float]:
        return self._mean("box_before")

    @property
    def box_after(self) -> Optional[float]:
        return self._mean("box_after")

    @property
    def click_before(self) -> Optional[float]:
        return self._mean("click_before")

    @property
    def click_after(self) -> Optional[float]:
        return self._mean("click_after")

    @property
    def gain(self) -> Optional[float]:
        """Mean change of (box + click) / 2 over the folds; None without folds."""
        if not self.folds:
            return None
        return float(np.mean([(f.box_after + f.click_after - f.box_before - f.click_before) / 2 for f in self.folds]))

    def summary(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
        return {"folds": len(self.folds), "fold_steps": self.fold_steps, "box_before": r(self.box_before),
                "box_after": r(self.box_after), "click_before": r(self.click_before),
                "click_after": r(self.click_after), "gain": r(self.gain), "cancelled": self.cancelled,
                "seconds": round(self.seconds, 2),
                "per_fold": [{"plane": f.source, "box": [r(f.box_before), r(f.box_after)],
                              "click": [r(f.click_before), r(f.click_after)]} for f in self.folds]}


def pair_scores(segmenter, pair: LabelledImage, min_pixels: int = 20) -> tuple[float, float]:
    """(box Dice, 1-click Dice) of ``segmenter`` on the objects of one plane, means over its objects.

    The plane is embedded with its pixel aspect (``spacing=(pixel_aspect, 1)``), as the viewer does.
    """
    segmenter.set_image(np.asarray(pair.image), spacing=(float(getattr(pair, "pixel_aspect", 1.0) or 1.0), 1.0))
    box_scores, click_scores = [], []
    for label in object_ids(pair.labels, min_pixels):
        truth = pair.labels == label
        box_scores.append(dice(segmenter.predict(box=bounding_box(truth)).mask, truth))
        answer = segmenter.predict(points=[interior_point(truth)], point_labels=[1])
        click_scores.append(dice(answer.mask, truth))
    return float(np.mean(box_scores)), float(np.mean(click_scores))


def leave_one_plane_out(model, pairs: Sequence[LabelledImage], train_config, folds: int = 3,
                        fold_steps: Optional[int] = None, extra_train: Sequence[LabelledImage] = (),
                        cancel: Optional[threading.Event] = None,
                        progress: Optional[Callable[[int, int], None]] = None) -> LopoReport:
    """Folds over (at most ``folds``, spread) planes of ``pairs``; ``model`` (a ``LoadedModel``) is only read.

    Each fold trains a copy on the other planes of ``pairs`` plus ``extra_train`` (e.g. replayed
    planes) with ``train_config`` (``fold_steps`` steps, default its own, no validation) and scores
    the plane left out. Needs at least two planes with objects; fewer give an empty report.
    ``cancel`` stops between and inside folds (the report then says ``cancelled``);
    ``progress(done, total)`` is called after each fold.
    """
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.training.rounds import copy_model
    from napari_vfmseg.training.trainer import Trainer

    started = time.perf_counter()
    cancel = cancel or threading.Event()
    min_pixels = int(train_config.min_pixels)
    usable = [p for p in pairs if object_ids(p.labels, min_pixels)]
    steps = int(fold_steps or train_config.steps)
    report = LopoReport(fold_steps=steps)
    if len(usable) < 2:
        return report
    # In a fold the thick views of the planes (training.thick_views) take turns with them instead
    # of widening the step, so validating a round on a thick-slice scan costs what it costs on any other.
    config = replace(train_config, steps=steps, val_every=0, early_stop_patience=0, thick_views_widen=False)
    targets = spread(usable, folds)
    base = Segmenter(model)
    try:
        for done, target in enumerate(targets, start=1):
            if cancel.is_set():
                report.cancelled = True
                break
            fold_started = time.perf_counter()
            box_before, click_before = pair_scores(base, target, min_pixels)
            work = copy_model(model)
            others = [p for p in usable if p is not target] + list(extra_train)
            result = Trainer(work, others, [], config, cancel=cancel).fit()
            if result.cancelled:
                report.cancelled = True
                break
            scorer = Segmenter(work)
            try:
                box_after, click_after = pair_scores(scorer, target, min_pixels)
            finally:
                scorer.close()
            report.folds.append(FoldScore(target.source, box_before, box_after, click_before, click_after,
                                          time.perf_counter() - fold_started))
            if progress is not None:
                progress(done, len(targets))
    finally:
        base.close()
    report.seconds = time.perf_counter() - started
    return report

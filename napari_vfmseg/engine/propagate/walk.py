"""The walk of 3D propagation: masks on one or more key planes of a volume → a 3D mask, plane by plane.

From each key plane the walk goes outward in both directions. Each next plane is prompted from the
mask just accepted on the previous one (:func:`~.rules.next_plane_prompt`: its box grown by a
margin, its most interior point(s), its low-resolution logits as ``mask_input``) and the
segmenter's answer is accepted unless a stop rule fires (:func:`~.rules.stop_reason`): the
predicted IoU falls below ``min_score``, the mask vanishes, its size jumps implausibly, or it no
longer overlaps the previous mask. A rejected plane ends that direction; the walk never runs past
the volume's ends or through another key plane. A plane without a finite voxel (all NaN or
infinite) ends it too, as ``"vanished"``.

Between two key planes ``a < b`` the gap is walked from both sides (a → b and b → a) and every plane
in it is reconciled by a distance-weighted vote of the two masks (:func:`~.rules.reconcile`). Key
planes are never overwritten, not even by the optional post-processing (largest 3D connected
component, per-plane hole filling). An empty key plane is allowed and means "no object here":
nothing starts from it and nothing is written on it.

While the walk decodes one plane, a background thread (the segmenter's ``prefetch``, when it has
one) embeds the next ``lookahead`` planes of the plan, so the walk waits on the encoder only as
much as it must.

Axes: the volume is (plane, row, col) in napari order and planes are taken along ``axis``, which
must be the axis the segmenter's volume was set with. Key-plane masks are bool (rows, cols) arrays
of ``np.take(volume, k, axis)``; the result mask has the volume's shape.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from napari_vfmseg.engine.errors import NonFiniteImageError
from napari_vfmseg.engine.propagate.config import PromptPolicy, PropagationConfig
from napari_vfmseg.engine.propagate.protocol import (
    CountsEncoderCalls,
    GivesIntensities,
    KeepsCurrentPlane,
    PlaneSegmenter,
    Prefetches,
    segmenter_model,
)
from napari_vfmseg.engine.propagate.results import PlaneVisit, PropagationResult, WalkStop
from napari_vfmseg.engine.propagate.rules import AppearanceWatch, next_plane_prompt, reconcile, stop_reason

__all__ = ["propagate", "ProgressCallback", "CancelToken"]

ProgressCallback = Callable[[int, int, int], None]  # (done, total, plane); total may shrink
CancelToken = Union[threading.Event, Callable[[], bool], None]


@dataclass
class _Seed:
    mask: np.ndarray
    logits: Optional[np.ndarray]


@dataclass
class _Walk:
    """A planned direction: from ``seed`` towards ``end`` (exclusive), ``step`` = +1 or -1."""

    seed: int
    step: int
    end: int
    end_is_key: bool

    def planes(self) -> list[int]:
        return list(range(self.seed + self.step, self.end, self.step))


class _Lookahead:
    """Keeps the segmenter's background prefetch ``lookahead`` planes ahead of the walk."""

    def __init__(self, segmenter, lookahead: int, enabled: bool) -> None:
        self._prefetch = segmenter.prefetch if enabled and isinstance(segmenter, Prefetches) else None
        self._lookahead = lookahead
        self._requested: set[int] = set()
        self._handle = None

    def advance(self, upcoming: Sequence[int]) -> None:
        """``upcoming``: the planes still to predict, in order, the current one first. The current
        plane is embedded by the caller; the background thread takes the ones after it."""
        if self._prefetch is None:
            return
        window = [p for p in upcoming[1 : 1 + self._lookahead]]
        if not window or all(p in self._requested for p in window[: max(1, self._lookahead // 2)]):
            return
        self._handle = self._prefetch(order=window)
        self._requested.update(window)

    def close(self) -> None:
        """Stop the background thread (the batch being encoded finishes) and wait for it."""
        if self._handle is None:
            return
        self._handle.cancel()
        try:
            self._handle.wait()
        except Exception:  # noqa: BLE001 — the same failure surfaces in the caller's own predict()
            pass
        self._handle = None


def _is_cancelled(cancel: CancelToken) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _as_seed(plane: int, value) -> _Seed:
    """A key plane's value: a bool (rows, cols) mask or a Prediction-like object (``.mask``, ``.logits``)."""
    logits = None
    if hasattr(value, "mask") and not isinstance(value, np.ndarray):
        logits = getattr(value, "logits", None)
        value = value.mask
    mask = np.asarray(value)
    if mask.ndim != 2:
        raise ValueError(f"key plane {plane}: expected a 2D mask (rows, cols); got shape {mask.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"key plane {plane}: a mask must be boolean or 0/1; got values {np.unique(mask)[:5].tolist()}")
        mask = mask.astype(bool)
    return _Seed(mask, None if logits is None else np.asarray(logits, dtype=np.float32))


def _plan(keys: list[int], count: int) -> list[_Walk]:
    """Walks in the order they run: below the first key plane, each gap both ways, above the last."""
    walks = [_Walk(keys[0], -1, -1, False)]
    for low, high in zip(keys[:-1], keys[1:]):
        if high - low > 1:
            walks += [_Walk(low, +1, high, True), _Walk(high, -1, low, True)]
    walks.append(_Walk(keys[-1], +1, count, False))
    return walks


def propagate(
    segmenter: PlaneSegmenter,
    seeds: Mapping[int, Any],
    axis: int = 0,
    config: Optional[PropagationConfig] = None,
    *,
    progress: Optional[ProgressCallback] = None,
    cancel: CancelToken = None,
    **overrides,
) -> PropagationResult:
    """Propagate key-plane masks through the segmenter's volume; returns a :class:`PropagationResult`.

    ``segmenter``: an engine :class:`~napari_vfmseg.engine.Segmenter` after ``set_volume(volume,
    axis=axis)``, or anything that is a :class:`~.protocol.PlaneSegmenter` (the optional
    capabilities of :mod:`~.protocol` are used when present). ``seeds``: key plane index →
    bool (rows, cols) mask of that plane, or a ``Prediction`` (its logits then prompt the first
    step). ``axis``: 0, 1 or 2, the segmenter's volume axis. ``config`` (default
    :meth:`PropagationConfig.for_model` of the segmenter's model) and keyword ``overrides`` of its fields, e.g. ``min_score=0.7``.
    ``progress(done, total, plane)`` after each prediction (``total`` is the most predictions the
    plan can still need; it shrinks when a direction stops early). ``cancel``: a
    ``threading.Event`` or a callable returning True to stop; the result then has
    ``cancelled=True`` and what was done by then.
    """
    started = time.perf_counter()
    config = config or PropagationConfig.for_model(segmenter_model(segmenter))
    if overrides:
        unknown = sorted(set(overrides) - set(PropagationConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown propagation setting(s) {unknown}; see PropagationConfig")
        config = replace(config, **overrides)
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2; got {axis}")
    axis = int(axis) % 3
    if not isinstance(segmenter, PlaneSegmenter):
        raise TypeError(f"propagate needs a segmenter with plane_count, volume_axis and predict(); got {type(segmenter).__name__}")
    seg_axis = segmenter.volume_axis
    if seg_axis is not None and int(seg_axis) != axis:
        raise ValueError(
            f"propagate along axis {axis}, but the segmenter's volume is set along axis {seg_axis}: "
            f"call segmenter.set_volume(volume, axis={axis}) first"
        )
    count = int(segmenter.plane_count or 0)
    if count < 1:
        raise ValueError("the segmenter has no volume: call segmenter.set_volume(volume, axis=...) first")
    key_seeds, plane_shape = _key_seeds(seeds, count, axis)
    keys = sorted(key_seeds)
    counts = isinstance(segmenter, CountsEncoderCalls)
    encoder_before = segmenter.encoder_calls if counts else None

    walks = _plan(keys, count)
    remaining = {id(w): w.planes() for w in walks}
    for w in walks:  # nothing starts from an empty key plane
        if not key_seeds[w.seed].mask.any():
            remaining[id(w)] = []
    cap = config.max_planes
    if cap is not None:
        for w in walks:
            remaining[id(w)] = remaining[id(w)][:cap]
    total = sum(len(p) for p in remaining.values())

    kept: dict[tuple[int, int], tuple[np.ndarray, float]] = {}  # (seed, plane) → (mask, score)
    visits: list[PlaneVisit] = []
    stops: list[WalkStop] = []
    cancelled = False
    lookahead = _Lookahead(segmenter, config.lookahead, config.prefetch)
    keeps_plane = isinstance(segmenter, KeepsCurrentPlane)
    current_plane = segmenter.current_plane if keeps_plane else None  # predict() moves it; the caller's view stays
    values_of = segmenter.plane_image if isinstance(segmenter, GivesIntensities) else None
    done = 0
    try:
        for index, walk in enumerate(walks):
            seed = key_seeds[walk.seed]
            if not seed.mask.any():
                continue
            previous, previous_logits = seed.mask, seed.logits
            last, stopped_at, reason = walk.seed, None, None
            looks = AppearanceWatch.start(values_of, walk.seed, seed.mask, config)
            best_score: Optional[float] = None
            planes = remaining[id(walk)]
            for position, plane in enumerate(planes):
                if cancelled or _is_cancelled(cancel):
                    cancelled, reason = True, "cancelled"
                    break
                upcoming = planes[position:] + [p for w in walks[index + 1 :] for p in remaining[id(w)]]
                lookahead.advance(upcoming)
                prediction, mask = _predict_plane(segmenter, plane, previous, previous_logits, config.policy,
                                                  plane_shape, axis)
                similarity = around = None
                if prediction is None:  # no finite voxel on this plane: nothing there, the walk ends
                    score, reason = float("nan"), "vanished"
                else:
                    score = float(prediction.score)
                    if looks is not None:
                        mask, similarity, around = looks.check(plane, mask, previous)
                    reason = stop_reason(mask, score, previous, config, best_score, similarity, around)
                done += 1
                visits.append(PlaneVisit(plane, walk.seed, walk.step, score, int(np.count_nonzero(mask)),
                                         reason is None, reason, None if similarity is None else round(similarity, 4),
                                         None if around is None else round(around, 4)))
                if reason is not None:
                    stopped_at = plane
                    total -= len(planes) - position - 1
                    remaining[id(walk)] = planes[: position + 1]
                    if progress is not None:
                        progress(done, total, plane)
                    break
                kept[(walk.seed, plane)] = (mask, score)
                best_score = score if best_score is None else max(best_score, score)
                previous, previous_logits, last = mask, prediction.logits, plane
                if looks is not None:
                    looks.accept(mask)
                if progress is not None:
                    progress(done, total, plane)
            else:
                if cap is not None and len(planes) == cap and len(planes) < len(walk.planes()):
                    reason = "max_planes"
                else:
                    reason = "key_plane" if walk.end_is_key else "volume_end"
            if reason == "cancelled":
                total = done
            stops.append(WalkStop(walk.seed, walk.step, last, stopped_at, reason))
            if cancelled:
                break
    finally:
        lookahead.close()
        if keeps_plane and current_plane is not None:
            segmenter.current_plane = current_plane

    stack, scores = _assemble(kept, key_seeds, count, plane_shape, config)
    encoder_after = segmenter.encoder_calls if counts else None
    return PropagationResult(
        mask=np.moveaxis(stack, 0, axis),
        axis=axis,
        key_planes=keys,
        scores=scores,
        visits=visits,
        stops=stops,
        cancelled=cancelled,
        seconds=time.perf_counter() - started,
        encoder_calls=None if encoder_before is None or encoder_after is None else int(encoder_after - encoder_before),
    )


def _key_seeds(seeds: Mapping[int, Any], count: int, axis: int) -> tuple[dict[int, _Seed], tuple[int, int]]:
    """The key planes checked: plane → _Seed, and the (rows, cols) shape they share."""
    if not seeds:
        raise ValueError("propagate needs at least one key plane mask in seeds")
    key_seeds: dict[int, _Seed] = {}
    for plane, value in seeds.items():
        if not isinstance(plane, (int, np.integer)) or not 0 <= int(plane) < count:
            raise ValueError(f"key plane {plane!r} is outside the volume: axis {axis} has {count} planes")
        key_seeds[int(plane)] = _as_seed(int(plane), value)
    shapes = {seed.mask.shape for seed in key_seeds.values()}
    if len(shapes) != 1:
        raise ValueError(f"key plane masks differ in shape: {sorted(shapes)}")
    return key_seeds, shapes.pop()


def _predict_plane(segmenter: PlaneSegmenter, plane: int, previous: np.ndarray, previous_logits: Optional[np.ndarray],
                   policy: PromptPolicy, plane_shape: tuple[int, int], axis: int
                   ) -> tuple[Optional[Any], np.ndarray]:
    """(the segmenter's prediction for ``plane``, prompted from the previous mask; its bool mask), or
    (None, an empty mask) when the plane has no finite voxel."""
    prompt = next_plane_prompt(previous, previous_logits, policy)
    try:
        prediction = segmenter.predict(points=prompt.points, point_labels=prompt.point_labels, box=prompt.box,
                                       mask_input=prompt.mask_input, plane=plane)
    except NonFiniteImageError:
        return None, np.zeros(plane_shape, dtype=bool)
    mask = np.asarray(prediction.mask, dtype=bool)
    if mask.shape != plane_shape:
        raise ValueError(
            f"plane {plane} along axis {axis} has shape {mask.shape} but the key plane masks are "
            f"{plane_shape}: the masks do not belong to this volume or axis"
        )
    return prediction, mask


def _assemble(kept: dict[tuple[int, int], tuple[np.ndarray, float]], key_seeds: dict[int, _Seed], count: int,
              plane_shape: tuple[int, int], config: PropagationConfig) -> tuple[np.ndarray, dict[int, float]]:
    """The walks' accepted masks (``kept``: (seed, plane) → (mask, score)) as one (plane, rows, cols)
    stack: outside the key planes the one walk there, between two of them both walks reconciled, the
    key planes as given (also after post-processing). Returns the stack and plane → score."""
    keys = sorted(key_seeds)
    stack = np.zeros((count, *plane_shape), dtype=bool)
    scores: dict[int, float] = {}
    for low, high in zip([None, *keys], [*keys, None]):
        if low is None or high is None:  # outside the key planes: one walk only
            seed = keys[0] if low is None else keys[-1]
            for (origin, plane), (mask, score) in kept.items():
                if origin == seed and (plane < seed if low is None else plane > seed):
                    stack[plane], scores[plane] = mask, score
            continue
        for plane in range(low + 1, high):
            merged = reconcile(plane, low, high, kept.get((low, plane)), kept.get((high, plane)))
            if merged is not None:
                stack[plane], scores[plane] = merged
    for plane, seed in key_seeds.items():
        stack[plane] = seed.mask
    _postprocess(stack, config)
    for plane, seed in key_seeds.items():  # post-processing never changes a key plane
        stack[plane] = seed.mask
    for plane in list(scores):
        if not stack[plane].any():
            del scores[plane]
    return stack, scores


def _postprocess(stack: np.ndarray, config: PropagationConfig) -> None:
    """In place on ``stack`` (plane, rows, cols): largest 26-connected component, then per-plane hole filling."""
    if config.largest_component and stack.any():
        labelled, n = ndimage.label(stack, structure=np.ones((3, 3, 3), dtype=bool))
        if n > 1:
            sizes = np.bincount(labelled.ravel(), minlength=n + 1)
            sizes[0] = 0
            stack[...] = labelled == int(np.argmax(sizes))
    if config.fill_holes:
        for plane in np.flatnonzero(stack.any(axis=(1, 2))):
            stack[plane] = ndimage.binary_fill_holes(stack[plane])

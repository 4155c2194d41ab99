"""3D propagation: masks on one or more key planes of a volume → a 3D mask, plane by plane.

From each key plane the walk goes outward in both directions. Each next plane is prompted from the
mask just accepted on the previous one (:func:`next_plane_prompt`: its box grown by a margin, its
most interior point(s), its low-resolution logits as ``mask_input``) and the segmenter's answer is
accepted unless a stop rule fires (:func:`stop_reason`): the predicted IoU falls below
``min_score``, the mask vanishes, its size jumps implausibly, or it no longer overlaps the previous
mask. A rejected plane ends that direction; the walk never runs past the volume's ends or through
another key plane.

Between two key planes ``a < b`` the gap is walked from both sides (a → b and b → a) and every plane
in it is reconciled by a distance-weighted vote of the two masks (:func:`reconcile`): near ``a`` the
walk from ``a`` wins, near ``b`` the one from ``b``; a pixel on which they disagree exactly half-way
goes to the prediction with the higher score. Key planes are never overwritten, not even by the
optional post-processing (largest 3D connected component, per-plane hole filling). An empty key
plane is allowed and means "no object here": nothing starts from it and nothing is written on it.

While the walk decodes one plane, a background thread (:meth:`Segmenter.prefetch`) embeds the next
``lookahead`` planes of the plan, so the walk waits on the encoder only as much as it must.

Axes: the volume is (plane, row, col) in napari order and planes are taken along ``axis``, which
must be the axis the segmenter's volume was set with. Key-plane masks are bool (rows, cols) arrays
of ``np.take(volume, k, axis)``; the result mask has the volume's shape.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from napari_vfmseg.engine.appearance import Appearance, surroundings

__all__ = [
    "PromptPolicy",
    "PlanePrompt",
    "PropagationConfig",
    "PlaneVisit",
    "WalkStop",
    "PropagationResult",
    "STOP_REASONS",
    "next_plane_prompt",
    "stop_reason",
    "trim_to_appearance",
    "segmenter_model",
    "preset",
    "reconcile",
    "propagate",
]

# Why a walk direction ended.
STOP_REASONS: dict[str, str] = {
    "low_score": "the model's predicted IoU fell below min_score",
    "score_drop": "the predicted IoU fell below min_score_ratio x the best score of this walk",
    "appearance": "the mask's intensities looked like neither the key plane's object nor the previous plane's "
                  "(similarity < min_appearance_similarity), and not clearly more like the object than like its surroundings",
    "vanished": "the mask had fewer than min_area pixels",
    "area_jump": "the mask grew implausibly (equivalent diameter > max_growth x previous + growth_slack_px)",
    "lost": "the mask no longer overlapped the previous plane's mask (overlap < min_overlap)",
    "volume_end": "the walk reached the first or last plane of the volume",
    "key_plane": "the walk reached another key plane",
    "max_planes": "the walk made max_planes predictions in this direction",
    "cancelled": "cancel was requested",
}

ProgressCallback = Callable[[int, int, int], None]  # (done, total, plane); total may shrink
CancelToken = Union[threading.Event, Callable[[], bool], None]


# ------------------------------------------------------------------------------------ prompt policy


@dataclass(frozen=True)
class PromptPolicy:
    """How the next plane is prompted from the previous plane's mask (see :func:`next_plane_prompt`).

    ``box``: give the previous mask's bounding box, grown on each side by
    ``max(box_margin_px, box_margin * side)`` pixels (side = the box's height for rows, width for
    columns) so an object that drifts or widens between planes still fits. ``points``: how many
    most-interior points of the previous mask to give as positive clicks (one per connected
    component, largest first; 0 = none). ``logits``: pass the previous prediction's low-resolution
    logits as ``mask_input`` (a key plane given as a plain mask has none: its first step goes without).
    """

    box: bool = True
    box_margin: float = 0.1
    box_margin_px: float = 3.0
    points: int = 1
    logits: bool = True

    def __post_init__(self) -> None:
        if not (self.box or self.points > 0):
            raise ValueError("PromptPolicy needs a box or at least one point (logits alone cannot start a plane)")
        if self.box_margin < 0 or self.box_margin_px < 0:
            raise ValueError(f"box margins must be >= 0; got {self.box_margin}, {self.box_margin_px}")
        if self.points < 0:
            raise ValueError(f"points must be >= 0; got {self.points}")

    def describe(self) -> str:
        parts = []
        if self.box:
            parts.append(f"box+{self.box_margin:g}/{self.box_margin_px:g}px")
        if self.points:
            parts.append(f"{self.points} point{'s' if self.points > 1 else ''}")
        if self.logits:
            parts.append("logits")
        return " + ".join(parts)


@dataclass(frozen=True)
class PlanePrompt:
    """Prompts for one plane, ready for ``Segmenter.predict``.

    ``points``: float (N, 2) (row, col) or None; ``point_labels``: int (N,) (all 1) or None;
    ``box``: (row0, col0, row1, col1) or None; ``mask_input``: low-res logits (L, L) or None.
    """

    points: Optional[np.ndarray]
    point_labels: Optional[np.ndarray]
    box: Optional[tuple[float, float, float, float]]
    mask_input: Optional[np.ndarray]


def _interior_points(mask: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` points (N, 2) (row, col): the most interior pixel of each connected component,
    largest components first. The image border counts as a border of the mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or count <= 0:
        return np.zeros((0, 2), dtype=np.float64)
    r0, c0 = rows[0], cols[0]
    crop = mask[r0 : rows[-1] + 1, c0 : cols[-1] + 1]  # the work is on the mask's bounding box only
    labelled, n = ndimage.label(crop)
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    order = (np.argsort(-sizes, kind="stable") + 1)[:count]
    padded = np.pad(crop, 1)  # pixels outside the crop are background or the image border: both borders
    distance = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    positions = ndimage.maximum_position(distance, labelled, index=[int(i) for i in order])
    return np.asarray(positions, dtype=np.float64).reshape(-1, 2) + (r0, c0)


def next_plane_prompt(mask: np.ndarray, logits: Optional[np.ndarray] = None,
                      policy: PromptPolicy = PromptPolicy()) -> PlanePrompt:
    """The prompt for the next plane, built from the mask accepted on the previous one.

    ``mask``: bool (rows, cols), not empty. ``logits``: that mask's low-resolution logits (L, L), or
    None. The box is clipped to the plane; points are integer pixel centres.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"next_plane_prompt needs a non-empty 2D mask; got shape {mask.shape}, {int(mask.sum())} pixels")
    rows, cols = mask.shape
    box = None
    if policy.box:
        row_idx = np.flatnonzero(mask.any(axis=1))
        col_idx = np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = row_idx[0], row_idx[-1], col_idx[0], col_idx[-1]
        mr = max(policy.box_margin_px, policy.box_margin * (r1 - r0 + 1))
        mc = max(policy.box_margin_px, policy.box_margin * (c1 - c0 + 1))
        box = (
            float(max(0.0, np.floor(r0 - mr))),
            float(max(0.0, np.floor(c0 - mc))),
            float(min(rows - 1.0, np.ceil(r1 + mr))),
            float(min(cols - 1.0, np.ceil(c1 + mc))),
        )
    points = labels = None
    if policy.points > 0:
        points = _interior_points(mask, policy.points)
        labels = np.ones(len(points), dtype=np.int64)
    mask_input = None
    if policy.logits and logits is not None:
        mask_input = np.asarray(logits, dtype=np.float32)
    return PlanePrompt(points, labels, box, mask_input)


# ------------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class PropagationConfig:
    """Settings of :func:`propagate`.

    Stop rules (checked on every predicted plane, the offending plane is not kept):
    ``min_score`` (predicted IoU), ``min_score_ratio`` (the predicted IoU relative to the best one
    of the walk so far: a model whose IoU head is not calibrated still scores the planes past an
    object's end lower than those inside it; 0 disables), ``min_area`` (pixels), ``max_growth`` and ``growth_slack_px``
    (size jump: stop when ``sqrt(area) > max_growth * sqrt(previous area) + growth_slack_px``, i.e.
    the equivalent diameter grows too fast — on the abdomen CT phantom no organ needs more than
    1.35 x + 8 px between adjacent planes along any axis), ``min_overlap`` (fraction of the new mask
    that overlaps the previous one; 0 disables), ``max_planes`` (predictions per direction, None =
    unlimited), ``min_appearance_similarity`` (the intensity histogram under the new mask, in the
    volume's units, must reach this Bhattacharyya coefficient with the key plane object's or with the
    previous plane's, or else look clearly more like the object than like the previous mask's
    surroundings — see :class:`~napari_vfmseg.engine.appearance.Appearance`; 0 disables; needs a
    segmenter with ``plane_image``).

    ``appearance_trim`` (None = off): before the stop rules, drop the predicted pixels whose
    intensity lies more than this many spreads outside the key plane object's 5–95 % range, keep
    the parts that touch the previous plane's mask, and fill holes — a check on a model that spills
    into neighbours of another intensity.

    Post-processing of the 3D mask (key planes are restored afterwards): ``largest_component``
    keeps the largest 26-connected component; ``fill_holes`` fills holes plane by plane.

    ``prefetch``: embed planes ahead in a background thread (``lookahead`` planes).
    """

    policy: PromptPolicy = field(default_factory=PromptPolicy)
    min_score: float = 0.5
    min_score_ratio: float = 0.0
    min_area: int = 3
    max_growth: float = 1.6
    growth_slack_px: float = 8.0
    min_overlap: float = 0.01
    max_planes: Optional[int] = None
    min_appearance_similarity: float = 0.0
    appearance_trim: Optional[float] = None
    largest_component: bool = False
    fill_holes: bool = False
    prefetch: bool = True
    lookahead: int = 8

    def __post_init__(self) -> None:
        if self.min_area < 1:
            raise ValueError(f"min_area must be >= 1 pixel; got {self.min_area}")
        if self.max_growth < 1.0:
            raise ValueError(f"max_growth must be >= 1; got {self.max_growth}")
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1]; got {self.min_overlap}")
        if self.max_planes is not None and self.max_planes < 0:
            raise ValueError(f"max_planes must be >= 0 or None; got {self.max_planes}")
        if self.lookahead < 1:
            raise ValueError(f"lookahead must be >= 1; got {self.lookahead}")
        if not 0.0 <= self.min_appearance_similarity <= 1.0:
            raise ValueError(f"min_appearance_similarity must be in [0, 1] (0 = off); got {self.min_appearance_similarity}")
        if self.appearance_trim is not None and self.appearance_trim < 0:
            raise ValueError(f"appearance_trim must be >= 0 or None; got {self.appearance_trim}")

    @property
    def uses_appearance(self) -> bool:
        """True when a rule needs the key planes' intensities."""
        return self.min_appearance_similarity > 0 or self.appearance_trim is not None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_model(cls, model) -> "PropagationConfig":
        """The default settings for a model: the preset its registry entry names in
        ``model.info["propagation"]`` (a :class:`~napari_vfmseg.models.base.LoadedModel`; None or
        no entry: "generic"), built by :func:`preset`."""
        return preset(str(((getattr(model, "info", None) or {}).get("propagation")) or "generic"))


def preset(name: str) -> PropagationConfig:
    """A named set of propagation defaults.

    ``"generic"``: the class defaults. ``"tight"``: for a model that tends to fill the box it is
    given and whose IoU head is not calibrated (the built-in one): a tight box and one point (a
    margin would let the mask grow by the margin on every plane; the previous plane's logits are
    not what such a model learnt to refine), a stop when the score falls below 0.8 x its best on
    the walk, and the appearance checks: a stop when the mask's intensities look like neither the
    key plane's object nor the previous plane's (similarity < 0.6), and a trim of pixels more than
    0.25 spreads outside the object's intensity range (docs/3d.md has the comparisons; the
    appearance settings were chosen on phantoms of other seeds than the shipped samples).
    """
    if name == "generic":
        return PropagationConfig()
    if name == "tight":
        return PropagationConfig(policy=PromptPolicy(box=True, box_margin=0.0, box_margin_px=0.0, points=1, logits=False),
                                 min_score_ratio=0.8, min_appearance_similarity=0.6, appearance_trim=0.25)
    raise ValueError(f"unknown propagation preset {name!r}: use 'generic' or 'tight'")


def segmenter_model(segmenter):
    """The model of an engine Segmenter (``segmenter.model``), or None for a stand-in without one."""
    return getattr(segmenter, "model", None)


# How much more a mask must look like the object than like its surroundings to pass the appearance rule.
APPEARANCE_MARGIN = 0.05


def stop_reason(mask: np.ndarray, score: float, previous: np.ndarray, config: PropagationConfig,
                best_score: Optional[float] = None, appearance_similarity: Optional[float] = None,
                surroundings_similarity: Optional[float] = None) -> Optional[str]:
    """Why ``mask`` (bool (rows, cols), predicted with ``score``) must not be accepted after
    ``previous`` (the mask accepted on the plane before), or None to accept it. ``best_score``: the
    highest score accepted so far in this walk (None: none yet). ``appearance_similarity``: how much
    the mask's intensities look like the object's, in [0, 1] (None: not measured);
    ``surroundings_similarity``: how much they look like the previous mask's surroundings (None: not
    measured; the appearance rule then needs the first alone). Reasons are keys of
    :data:`STOP_REASONS`; the first rule that fires wins, in the order: vanished, low_score,
    score_drop, appearance, area_jump, lost."""
    area = int(np.count_nonzero(mask))
    if area < config.min_area:
        return "vanished"
    if not score >= config.min_score:  # NaN scores stop too
        return "low_score"
    if config.min_score_ratio > 0 and best_score is not None and score < config.min_score_ratio * best_score:
        return "score_drop"
    if (config.min_appearance_similarity > 0 and appearance_similarity is not None
            and not appearance_similarity >= config.min_appearance_similarity
            and not (surroundings_similarity is not None
                     and appearance_similarity >= surroundings_similarity + APPEARANCE_MARGIN)):
        return "appearance"
    previous_area = int(np.count_nonzero(previous))
    if np.sqrt(area) > config.max_growth * np.sqrt(previous_area) + config.growth_slack_px:
        return "area_jump"
    if config.min_overlap > 0 and np.count_nonzero(mask & previous) < config.min_overlap * area:
        return "lost"
    return None


def trim_to_appearance(mask: np.ndarray, plane_values: np.ndarray, reference: Appearance, tolerance: float,
                       previous: np.ndarray) -> np.ndarray:
    """``mask`` (bool (rows, cols)) without the pixels that do not look like the object.

    Keeps the pixels of ``mask`` that :meth:`Appearance.plausible` accepts in ``plane_values``, then
    only the connected parts of them that touch ``previous`` (the mask accepted on the plane
    before; all parts when none does, so the ``lost`` rule can still see it), then fills their holes
    inside ``mask`` (vessels inside an organ are darker or brighter than it, but belong to it).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask.copy()
    cols = np.flatnonzero(mask.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # all the work is inside the mask's box
    inside = mask[window]
    kept = inside & reference.plausible(plane_values[window], tolerance)
    labelled, count = ndimage.label(kept)
    if count > 1:
        touching = np.unique(labelled[kept & previous[window]])
        touching = touching[touching > 0]
        if touching.size:
            kept = np.isin(labelled, touching)
    trimmed = np.zeros_like(mask)
    trimmed[window] = ndimage.binary_fill_holes(kept) & inside
    return trimmed


def reconcile(plane: int, low: int, high: int, from_low: Optional[tuple[np.ndarray, float]],
              from_high: Optional[tuple[np.ndarray, float]]) -> Optional[tuple[np.ndarray, float]]:
    """Merge the two predictions of a plane between key planes ``low < plane < high``.

    ``from_low``/``from_high``: (mask bool (rows, cols), score) of the walks that started at ``low``
    and at ``high``, or None where that walk stopped earlier. Each votes with weight falling linearly
    with its distance (``(high - plane) / (high - low)`` for ``from_low``); a pixel is kept when the
    vote exceeds one half, and on an exact tie when the higher-scoring prediction has it. The score
    is the same weighted mean. Returns None when neither walk reached the plane.
    """
    if from_low is None or from_high is None:
        return from_low if from_high is None else from_high
    weight_low = (high - plane) / (high - low)
    weight_high = 1.0 - weight_low
    (mask_low, score_low), (mask_high, score_high) = from_low, from_high
    vote = weight_low * mask_low + weight_high * mask_high
    tie_break = mask_low if score_low >= score_high else mask_high
    merged = (vote > 0.5 + 1e-9) | ((np.abs(vote - 0.5) <= 1e-9) & tie_break)
    return merged, float(weight_low * score_low + weight_high * score_high)


# ------------------------------------------------------------------------------------ result


@dataclass
class PlaneVisit:
    """One prediction of the walk: where it started, which way it went, and what happened."""

    plane: int
    seed: int
    direction: int  # +1 towards higher plane indices, -1 towards lower
    score: float
    area: int
    accepted: bool
    reason: Optional[str] = None  # stop reason when not accepted
    similarity: Optional[float] = None  # appearance similarity to the object (None: not measured)
    surroundings: Optional[float] = None  # similarity to the previous mask's surroundings (None: not measured)


@dataclass
class WalkStop:
    """How one direction of the walk from key plane ``seed`` ended.

    ``last_plane``: the last plane it accepted (``seed`` when none); ``stopped_at``: the plane
    whose prediction was rejected, or None when it ended without one (volume end, key plane,
    max_planes, cancel). ``reason``: a key of :data:`STOP_REASONS`.
    """

    seed: int
    direction: int
    last_plane: int
    stopped_at: Optional[int]
    reason: str


@dataclass
class PropagationResult:
    """What :func:`propagate` returns.

    ``mask``: bool, the volume's shape (planes along ``axis``). ``scores``: plane → predicted IoU of
    the mask kept there (key planes are not in it). ``key_planes``: the key planes given, ascending.
    ``visits``: every prediction in the order made. ``stops``: how each direction ended.
    ``cancelled``: True when cancel was requested (the mask holds what was done by then).
    """

    mask: np.ndarray
    axis: int
    key_planes: list[int]
    scores: dict[int, float]
    visits: list[PlaneVisit]
    stops: list[WalkStop]
    cancelled: bool
    seconds: float
    encoder_calls: Optional[int] = None

    @property
    def planes(self) -> list[int]:
        """Planes (along ``axis``) where the mask is not empty, ascending."""
        other = tuple(i for i in range(3) if i != self.axis)
        return [int(p) for p in np.flatnonzero(self.mask.any(axis=other))]

    @property
    def planes_visited(self) -> list[int]:
        """Planes predicted at least once, in the order first visited."""
        return list(dict.fromkeys(v.plane for v in self.visits))

    @property
    def seconds_per_plane(self) -> Optional[float]:
        """Wall time per prediction (None when nothing was predicted)."""
        return self.seconds / len(self.visits) if self.visits else None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no mask)."""
        return {
            "axis": self.axis,
            "key_planes": list(self.key_planes),
            "planes": self.planes,
            "predictions": len(self.visits),
            "planes_visited": self.planes_visited,
            "voxels": int(np.count_nonzero(self.mask)),
            "scores": {str(k): round(float(v), 4) for k, v in sorted(self.scores.items())},
            "stops": [asdict(s) for s in self.stops],
            "cancelled": self.cancelled,
            "seconds": round(self.seconds, 4),
            "seconds_per_plane": None if self.seconds_per_plane is None else round(self.seconds_per_plane, 5),
            "encoder_calls": self.encoder_calls,
        }


# ------------------------------------------------------------------------------------ the walk


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
        self._prefetch = getattr(segmenter, "prefetch", None) if enabled else None
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


def _plane_values(segmenter, plane: int) -> Optional[np.ndarray]:
    """The plane's intensities in the volume's units (``segmenter.plane_image``), or None for a
    segmenter that cannot give them."""
    get = getattr(segmenter, "plane_image", None)
    return None if get is None else np.asarray(get(plane))


class _AppearanceWatch:
    """The appearance checks along one walk direction: the key plane object's intensities, those of
    the mask last accepted and of its surroundings; trims and measures each new plane's mask."""

    def __init__(self, segmenter, reference: Appearance, seed_values: np.ndarray, seed_mask: np.ndarray,
                 config: PropagationConfig) -> None:
        self.segmenter, self.reference, self.config = segmenter, reference, config
        self.last, self.around = reference, reference.like(seed_values, surroundings(seed_mask))
        self.values: Optional[np.ndarray] = None
        self.look: Optional[Appearance] = None

    @classmethod
    def start(cls, segmenter, plane: int, mask: np.ndarray, config: PropagationConfig) -> Optional["_AppearanceWatch"]:
        """A watch from key plane ``plane``'s ``mask``, or None when the config asks for no check or the
        segmenter gives no intensities."""
        if not config.uses_appearance:
            return None
        values = _plane_values(segmenter, plane)
        reference = None if values is None else Appearance.of(values, mask)
        return None if reference is None else cls(segmenter, reference, values, mask, config)

    def check(self, plane: int, mask: np.ndarray, previous: np.ndarray) -> tuple[np.ndarray, float, Optional[float]]:
        """(``mask`` trimmed when the config says so, its similarity to the object — the better of the
        key plane's and the last accepted plane's —, its similarity to the last mask's surroundings)."""
        self.values = _plane_values(self.segmenter, plane)
        if self.config.appearance_trim is not None:
            mask = trim_to_appearance(mask, self.values, self.reference, self.config.appearance_trim, previous)
        self.look = self.reference.like(self.values, mask)
        if self.look is None:
            return mask, 0.0, None
        similarity = max(self.reference.similarity_to(self.look), self.last.similarity_to(self.look))
        around = None if self.around is None else self.around.similarity_to(self.look)
        return mask, similarity, around

    def accept(self, mask: np.ndarray) -> None:
        """The mask just checked was kept: the next plane is compared with it and its surroundings."""
        if self.look is not None:
            self.last, self.around = self.look, self.reference.like(self.values, surroundings(mask))


def _is_cancelled(cancel: CancelToken) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _segmenter_axis(segmenter) -> Optional[int]:
    """The axis the segmenter's volume was set with, when it says."""
    axis = getattr(segmenter, "volume_axis", None)
    if axis is None:
        volume = getattr(segmenter, "_volume", None)  # engine.Segmenter keeps it here
        axis = getattr(volume, "axis", None)
    return None if axis is None else int(axis)


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
    segmenter,
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
    axis=axis)`` (or anything with ``predict(points=, point_labels=, box=, mask_input=, plane=)`` →
    object with ``mask``, ``score``, ``logits``, and ``plane_count``). ``seeds``: key plane index →
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
    seg_axis = _segmenter_axis(segmenter)
    if seg_axis is not None and seg_axis != axis:
        raise ValueError(
            f"propagate along axis {axis}, but the segmenter's volume is set along axis {seg_axis}: "
            f"call segmenter.set_volume(volume, axis={axis}) first"
        )
    count = int(getattr(segmenter, "plane_count", 0) or 0)
    if count < 1:
        raise ValueError("the segmenter has no volume: call segmenter.set_volume(volume, axis=...) first")
    key_seeds, plane_shape = _key_seeds(seeds, count, axis)
    keys = sorted(key_seeds)
    encoder_before = getattr(segmenter, "encoder_calls", None)

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
    current_plane = getattr(segmenter, "current_plane", None)  # predict() moves it; the caller's view stays
    done = 0
    try:
        for index, walk in enumerate(walks):
            seed = key_seeds[walk.seed]
            if not seed.mask.any():
                continue
            previous, previous_logits = seed.mask, seed.logits
            last, stopped_at, reason = walk.seed, None, None
            looks = _AppearanceWatch.start(segmenter, walk.seed, seed.mask, config)
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
                score = float(prediction.score)
                similarity = around = None
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
                previous, previous_logits, last = mask, getattr(prediction, "logits", None), plane
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
        if current_plane is not None:
            segmenter.current_plane = current_plane

    stack, scores = _assemble(kept, key_seeds, count, plane_shape, config)
    encoder_after = getattr(segmenter, "encoder_calls", None)
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


def _predict_plane(segmenter, plane: int, previous: np.ndarray, previous_logits: Optional[np.ndarray],
                   policy: PromptPolicy, plane_shape: tuple[int, int], axis: int):
    """(the segmenter's prediction for ``plane``, prompted from the previous mask; its bool mask)."""
    prompt = next_plane_prompt(previous, previous_logits, policy)
    prediction = segmenter.predict(points=prompt.points, point_labels=prompt.point_labels, box=prompt.box,
                                   mask_input=prompt.mask_input, plane=plane)
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

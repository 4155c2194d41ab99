"""The per-plane rules of 3D propagation: the next plane's prompt, why a plane is rejected, the
appearance trim and checks, and the vote that reconciles two walks meeting between key planes.

Arrays are one plane's: bool masks (rows, cols), intensities (rows, cols) in the volume's units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from napari_vfmseg.engine.appearance import Appearance, surroundings
from napari_vfmseg.engine.propagate.config import PromptPolicy, PropagationConfig

__all__ = [
    "PlanePrompt",
    "next_plane_prompt",
    "APPEARANCE_MARGIN",
    "stop_reason",
    "trim_to_appearance",
    "reconcile",
    "AppearanceWatch",
]


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


class AppearanceWatch:
    """The appearance checks along one walk direction: the key plane object's intensities, those of
    the mask last accepted and of its surroundings; trims and measures each new plane's mask.

    ``values_of(plane)``: that plane's intensities (rows, cols) in the volume's units.
    """

    def __init__(self, values_of: Callable[[int], np.ndarray], reference: Appearance, seed_values: np.ndarray,
                 seed_mask: np.ndarray, config: PropagationConfig) -> None:
        self.values_of, self.reference, self.config = values_of, reference, config
        self.last, self.around = reference, reference.like(seed_values, surroundings(seed_mask))
        self.values: Optional[np.ndarray] = None
        self.look: Optional[Appearance] = None

    @classmethod
    def start(cls, values_of: Optional[Callable[[int], np.ndarray]], plane: int, mask: np.ndarray,
              config: PropagationConfig) -> Optional["AppearanceWatch"]:
        """A watch from key plane ``plane``'s ``mask``, or None when the config asks for no check, no
        intensities are available (``values_of`` None) or the key plane's object has no finite voxel."""
        if not config.uses_appearance or values_of is None:
            return None
        values = np.asarray(values_of(plane))
        reference = Appearance.of(values, mask)
        return None if reference is None else cls(values_of, reference, values, mask, config)

    def check(self, plane: int, mask: np.ndarray, previous: np.ndarray) -> tuple[np.ndarray, float, Optional[float]]:
        """(``mask`` trimmed when the config says so, its similarity to the object — the better of the
        key plane's and the last accepted plane's —, its similarity to the last mask's surroundings)."""
        self.values = np.asarray(self.values_of(plane))
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


"""Settings of 3D propagation: the prompt policy, :class:`PropagationConfig` and its named presets.

Pure Python (no numpy, no torch), so panels import the real defaults at no cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

__all__ = ["STOP_REASONS", "PromptPolicy", "PropagationConfig", "preset"]

# Why a walk direction ended.
STOP_REASONS: dict[str, str] = {
    "low_score": "the model's predicted IoU fell below min_score",
    "score_drop": "the predicted IoU fell below min_score_ratio x the best score of this walk",
    "appearance": "the mask's intensities looked like neither the key plane's object nor the previous plane's "
                  "(similarity < min_appearance_similarity), and not clearly more like the object than like its surroundings",
    "vanished": "the mask had fewer than min_area pixels (or the plane had no finite voxel to segment)",
    "area_jump": "the mask grew implausibly (equivalent diameter > max_growth x previous + growth_slack_px)",
    "lost": "the mask no longer overlapped the previous plane's mask (overlap < min_overlap)",
    "volume_end": "the walk reached the first or last plane of the volume",
    "key_plane": "the walk reached another key plane",
    "max_planes": "the walk made max_planes predictions in this direction",
    "cancelled": "cancel was requested",
}


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


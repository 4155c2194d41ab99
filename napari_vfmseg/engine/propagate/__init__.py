"""3D propagation: masks on key planes of a volume → a 3D mask, plane by plane.

- :mod:`.config`: :class:`PromptPolicy`, :class:`PropagationConfig`, :func:`preset`, :data:`STOP_REASONS`
  (no numpy, no torch);
- :mod:`.rules`: the per-plane rules — the next plane's prompt, the stop reasons, the appearance
  trim and checks, the reconciling vote between key planes;
- :mod:`.results`: :class:`PlaneVisit`, :class:`WalkStop`, :class:`PropagationResult`;
- :mod:`.protocol`: what the walk needs from a segmenter (:class:`PlaneSegmenter`) and what it uses
  when present;
- :mod:`.walk`: :func:`propagate` itself (its docstring describes the walk).

Nothing here imports torch: the walk calls the segmenter it is given.
"""

from napari_vfmseg.engine.propagate.config import STOP_REASONS, PromptPolicy, PropagationConfig, preset
from napari_vfmseg.engine.propagate.protocol import PlaneSegmenter, segmenter_model
from napari_vfmseg.engine.propagate.results import PlaneVisit, PropagationResult, WalkStop
from napari_vfmseg.engine.propagate.rules import (
    APPEARANCE_MARGIN,
    PlanePrompt,
    next_plane_prompt,
    reconcile,
    stop_reason,
    trim_to_appearance,
)
from napari_vfmseg.engine.propagate.walk import CancelToken, ProgressCallback, propagate

__all__ = [
    "PromptPolicy",
    "PlanePrompt",
    "PropagationConfig",
    "PlaneVisit",
    "WalkStop",
    "PropagationResult",
    "PlaneSegmenter",
    "STOP_REASONS",
    "APPEARANCE_MARGIN",
    "next_plane_prompt",
    "stop_reason",
    "trim_to_appearance",
    "segmenter_model",
    "preset",
    "reconcile",
    "propagate",
    "ProgressCallback",
    "CancelToken",
]

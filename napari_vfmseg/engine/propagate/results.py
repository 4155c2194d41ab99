"""What 3D propagation returns: every prediction made, how each walk direction ended, the 3D mask."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

__all__ = ["PlaneVisit", "WalkStop", "PropagationResult"]


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

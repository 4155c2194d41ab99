"""Continuous adaptation: start a short background round after every ``every`` newly committed planes.

Qt-free policy for the viewer: the annotator tells :class:`ContinuousAdaptation` which planes hold
committed objects (:meth:`~ContinuousAdaptation.planes_committed`) and whether a round is running;
the policy answers with the :class:`~napari_vfmseg.training.round_config.RoundConfig` to start, or
None. It never runs anything itself, so the viewer keeps cancel, versions and rollback as for a
round started by hand::

    policy = ContinuousAdaptation.for_model(model)          # on by default for the built-in model
    config = policy.planes_committed(annotated_plane_keys)  # after each commit
    if config is not None:
        start_round(config)                                 # the viewer's own background round
        policy.round_started()
    ...
    policy.round_finished(result)                           # done, cancelled or failed (result None)

A round that is cancelled or fails leaves the committed count where it was, so the next commit
tries again; a finished round (kept or not) starts the count afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Hashable, Iterable, Optional

from napari_vfmseg.training.round_config import FULL_MODE_MAX_PARAMETERS, RoundConfig

__all__ = ["ContinuousAdaptation", "continuous_round_config"]


def continuous_round_config(base: RoundConfig = RoundConfig()) -> RoundConfig:
    """The short round used while the user works: the default recipe with fewer steps."""
    return replace(base, steps=max(1, min(base.steps, 40)), lopo_steps=None)


@dataclass
class ContinuousAdaptation:
    """Decides when the next background round starts.

    ``every``: newly committed planes that trigger a round (the first round waits for at least
    ``min_planes`` committed planes in all, so that leave-one-plane-out has something to leave
    out). ``enabled`` False answers None to everything.
    """

    every: int = 3
    min_planes: int = 3
    enabled: bool = True
    config: RoundConfig = field(default_factory=continuous_round_config)
    running: bool = False
    rounds_started: int = 0
    _seen: set = field(default_factory=set)
    _counted: set = field(default_factory=set)
    _starting: set = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.every < 1 or self.min_planes < 1:
            raise ValueError(f"every and min_planes must be >= 1, got every={self.every}, min_planes={self.min_planes}")

    @classmethod
    def for_model(cls, model, **kwargs) -> "ContinuousAdaptation":
        """On by default for small models (the built-in one), off for large ones (a round costs minutes)."""
        count = sum(p.numel() for p in model.sam.parameters())
        kwargs.setdefault("enabled", count <= FULL_MODE_MAX_PARAMETERS)
        return cls(**kwargs)

    @property
    def pending(self) -> int:
        """Committed planes not yet used by a round."""
        return len(self._seen - self._counted)

    def planes_committed(self, planes: Iterable[Hashable]) -> Optional[RoundConfig]:
        """Record the planes that now hold committed objects (any hashable key, e.g. (axis, index));
        returns the config of a round to start now, or None."""
        self._seen.update(planes)
        if not self.enabled or self.running or len(self._seen) < self.min_planes:
            return None
        if self.pending < self.every:
            return None
        return self.config

    def round_started(self) -> None:
        """The viewer started the round that :meth:`planes_committed` asked for."""
        self.running = True
        self.rounds_started += 1
        self._starting = set(self._seen)

    def round_finished(self, result=None) -> None:
        """The round ended: ``result`` a ``RoundResult``, or None when it failed. A finished round
        (kept or not) uses up the planes it saw; a cancelled or failed one does not."""
        self.running = False
        if result is not None and not getattr(result, "cancelled", False):
            self._counted |= self._starting
        self._starting = set()

    def cancel_pending(self) -> None:
        """Forget the planes committed so far (e.g. the user switched continuous adaptation off and on)."""
        self._counted |= self._seen

"""Settings, progress and result of a distillation (:func:`~napari_vfmseg.training.distill.distill`).

Pure data. A run has three stages, each counted in optimiser steps: ``embed`` (the student's image
embeddings mimic the teacher's), ``mask`` (its masks and IoU scores follow the teacher's on
simulated prompts) and ``labels`` (a fine-tuning round on labelled planes, only when some are given).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

__all__ = ["STAGES", "DistillConfig", "DistillProgress", "DistillResult"]

STAGES = ("teacher", "embed", "mask", "labels")


@dataclass(frozen=True)
class DistillConfig:
    """Settings of one distillation (defaults: a few minutes for a 100-plane scan on 2 CPU cores)."""

    student_size: str = "tiny"          # models.student.STUDENT_SIZES
    img_size: int = 256                 # student input side (its embedding grid is img_size / 8)
    embed_steps: int = 300              # stage 1
    mask_steps: int = 150               # stage 2
    label_steps: int = 60               # final round on labelled planes (when given)
    batch: int = 8                      # images per step in stage 1
    mask_batch: int = 4                 # images per step in stage 2 (the mask decoder dominates its cost)
    prompts_per_image: int = 2          # objects prompted per image in stage 2
    embed_lr: float = 2e-3
    mask_lr: float = 5e-4               # encoder in stage 2; the decoder gets a tenth of it
    label_lr: float = 1e-4
    embed_weight: float = 1.0           # embedding loss kept during stage 2
    iou_weight: float = 1.0
    axes: tuple[int, ...] = (0, 1, 2)   # planes of every volume along these axes
    max_transfer_images: int = 480      # planes (plus synthetic slices) kept, spread evenly
    augment_fraction: float = 0.5       # transfer planes drawn augmented (flips, intensity, zoom)
    synthetic_fraction: float = 0.15    # synthetic slices added, as a share of the planes
    objects_per_image: int = 2          # pseudo-objects found by the teacher on unlabelled planes
    min_pixels: int = 20
    checkpoint_every: int = 50          # steps between resume checkpoints (0: only at stage ends)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch", "mask_batch", "prompts_per_image", "max_transfer_images", "objects_per_image"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("embed_steps", "mask_steps", "label_steps", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.augment_fraction <= 1.0 or self.synthetic_fraction < 0:
            raise ValueError("augment_fraction must be in [0, 1] and synthetic_fraction >= 0")
        if not self.axes or any(a not in (0, 1, 2) for a in self.axes):
            raise ValueError(f"axes must be a non-empty subset of (0, 1, 2), got {self.axes!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DistillProgress:
    """Reported to the progress callback: ``stage`` (one of :data:`STAGES`), ``step`` of ``total``
    in that stage, the stage's last loss (None in the teacher pass) and the seconds so far."""

    stage: str
    step: int
    total: int
    loss: Optional[float]
    elapsed_s: float


@dataclass
class DistillResult:
    """Outcome of a distillation. ``student`` is a ``LoadedModel``; ``card`` goes into its file."""

    student: object
    card: dict
    history: list[dict] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0
    checkpoint: Optional[str] = None

    def summary(self) -> dict:
        return {"cancelled": self.cancelled, "seconds": round(self.seconds, 2), "checkpoint": self.checkpoint,
                **self.card}

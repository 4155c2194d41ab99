"""Settings, progress and result of a fine-tuning run (:class:`~napari_vfmseg.training.trainer.Trainer`).

Pure data: the trainer reads a :class:`TrainConfig`, reports a :class:`TrainProgress` after each
step and returns a :class:`TrainResult` whose ``tensors`` and ``info`` make the adapter file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from napari_vfmseg.models.lora import LoRAConfig, ParameterCount
from napari_vfmseg.training.adapters import MODES, AdapterInfo, save_adapter
from napari_vfmseg.training.losses import LossWeights

__all__ = ["TrainConfig", "TrainProgress", "TrainResult"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one fine-tuning run (defaults suit a few dozen planes)."""

    mode: str = "decoder"
    lora: Optional[LoRAConfig] = None  # None: no LoRA in decoder mode; rank 4 on the default targets in encoder-lora
    steps: int = 200
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    images_per_step: int = 4
    prompts_per_image: int = 4
    grad_accum: int = 1                 # micro-batches per optimiser step
    correction_clicks: int = 2          # corrective clicks after the first prompt
    box_probability: float = 0.5        # first prompt: a jittered box, else one interior point
    augment: bool = True                # flips, intensity jitter, small zoom and rotation (not in decoder mode)
    rotate_degrees: float = 0.0         # largest random rotation of an augmented plane
    zoom: float = 0.1                   # zoom factor drawn in [1 - zoom, 1 + zoom]
    cache_early: bool = False           # encoder modes: freeze the early encoder stages and cache their output
    cache_views: int = 16               # augmented views per training plane cached (first one unaugmented)
    schedule: str = "constant"          # learning rate after warm-up: "constant" or "cosine" (to 10 %)
    val_every: int = 25                 # steps between validations (0: only before and after)
    early_stop_patience: int = 4        # validations without improvement before stopping (0: never)
    min_delta: float = 1e-3             # improvement in validation Dice that counts
    min_pixels: int = 20                # smaller objects are ignored
    zoom_crops: Optional[bool] = None   # also train on the engine's zoomed crop of each small object
                                        # (None: when the engine zooms for this model, see engine.zoom)
    thick_views: bool = True            # planes of a thick-slice scan also train as its other views look
                                        # (slabs one slice thick, objects 8+ slabs tall; training.thick_views)
    thick_views_widen: bool = False     # True: thick views add images to a step (more Dice on the lungs,
                                        # about 1.4 x the time); False: they take turns with their planes
    max_val_objects: int = 64
    seed: int = 0
    amp: Optional[bool] = None          # mixed precision; None = on for CUDA
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fine-tuning mode {self.mode!r}: use one of {MODES}")
        for name in ("steps", "images_per_step", "prompts_per_image", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.correction_clicks < 0 or self.val_every < 0 or self.early_stop_patience < 0:
            raise ValueError("correction_clicks, val_every and early_stop_patience must be >= 0")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.cache_views < 1:
            raise ValueError(f"cache_views must be >= 1, got {self.cache_views!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.mode == "decoder" and self.lora is not None and self.lora.encoder_targets:
            raise ValueError("decoder mode never changes the image encoder: use lora.encoder_targets=() "
                             "or the 'encoder-lora' mode")


@dataclass
class TrainProgress:
    """Reported to the progress callback after every step (``val_dice`` only when validated)."""

    step: int
    total_steps: int
    loss: float
    val_dice: Optional[float]
    best_val_dice: Optional[float]
    elapsed_s: float


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`. ``tensors`` and ``info`` make the adapter file."""

    tensors: dict[str, torch.Tensor]
    info: AdapterInfo
    history: list[dict]
    val_dice_before: Optional[float]
    val_dice_after: Optional[float]
    steps_done: int
    best_step: int
    cancelled: bool
    stopped_early: bool
    seconds: float
    parameters: ParameterCount
    n_train_examples: int

    @property
    def improved(self) -> bool:
        """True when the model now carries a state better than the one it started from."""
        return self.best_step > 0

    def save(self, path) -> Path:
        """Write the adapter (see :func:`napari_vfmseg.training.adapters.save_adapter`)."""
        return save_adapter(path, self.tensors, self.info)

    def summary(self) -> dict:
        return {
            "mode": self.info.mode,
            "val_dice_before": self.val_dice_before,
            "val_dice_after": self.val_dice_after,
            "steps_done": self.steps_done,
            "best_step": self.best_step,
            "cancelled": self.cancelled,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 3),
            "trainable_parameters": self.parameters.trainable,
            "total_parameters": self.parameters.total,
            "trainable_share": self.parameters.share,
            "n_train_examples": self.n_train_examples,
        }

"""Settings of a fine-tuning round (:func:`napari_vfmseg.training.rounds.run_round`), and their defaults.

No torch at import time: the viewer reads the defaults to build its controls.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

__all__ = ["DEFAULT_LR", "FULL_MODE_MAX_PARAMETERS", "LOPO_BELOW", "RoundConfig"]

# Learning rate per mode when RoundConfig.lr is None: LoRA factors start at zero and need a larger step.
DEFAULT_LR = {"decoder": 1e-4, "encoder-lora": 3e-4, "full": 3e-4}
# "auto" trains every weight of a model up to this size, else LoRA on the encoder plus the decoder.
FULL_MODE_MAX_PARAMETERS = 20_000_000
# "auto" validation: leave-one-plane-out below this many new training planes, else held-out blocks.
LOPO_BELOW = 8


@dataclass(frozen=True)
class RoundConfig:
    """Settings of one round. The defaults are the measured recipe (docs/finetuning.md): on the
    built-in model every weight trains (mode "auto" resolves to "full"), 60 steps at a constant
    3e-4 on augmented views of the corrected planes, each object prompted by a box or a click and
    then two correction clicks; with fewer than :data:`LOPO_BELOW` planes the round is validated by
    leaving one plane out. ``cache_early=True`` trades Dice for about a third less CPU per step."""

    mode: str = "auto"                  # "auto", "decoder", "encoder-lora" or "full"
    rank: int = 4                       # LoRA rank in encoder-lora mode (alpha = rank)
    steps: int = 60
    lr: Optional[float] = None          # None: DEFAULT_LR[mode]
    images_per_step: int = 4
    prompts_per_image: int = 4
    correction_clicks: int = 2          # the recipe that scored best on the real T1 (docs/finetuning.md)
    held_out_fraction: float = 0.25     # of the new planes, in whole blocks
    block_size: int = 4                 # neighbouring planes per split block
    guard_planes: int = 1               # training planes this close to a held-out plane are not trained on
    val_every: int = 10
    patience: int = 0                   # validations without improvement before stopping (0: never)
    replay_limit: int = 32              # earlier training planes replayed at most
    held_out_limit: int = 16            # planes in each 1-click Dice measurement at most
    min_pixels: int = 20
    seed: int = 0
    augment: bool = True                # encoder modes: flips, intensity, zoom, rotation of the planes
    rotate_degrees: float = 0.0         # 15 degrees was tried with the cache; see docs/finetuning.md
    cache_early: bool = False           # True: early encoder stages frozen and cached (35 % less CPU per step, lower Dice)
    cache_views: int = 16               # augmented views cached per plane
    schedule: str = "constant"
    validation: str = "auto"            # "auto", "lopo" (leave one plane out) or "held_out" (blocks)
    lopo_folds: int = 3                 # planes left out in turn at most
    lopo_steps: Optional[int] = None    # steps per fold (None: a third of ``steps``)
    min_gain: float = 0.0               # leave-one-plane-out Dice gain a round must exceed to be kept
    zoom_crops: Optional[bool] = None   # also train on the engine's zoomed crops of small objects (None: as the engine zooms)
    thick_views: bool = True            # planes of a thick-slice scan also train as its through-plane views look
                                        # (objects at least 8 slices across; measured in docs/finetuning.md)
    thick_views_widen: bool = False     # True: the views add images to a step (more Dice, about 1.4 x the time)

    def __post_init__(self) -> None:
        from napari_vfmseg.training.adapters import MODES

        if self.mode not in MODES + ("auto",):
            raise ValueError(f"unknown fine-tuning mode {self.mode!r}: use 'auto' or one of {MODES}")
        if self.rank < 1 or self.steps < 1:
            raise ValueError(f"rank and steps must be >= 1, got rank={self.rank}, steps={self.steps}")
        if self.validation not in ("auto", "lopo", "held_out"):
            raise ValueError(f"validation must be 'auto', 'lopo' or 'held_out', got {self.validation!r}")

    def resolve(self, model) -> "RoundConfig":
        """This config with ``mode`` "auto" replaced: "full" for a model of at most
        :data:`FULL_MODE_MAX_PARAMETERS` parameters (the built-in one), else "encoder-lora"."""
        if self.mode != "auto":
            return self
        count = sum(p.numel() for p in model.sam.parameters())
        return replace(self, mode="full" if count <= FULL_MODE_MAX_PARAMETERS else "encoder-lora")

    def validation_for(self, n_new_train: int) -> str:
        """"lopo" or "held_out" for a round with ``n_new_train`` new planes."""
        if self.validation != "auto":
            return self.validation
        return "lopo" if n_new_train < LOPO_BELOW else "held_out"

    @property
    def fold_steps(self) -> int:
        return int(self.lopo_steps) if self.lopo_steps is not None else max(1, self.steps // 3)

    @property
    def learning_rate(self) -> float:
        mode = "full" if self.mode == "auto" else self.mode
        return float(self.lr) if self.lr is not None else DEFAULT_LR[mode]

    def train_config(self):
        """The :class:`~napari_vfmseg.training.trainer.TrainConfig` of this round (``mode`` "auto"
        stands for "full" here: call :meth:`resolve` with the model first)."""
        from napari_vfmseg.models.lora import LoRAConfig
        from napari_vfmseg.training.trainer import TrainConfig

        mode = "full" if self.mode == "auto" else self.mode
        lora = LoRAConfig(rank=self.rank, alpha=float(self.rank), encoder_targets=()) if mode == "encoder-lora" else None
        return TrainConfig(
            mode=mode, lora=lora, steps=self.steps, lr=self.learning_rate,
            images_per_step=self.images_per_step, prompts_per_image=self.prompts_per_image,
            correction_clicks=self.correction_clicks, val_every=self.val_every,
            early_stop_patience=self.patience, min_pixels=self.min_pixels, seed=self.seed,
            warmup_steps=max(1, min(10, self.steps // 10)), augment=self.augment,
            rotate_degrees=self.rotate_degrees, cache_early=self.cache_early, cache_views=self.cache_views,
            schedule=self.schedule, zoom_crops=self.zoom_crops, thick_views=self.thick_views,
            thick_views_widen=self.thick_views_widen,
        )

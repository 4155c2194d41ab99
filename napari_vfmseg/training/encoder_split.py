"""Split an image encoder into frozen early stages and trained late stages, for cached fine-tuning.

When the early stages of the encoder stay frozen, their output for a given (augmented) plane never
changes during a round: it is computed once, under ``no_grad``, and every training step runs only
the late stages, the prompt encoder and the mask decoder. On the built-in model the stem and the
first stage (stride 4, the highest resolution) cost about 40 % of a training step's encoder time.

:func:`split_encoder` knows two encoder families:

- the built-in :class:`~napari_vfmseg.models.builtin.ConvImageEncoder`: early = ``stem`` +
  ``stage1`` ((B, 3, S, S) → (B, C1, S/4, S/4)); late = the rest;
- segment-anything's ``ImageEncoderViT``: early = patch embedding (+ position embedding) and the
  first ``vit_blocks`` blocks ((B, 3, S, S) → (B, S/16, S/16, D)); late = the remaining blocks and
  the neck.

Other encoders return None (train without the cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.nn import functional as F

__all__ = ["EncoderSplit", "split_encoder"]


@dataclass(frozen=True)
class EncoderSplit:
    """``early(x)`` and ``late(features)`` compose to ``image_encoder(x)``; ``early_prefixes`` name
    the parameters (``image_encoder.<prefix>...``) that must stay frozen while features are cached."""

    early: Callable[[torch.Tensor], torch.Tensor]
    late: Callable[[torch.Tensor], torch.Tensor]
    early_prefixes: tuple[str, ...]

    def is_early(self, name: str) -> bool:
        """Whether parameter ``name`` (of the whole SAM module) belongs to the early stages."""
        return any(name.startswith(f"image_encoder.{prefix}") for prefix in self.early_prefixes)


def _conv_split(encoder) -> EncoderSplit:
    def early(x: torch.Tensor) -> torch.Tensor:
        return encoder.stage1(encoder.stem(x))

    def late(x: torch.Tensor) -> torch.Tensor:
        s8 = encoder.stage2(x)
        s16 = encoder.stage3(s8)
        fused = encoder.lateral2(s8) + F.interpolate(encoder.lateral3(s16), size=s8.shape[-2:], mode="bilinear",
                                                     align_corners=False)
        return encoder.neck(fused)

    return EncoderSplit(early, late, ("stem.", "stage1."))


def _vit_split(encoder, blocks: int) -> EncoderSplit:
    blocks = max(0, min(int(blocks), len(encoder.blocks) - 1))

    def early(x: torch.Tensor) -> torch.Tensor:
        x = encoder.patch_embed(x)
        if encoder.pos_embed is not None:
            x = x + encoder.pos_embed
        for block in encoder.blocks[:blocks]:
            x = block(x)
        return x

    def late(x: torch.Tensor) -> torch.Tensor:
        for block in encoder.blocks[blocks:]:
            x = block(x)
        return encoder.neck(x.permute(0, 3, 1, 2))

    prefixes = ("patch_embed.", "pos_embed") + tuple(f"blocks.{i}." for i in range(blocks))
    return EncoderSplit(early, late, prefixes)


def split_encoder(encoder, vit_blocks: Optional[int] = None) -> Optional[EncoderSplit]:
    """The :class:`EncoderSplit` of ``encoder``, or None for an encoder of unknown structure.

    ``vit_blocks``: ViT blocks counted as early (default: half of them).
    """
    if all(hasattr(encoder, name) for name in ("stem", "stage1", "stage2", "stage3", "lateral2", "lateral3", "neck")):
        return _conv_split(encoder)
    if all(hasattr(encoder, name) for name in ("patch_embed", "blocks", "neck")) and hasattr(encoder, "pos_embed"):
        return _vit_split(encoder, len(encoder.blocks) // 2 if vit_blocks is None else vit_blocks)
    return None

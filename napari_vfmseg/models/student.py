"""Student networks for distillation: the built-in CNN encoder family, smaller sizes, any decoder width.

A student is a ``segment_anything.modeling.Sam`` like every model here: a convolutional image
encoder (the built-in model's blocks, :class:`~napari_vfmseg.models.builtin.ConvBlock`) in front of
a prompt encoder and mask decoder shaped like its teacher's, so the teacher's decoder weights load
into it unchanged. The encoder maps a (B, 3, S, S) normalised image to the (B, E, S/8, S/8) grid
the decoder expects (E = the teacher's decoder width, 256 for every SAM).

A student file is a safetensors checkpoint whose metadata carries ``format =
"napari-vfmseg-student"``, its :class:`StudentConfig` (``config``, JSON) and a card (``card``,
JSON: teacher name and fingerprint, adapter fingerprint, transfer set, steps, figures).
:func:`student_checkpoint` reads that metadata so :func:`~napari_vfmseg.models.load_model` can
build the right network for the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d

from napari_vfmseg.models.builtin import ConvBlock, MetadataConfig, _down   # the built-in family's blocks

__all__ = [
    "STUDENT_FORMAT",
    "STUDENT_SIZES",
    "StudentConfig",
    "StudentEncoder",
    "StudentCheckpoint",
    "build_student_sam",
    "student_config_for",
    "student_checkpoint",
]

STUDENT_FORMAT = "napari-vfmseg-student"

# Encoder sizes, largest first: (widths at strides 2, 4, 8, 16; blocks at strides 4, 8, 16; neck width).
# "builtin" is the built-in model's encoder (its neck is as wide as the decoder); the others are
# narrower and shallower with a narrow neck that a 1x1 convolution lifts to the decoder width.
STUDENT_SIZES: dict[str, tuple[tuple[int, int, int, int], tuple[int, int, int], Optional[int]]] = {
    "builtin": ((32, 64, 128, 192), (2, 3, 3), None),
    "small": ((24, 48, 96, 160), (1, 2, 2), 128),
    "tiny": ((16, 32, 64, 128), (1, 2, 2), 96),
    "nano": ((16, 24, 48, 64), (1, 1, 1), 48),
}


@dataclass(frozen=True)
class StudentConfig(MetadataConfig):
    """Architecture of a student; stored in its checkpoint's metadata.

    ``neck_dim`` None: the neck is as wide as ``embed_dim`` (the built-in layout). The decoder fields
    copy the teacher's so its prompt encoder and mask decoder weights fit.
    """

    size: str = "tiny"
    img_size: int = 256
    widths: tuple[int, int, int, int] = STUDENT_SIZES["tiny"][0]
    depths: tuple[int, int, int] = STUDENT_SIZES["tiny"][1]
    neck_dim: Optional[int] = STUDENT_SIZES["tiny"][2]
    embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def __post_init__(self) -> None:
        if self.img_size % 16 or self.img_size < 64:
            raise ValueError(f"student input size must be a multiple of 16 and >= 64, got {self.img_size}")


class StudentEncoder(nn.Module):
    """(B, 3, S, S) → (B, embed_dim, S/8, S/8): stride-2 stem, blocks at strides 4, 8 and 16, the
    stride-16 features upsampled onto the stride-8 ones, then a neck ending in LayerNorm2d like SAM's."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        w0, w1, w2, w3 = config.widths
        d1, d2, d3 = config.depths
        neck = config.neck_dim or config.embed_dim
        self.img_size = config.img_size
        self.stem = _down(3, w0)
        self.stage1 = nn.Sequential(_down(w0, w1), *[ConvBlock(w1) for _ in range(d1)])
        self.stage2 = nn.Sequential(_down(w1, w2), *[ConvBlock(w2) for _ in range(d2)])
        self.stage3 = nn.Sequential(_down(w2, w3), *[ConvBlock(w3, dilation=1 + (i % 2)) for i in range(d3)])
        self.lateral2 = nn.Conv2d(w2, neck, 1)
        self.lateral3 = nn.Conv2d(w3, neck, 1)
        self.neck = nn.Sequential(
            nn.Conv2d(neck, neck, 3, padding=1, bias=False),
            LayerNorm2d(neck),
            nn.Conv2d(neck, config.embed_dim, 1, bias=False),
            LayerNorm2d(config.embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s8 = self.stage2(self.stage1(self.stem(x)))
        s16 = self.stage3(s8)
        fused = self.lateral2(s8) + F.interpolate(self.lateral3(s16), size=s8.shape[-2:], mode="bilinear",
                                                  align_corners=False)
        return self.neck(fused)


def build_student_sam(config: StudentConfig) -> Sam:
    """A SAM-compatible student network (random initialisation)."""
    grid = config.img_size // 8
    return Sam(
        image_encoder=StudentEncoder(config),
        prompt_encoder=PromptEncoder(
            embed_dim=config.embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=config.embed_dim,
                                          mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_heads),
            transformer_dim=config.embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )


def student_config_for(teacher: Sam, size: str = "tiny", img_size: int = 256) -> StudentConfig:
    """The :class:`StudentConfig` of encoder ``size`` whose decoder fits ``teacher``'s weights."""
    if size not in STUDENT_SIZES:
        raise ValueError(f"unknown student size {size!r}; choose one of {', '.join(STUDENT_SIZES)}")
    widths, depths, neck = STUDENT_SIZES[size]
    decoder = teacher.mask_decoder
    transformer = decoder.transformer
    first = transformer.layers[0]
    iou_head = decoder.iou_prediction_head
    return replace(
        StudentConfig(),
        size=size, img_size=int(img_size), widths=widths, depths=depths, neck_dim=neck,
        embed_dim=int(decoder.transformer_dim),
        mask_in_chans=int(teacher.prompt_encoder.mask_downscaling[-1].in_channels),
        decoder_depth=len(transformer.layers),
        decoder_mlp_dim=int(first.mlp.lin1.out_features),
        decoder_heads=int(first.self_attn.num_heads),
        iou_head_depth=int(iou_head.num_layers),
        iou_head_hidden_dim=int(iou_head.layers[0].out_features),
        pixel_mean=tuple(float(v) for v in teacher.pixel_mean.reshape(-1).tolist()),
        pixel_std=tuple(float(v) for v in teacher.pixel_std.reshape(-1).tolist()),
    )


@dataclass(frozen=True)
class StudentCheckpoint:
    """What a student file's metadata says: its architecture, card and engine conventions."""

    config: StudentConfig
    card: dict
    preprocess: str = "sam"
    propagation: str = "generic"

    @property
    def builder(self) -> Callable[[], Sam]:
        config = self.config
        return lambda: build_student_sam(config)

    def info(self) -> dict:
        """Entries for ``LoadedModel.info``: description, engine conventions and the card."""
        teacher = self.card.get("teacher", {}).get("name", "?")
        return {
            "description": f"student ({self.config.size} CNN encoder, {self.config.img_size} px) distilled from {teacher}",
            "preprocess": self.preprocess,
            "propagation": self.propagation,
            "student_card": self.card,
        }


def student_checkpoint(path: str | Path) -> Optional[StudentCheckpoint]:
    """The :class:`StudentCheckpoint` of a student safetensors file, or None for any other file.

    A file that says it is a student but whose metadata cannot be read raises ``ValueError`` naming it.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None   # read_state_dict reports an unreadable file
    if meta.get("format") != STUDENT_FORMAT:
        return None
    try:
        config = StudentConfig.from_dict(json.loads(meta["config"]))
        card = json.loads(meta.get("card") or "{}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: student checkpoint metadata is incomplete or invalid ({exc})") from None
    return StudentCheckpoint(config, card, meta.get("preprocess", "sam"), meta.get("propagation", "generic"))

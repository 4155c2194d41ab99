"""The built-in model: a small convolutional image encoder in front of SAM's own prompt encoder and
mask decoder, so that the engine, the cache, LoRA and 3D propagation treat it like any SAM.

The encoder takes a (B, 3, S, S) normalised image (S = ``img_size``, 256 by default) and returns
the (B, 256, S/8, S/8) embedding grid SAM's decoder expects; the decoder then predicts masks at 4×
that grid, i.e. at half the input resolution. Stride 8 rather than SAM's 16 keeps small structures
(a 10 mm lesion on a 0.8 mm slice is 6 input pixels) visible in the grid, and depthwise 7×7
convolutions with a coarser stride-16 branch give the receptive field a box prompt needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d

__all__ = ["BuiltinConfig", "ConvImageEncoder", "build_builtin_sam"]


class MetadataConfig:
    """A frozen dataclass of architecture fields stored as JSON in a weights file's metadata."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        """The config of ``values`` (JSON lists become tuples; unknown keys are ignored)."""
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


@dataclass(frozen=True)
class BuiltinConfig(MetadataConfig):
    """Architecture of the built-in model; stored in the weights' metadata."""

    img_size: int = 256
    widths: tuple[int, int, int, int] = (32, 64, 128, 192)   # stem (stride 2), stride 4, 8, 16
    depths: tuple[int, int, int] = (2, 3, 3)                  # blocks at stride 4, 8, 16
    embed_dim: int = 256                                      # SAM's prompt/decoder width
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8


class ConvBlock(nn.Module):
    """Depthwise 7×7 → BatchNorm → pointwise MLP (4×) with a residual; (B, C, H, W) → same."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 7, padding=3 * dilation, dilation=dilation, groups=channels)
        self.norm = nn.BatchNorm2d(channels)
        self.pw1 = nn.Conv2d(channels, 4 * channels, 1)
        self.act = nn.GELU()
        self.pw2 = nn.Conv2d(4 * channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.pw2(self.act(self.pw1(self.norm(self.dw(x)))))


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.GELU())


class ConvImageEncoder(nn.Module):
    """CNN image encoder: (B, 3, S, S) → (B, ``embed_dim``, S/8, S/8).

    Stages at strides 2, 4, 8 and 16; the stride-16 features are upsampled and added to the
    stride-8 ones, then a neck like SAM's (1×1 and 3×3 convolutions with LayerNorm2d) produces the
    embedding. ``img_size`` is read by the engine to size its input.
    """

    def __init__(self, config: BuiltinConfig):
        super().__init__()
        w0, w1, w2, w3 = config.widths
        d1, d2, d3 = config.depths
        self.img_size = config.img_size
        self.stem = nn.Sequential(_down(3, w0), nn.Conv2d(w0, w0, 3, padding=1), nn.BatchNorm2d(w0), nn.GELU())
        self.stage1 = nn.Sequential(_down(w0, w1), *[ConvBlock(w1) for _ in range(d1)])
        self.stage2 = nn.Sequential(_down(w1, w2), *[ConvBlock(w2) for _ in range(d2)])
        self.stage3 = nn.Sequential(_down(w2, w3), *[ConvBlock(w3, dilation=1 + (i % 2)) for i in range(d3)])
        self.lateral2 = nn.Conv2d(w2, config.embed_dim, 1)
        self.lateral3 = nn.Conv2d(w3, config.embed_dim, 1)
        self.neck = nn.Sequential(
            nn.Conv2d(config.embed_dim, config.embed_dim, 1, bias=False),
            LayerNorm2d(config.embed_dim),
            nn.Conv2d(config.embed_dim, config.embed_dim, 3, padding=1, bias=False),
            LayerNorm2d(config.embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage1(x)
        s8 = self.stage2(x)
        s16 = self.stage3(s8)
        fused = self.lateral2(s8) + F.interpolate(self.lateral3(s16), size=s8.shape[-2:], mode="bilinear", align_corners=False)
        return self.neck(fused)


def build_builtin_sam(config: BuiltinConfig | None = None) -> Sam:
    """A SAM-compatible network with the convolutional encoder (random initialisation)."""
    config = config or BuiltinConfig()
    grid = config.img_size // 8
    return Sam(
        image_encoder=ConvImageEncoder(config),
        prompt_encoder=PromptEncoder(
            embed_dim=config.embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_heads,
            ),
            transformer_dim=config.embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


WEIGHTS_FILE = "models/weights/builtin.safetensors"   # inside the napari_vfmseg package


def shipped_weights_path():
    """Path of the shipped built-in weights (it may not exist in a development checkout)."""
    from importlib.resources import files
    from pathlib import Path

    return Path(str(files("napari_vfmseg").joinpath(WEIGHTS_FILE)))


def shipped_config() -> BuiltinConfig:
    """The architecture the shipped weights were trained with (stored in their metadata)."""
    import json

    from safetensors import safe_open

    path = shipped_weights_path()
    if not path.is_file():
        return BuiltinConfig()
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return BuiltinConfig.from_dict(json.loads(metadata["config"])) if "config" in metadata else BuiltinConfig()


def build_shipped_builtin() -> Sam:
    """The built-in network in the shipped weights' architecture (random initialisation)."""
    return build_builtin_sam(shipped_config())

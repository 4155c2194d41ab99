"""MobileSAM's image encoder: TinyViT-5M adapted to 1024-px input and SAM's 256-channel neck.

Written for napari-vfmseg from the TinyViT paper (Wu et al., ECCV 2022) and MobileSAM (Zhang et
al., 2023). Module and parameter names follow the released ``mobile_sam.pt`` so that it loads
with ``strict=True``; no maintained PyPI package ships this layout (timm's ``tiny_vit`` names its
modules differently and has no SAM neck).

Shape walk-through for a ``(B, 3, 1024, 1024)`` input, default TinyViT-5M widths:

====================  ==========================  ==================================
stage                 module                      output
====================  ==========================  ==================================
patch embedding       two stride-2 3x3 conv+BN    (B, 64, 256, 256)
stage 0 (conv)        2 MBConv + merge /2         (B, 128, 128, 128)
stage 1 (attention)   2 blocks, window 7, /2      (B, 160, 64, 64)
stage 2 (attention)   6 blocks, window 14, /1     (B, 320, 64, 64)
stage 3 (attention)   2 blocks, window 7          (B, 320, 64, 64)
neck                  1x1 conv, LN, 3x3 conv, LN  (B, 256, 64, 64)
====================  ==========================  ==================================

The last merge keeps the resolution (stride 1) so that the embedding has SAM's 64x64 grid.
Attention blocks attend inside non-overlapping windows (zero-padded at the bottom/right edge) and
add a learned bias per head and per relative offset ``(|d_row|, |d_col|)``; a depthwise 3x3 conv
between attention and MLP mixes information across window borders.

``norm_head`` and ``head`` are TinyViT's ImageNet classifier. SAM never uses them, but the released
checkpoint contains them, so they are kept for exact key compatibility (0.32 M parameters).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d


class ConvBN(nn.Sequential):
    """Bias-free convolution followed by batch norm; children named ``c`` and ``bn``."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c",
            nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        )
        self.add_module("bn", nn.BatchNorm2d(out_chans))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)


class PatchEmbed(nn.Module):
    """(B, C_in, H, W) -> (B, dim, H/4, W/4) with two stride-2 3x3 ConvBN and a GELU between."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, dim // 2, 3, stride=2),
            nn.GELU(),
            ConvBN(dim // 2, dim, 3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3, 1x1 project, residual add, then GELU.

    (B, C, H, W) -> (B, C, H, W). The projection's BN starts at zero so a new block is identity-like.
    """

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim, 1, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(x + self.conv3(y))


class PatchMerging(nn.Module):
    """Change width and (optionally) halve resolution: 1x1, depthwise 3x3 with ``stride``, 1x1.

    (B, C_in, H, W) -> (B, C_out, H/stride, W/stride).
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_chans, out_chans, 1)
        self.conv2 = ConvBN(out_chans, out_chans, 3, stride=stride, groups=out_chans)
        self.conv3 = ConvBN(out_chans, out_chans, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


def relative_offset_index(window_size: int) -> torch.Tensor:
    """(N, N) long tensor, N = window_size**2: index of offset (|d_row|, |d_col|) per token pair.

    Tokens are numbered row-major inside the window; the offset index is
    ``|d_row| * window_size + |d_col|``, so there are ``window_size**2`` distinct offsets.
    """
    coords = torch.arange(window_size)
    rows = coords.repeat_interleave(window_size)
    cols = coords.repeat(window_size)
    d_row = (rows[:, None] - rows[None, :]).abs()
    d_col = (cols[:, None] - cols[None, :]).abs()
    return d_row * window_size + d_col


class WindowAttention(nn.Module):
    """Multi-head self-attention over the tokens of one window, with a learned offset bias.

    (B*, N, C) -> (B*, N, C) where N = window_size**2. Input is layer-normed first. The fused
    ``qkv`` projection is laid out per head as (q, k, v), each ``C / num_heads`` wide.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer("attention_bias_idxs", relative_offset_index(window_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=-1)  # each (B*, heads, N, d)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """LayerNorm, then Linear -> GELU -> Linear, on (..., C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (+residual), depthwise 3x3 conv, MLP (+residual); (B, C, H, W) in and out."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)

    def _attend_in_windows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C): attention inside zero-padded windows of ``window_size``."""
        batch, height, width, dim = x.shape
        ws = self.window_size
        pad_rows, pad_cols = (-height) % ws, (-width) % ws
        if pad_rows or pad_cols:
            x = F.pad(x, (0, 0, 0, pad_cols, 0, pad_rows))
        rows, cols = (height + pad_rows) // ws, (width + pad_cols) // ws
        windows = x.view(batch, rows, ws, cols, ws, dim).transpose(2, 3).reshape(-1, ws * ws, dim)
        windows = self.attn(windows)
        x = windows.view(batch, rows, cols, ws, ws, dim).transpose(2, 3).reshape(batch, rows * ws, cols * ws, dim)
        return x[:, :height, :width, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        tokens = tokens + self._attend_in_windows(tokens)
        x = self.local_conv(tokens.permute(0, 3, 1, 2))
        tokens = x.permute(0, 2, 3, 1)
        tokens = tokens + self.mlp(tokens)
        return tokens.permute(0, 3, 1, 2).contiguous()


class ConvStage(nn.Module):
    """TinyViT's first stage: MBConv blocks, then an optional PatchMerging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MBConv(dim, expand_ratio) for _ in range(depth)])
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class AttentionStage(nn.Module):
    """A TinyViT attention stage: TinyViT blocks, then an optional PatchMerging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: nn.Module | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)]
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT image encoder with a SAM neck: (B, 3, S, S) -> (B, out_chans, S/16, S/16).

    Defaults are MobileSAM's TinyViT-5M at ``img_size=1024``. ``img_size`` is the square input
    side that ``segment_anything.modeling.Sam`` resizes and pads images to.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        merge_strides: Sequence[int] = (2, 2, 1),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(num_heads) == len(window_sizes) == len(merge_strides) + 1):
            raise ValueError("embed_dims, depths, num_heads, window_sizes need one entry per stage, merge_strides one fewer")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i, dim in enumerate(embed_dims):
            merge = (
                PatchMerging(dim, embed_dims[i + 1], merge_strides[i]) if i < len(embed_dims) - 1 else None
            )
            if i == 0:
                stage: nn.Module = ConvStage(dim, depths[0], mbconv_expand_ratio, merge)
            else:
                stage = AttentionStage(dim, depths[i], num_heads[i], window_sizes[i], mlp_ratio, local_conv_size, merge)
            self.layers.append(stage)
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_linear_and_norm)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, img_size, img_size) normalized image -> (B, out_chans, img_size/16, img_size/16)."""
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.neck(x)


def _init_linear_and_norm(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_sam_vit_t() -> Sam:
    """MobileSAM: TinyViT-5M encoder with SAM's prompt encoder and mask decoder (random init, eval mode)."""
    image_size, embed_dim = 1024, 256
    grid = image_size // 16
    sam = Sam(
        image_encoder=TinyViT(img_size=image_size),
        prompt_encoder=PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()

"""Tiny SAM-family networks built from segment_anything's own classes, for fast tests.

By default a 128-px input, 8-px patches (a 16 x 16 embedding grid, 64 x 64 low-res logits), a
two-block ViT 64 wide and a 32-wide prompt encoder / mask decoder: a forward pass takes
milliseconds on a CPU. :data:`ENGINE_TINY` is the variant the engine tests compare with
segment_anything; :func:`vit_b_loaded_model` is a random-init official ViT-B.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from napari_vfmseg.models.base import LoadedModel, fingerprint_state_dict


def build_tiny_sam(img_size: int = 128, patch_size: int = 8, embed_dim: int = 64, depth: int = 2,
                   num_heads: int = 2, prompt_dim: int = 32, seed: int = 0, window_size: int = 4,
                   rel_pos_std: float = 0.02, pos_embed_std: float = 0.0, iou_head_depth: int = 2) -> Sam:
    """A randomly initialised, SAM-shaped network (eval mode, CPU, float32)."""
    torch.manual_seed(seed)
    grid = img_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=2.0,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=window_size,
            global_attn_indexes=(depth - 1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=32,
        ),
    )
    # segment_anything zero-initialises the relative position tables; give them values so a test
    # that compares outputs also exercises them.
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if "rel_pos" in name:
                param.normal_(0.0, rel_pos_std)
        if pos_embed_std > 0 and sam.image_encoder.pos_embed is not None:
            sam.image_encoder.pos_embed.normal_(0.0, pos_embed_std)
    return sam.eval()


# The engine tests' network: 256-px input, 16-px patches (16 x 16 grid, 64 x 64 low-res masks), a
# window of 6 (16 is not a multiple of 6, so window padding is exercised) and strong relative-position
# tables, so that the attention bias matters when the engine is compared with segment_anything.
ENGINE_TINY = dict(img_size=256, patch_size=16, embed_dim=48, window_size=6, rel_pos_std=0.5,
                   pos_embed_std=0.1, iou_head_depth=3)


def build_engine_sam(seed: int = 0) -> Sam:
    """:func:`build_tiny_sam` with the :data:`ENGINE_TINY` settings."""
    return build_tiny_sam(seed=seed, **ENGINE_TINY)


def engine_loaded_model(seed: int = 0, adapter_fingerprint: str | None = None) -> LoadedModel:
    """A :class:`LoadedModel` around :func:`build_engine_sam` with its real fingerprint."""
    sam = build_engine_sam(seed)
    return LoadedModel(sam=sam, name="tiny-test", arch="tiny", device=torch.device("cpu"),
                       fingerprint=fingerprint_state_dict(sam.state_dict()), adapter_fingerprint=adapter_fingerprint)


def vit_b_loaded_model(seed: int = 0) -> LoadedModel:
    """Random-init official ViT-B SAM (seeded), with small random relative-position tables."""
    from segment_anything import build_sam_vit_b

    torch.manual_seed(seed)
    sam = build_sam_vit_b(checkpoint=None)
    with torch.no_grad():
        for block in sam.image_encoder.blocks:
            block.attn.rel_pos_h.normal_(0.0, 0.05)
            block.attn.rel_pos_w.normal_(0.0, 0.05)
    sam.eval()
    return LoadedModel(sam=sam, name="vit_b", arch="vit_b", device=torch.device("cpu"),
                       fingerprint=fingerprint_state_dict(sam.state_dict()))


class TinyConvEncoder(torch.nn.Module):
    """A convolutional image encoder (not a ViT): (B, 3, S, S) → (B, C, S/8, S/8)."""

    def __init__(self, img_size: int = 128, out_chans: int = 32) -> None:
        super().__init__()
        self.img_size = img_size
        self.stem = torch.nn.Conv2d(3, 16, 8, stride=8)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw1 = torch.nn.Conv2d(16, 32, 1)
        self.act = torch.nn.GELU()
        self.pw2 = torch.nn.Conv2d(32, out_chans, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.pw2(self.act(self.pw1(x + self.dw(x))))


def build_tiny_conv_sam(img_size: int = 128, prompt_dim: int = 32, seed: int = 0) -> Sam:
    """Like :func:`build_tiny_sam` but with :class:`TinyConvEncoder` (a custom, non-ViT encoder)."""
    torch.manual_seed(seed)
    grid = img_size // 8
    sam = Sam(
        image_encoder=TinyConvEncoder(img_size, prompt_dim),
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=8),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
    )
    return sam.eval()


def tiny_loaded_model(seed: int = 0, conv: bool = False, **kwargs) -> LoadedModel:
    """A :class:`LoadedModel` around :func:`build_tiny_sam` (or the conv variant) with its real
    fingerprint."""
    sam = build_tiny_conv_sam(seed=seed, **kwargs) if conv else build_tiny_sam(seed=seed, **kwargs)
    return LoadedModel(
        sam=sam,
        name=f"tiny-{'conv' if conv else 'vit'}-test-{seed}",
        arch="tiny",
        device=torch.device("cpu"),
        fingerprint=fingerprint_state_dict(sam.state_dict()),
        info={"source": "tests/_tiny_models.py"},
    )


def synthetic_volume(planes: int = 24, size: int = 96, seed: int = 0):
    """A small labelled volume: (plane, row, col) float32 image and int32 labels.

    Two ellipsoid-like objects (ids 1 and 2) whose cross-sections grow and shrink along the planes,
    brighter than a noisy background, so neighbouring planes look alike (as in CT).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    image = rng.normal(40.0, 12.0, (planes, size, size)).astype(np.float32)
    labels = np.zeros((planes, size, size), dtype=np.int32)
    centres = [(0.35 * size, 0.35 * size, 0.22 * size, 0.16 * size, 180.0),
               (0.65 * size, 0.62 * size, 0.14 * size, 0.2 * size, 120.0)]
    for p in range(planes):
        phase = np.sin(np.pi * (p + 1) / (planes + 1))
        for label, (r0, c0, ar, ac, value) in enumerate(centres, start=1):
            rr, rc = ar * (0.5 + 0.5 * phase), ac * (0.5 + 0.5 * phase)
            inside = ((rows - r0 - 2 * np.sin(p / 3)) / rr) ** 2 + ((cols - c0) / rc) ** 2 <= 1.0
            labels[p][inside] = label
            image[p][inside] += value - 40.0
    return image, labels

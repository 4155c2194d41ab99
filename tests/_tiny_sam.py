"""A tiny SAM built from segment-anything's own classes, for fast engine tests.

256-px encoder input, 16-px patches (16x16 embedding), 2 ViT blocks (one windowed, one global) with
random relative-position tables so the attention bias matters, a 32-wide prompt encoder and mask
decoder (64x64 low-res masks). Random weights, seeded.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from napari_vfmseg.models.base import LoadedModel, fingerprint_state_dict

IMG_SIZE = 256
PATCH = 16
EMBED = 32


def build_tiny_sam(seed: int = 0) -> Sam:
    torch.manual_seed(seed)
    grid = IMG_SIZE // PATCH
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=IMG_SIZE,
            patch_size=PATCH,
            embed_dim=48,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=EMBED,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=6,  # 16 is not a multiple of 6: window padding is exercised too
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=EMBED,
            image_embedding_size=(grid, grid),
            input_image_size=(IMG_SIZE, IMG_SIZE),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED, mlp_dim=64, num_heads=2),
            transformer_dim=EMBED,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
    )
    with torch.no_grad():
        for block in sam.image_encoder.blocks:
            block.attn.rel_pos_h.normal_(0.0, 0.5)
            block.attn.rel_pos_w.normal_(0.0, 0.5)
        if sam.image_encoder.pos_embed is not None:
            sam.image_encoder.pos_embed.normal_(0.0, 0.1)
    return sam.eval()


def tiny_loaded_model(seed: int = 0, adapter_fingerprint: str | None = None) -> LoadedModel:
    sam = build_tiny_sam(seed)
    return LoadedModel(
        sam=sam,
        name="tiny-test",
        arch="tiny",
        device=torch.device("cpu"),
        fingerprint=fingerprint_state_dict(sam.state_dict()),
        adapter_fingerprint=adapter_fingerprint,
    )


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
    return LoadedModel(
        sam=sam,
        name="vit_b",
        arch="vit_b",
        device=torch.device("cpu"),
        fingerprint=fingerprint_state_dict(sam.state_dict()),
    )

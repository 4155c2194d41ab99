"""Inputs of ``vfmseg bench``: a seeded random SAM, CT-like phantom slices, slices of a real volume,
and a mixed plan of prompts in napari's (row, col) order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["build_model", "phantom_slices", "Prompt", "make_prompts", "volume_slices"]


def build_model(quick: bool, seed: int):
    """A seeded random-initialised SAM wrapped as a LoadedModel: ViT-B, or a tiny one for --quick."""
    from functools import partial

    import torch
    from segment_anything import build_sam_vit_b
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from napari_vfmseg.models.base import LoadedModel, fingerprint_state_dict

    torch.manual_seed(seed)
    if quick:
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=256, patch_size=16, embed_dim=64, depth=2, num_heads=2, out_chans=64,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=8,
                global_attn_indexes=(1,),
            ),
            prompt_encoder=PromptEncoder(embed_dim=64, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=16),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=64, mlp_dim=128, num_heads=4),
                transformer_dim=64, iou_head_depth=3, iou_head_hidden_dim=64,
            ),
        )
        name = "tiny"
    else:
        sam = build_sam_vit_b(checkpoint=None)
        name = "vit_b"
    sam.eval()
    return LoadedModel(
        sam=sam, name=f"random-{name}", arch=name, device=torch.device("cpu"),
        fingerprint=fingerprint_state_dict(sam.state_dict()),
    )


def phantom_slices(count: int, size: int, seed: int):
    """int16 CT-like slices (HU): body, liver, kidneys, spine, lungs on upper slices, noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:size, :size] / size
    slices = []
    for k in range(count):
        shift = 0.02 * k
        hu = np.full((size, size), -1000.0)
        hu[((rr - 0.5) / 0.36) ** 2 + ((cc - 0.5) / 0.45) ** 2 < 1] = 35
        hu[((rr - 0.42 - shift) / 0.14) ** 2 + ((cc - 0.33) / 0.16) ** 2 < 1] = 60  # liver
        for side in (0.35, 0.65):
            hu[((rr - 0.6) / 0.06) ** 2 + ((cc - side) / 0.045) ** 2 < 1] = 150  # kidneys
        hu[((rr - 0.72) / 0.05) ** 2 + ((cc - 0.5) / 0.05) ** 2 < 1] = 700  # vertebra
        if k % 2:
            for side in (0.3, 0.7):
                hu[((rr - 0.35) / 0.12) ** 2 + ((cc - side) / 0.1) ** 2 < 1] = -820  # lungs
        hu += rng.normal(0, 12, size=hu.shape)
        slices.append(hu.astype(np.int16))
    return slices


@dataclass
class Prompt:
    slice_index: int
    points: Optional[list] = None
    labels: Optional[list] = None
    box: Optional[tuple] = None
    use_mask: bool = False


def make_prompts(count: int, n_slices: int, size: int, seed: int) -> list[Prompt]:
    """Mixed prompts in (row, col): 1 point, point pairs, boxes, box + point, point + previous mask."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    prompts = []
    for i in range(count):
        k = i % n_slices
        kind = i % 5
        centre = rng.uniform(0.25, 0.75, size=2) * size
        if kind == 0:
            prompts.append(Prompt(k, [tuple(centre)], [1]))
        elif kind == 1:
            other = rng.uniform(0.15, 0.85, size=2) * size
            prompts.append(Prompt(k, [tuple(centre), tuple(other)], [1, 0]))
        elif kind in (2, 3):
            half = rng.uniform(0.04, 0.15, size=2) * size
            box = (centre[0] - half[0], centre[1] - half[1], centre[0] + half[0], centre[1] + half[1])
            if kind == 2:
                prompts.append(Prompt(k, box=box))
            else:
                prompts.append(Prompt(k, [tuple(centre)], [1], box=box))
        else:
            prompts.append(Prompt(k, [tuple(centre)], [1], use_mask=True))
    return prompts


def volume_slices(path: str, count: int):
    """``count`` planes around the middle of a volume (axis 0) and the volume's window."""
    from napari_vfmseg.io import read_volume, resolve_window

    volume = read_volume(path)
    array = volume.array
    if array.ndim != 3 or getattr(volume, "is_rgb", False):
        raise ValueError(f"{path}: --volume needs a 3D volume; got shape {array.shape}")
    window = resolve_window(None, array, getattr(volume, "modality", None))
    middle = array.shape[0] // 2
    start = max(0, min(array.shape[0] - count, middle - count // 2))
    return [array[k] for k in range(start, min(array.shape[0], start + count))], window

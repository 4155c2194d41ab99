"""Forward passes shared by fine-tuning and its validation (model-frame pixels, (row, col) prompts).

Images arrive already in the model frame (:func:`~napari_vfmseg.training.data.frame_pair`): uint8
(h, w) with max(h, w) equal to the encoder's input side S. Prompts are (row, col) in that frame and
become SAM's (x, y) in :func:`~napari_vfmseg.training.batched.encode_prompts` only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from napari_vfmseg.engine.preprocess import Geometry, PreparedImage, encoder_input
from napari_vfmseg.training.batched import encode_prompts
from napari_vfmseg.training.prompts import PromptSet

__all__ = ["embed_images", "decode", "upsample_logits", "pad_masks"]


def embed_images(sam, images: Sequence[np.ndarray], stretch: bool = False) -> torch.Tensor:
    """Embeddings (B, C, gh, gw) of uint8 grey images (h, w) already in the model frame
    (max(h, w) = input size, zero-padded here to a square; see :func:`~napari_vfmseg.training.data.frame_pair`,
    which resizes to the plane's true proportions exactly as inference does).

    Normalisation and padding are the engine's (:func:`~napari_vfmseg.engine.preprocess.encoder_input`);
    ``stretch`` selects MedSAM's convention. Gradients flow when the caller allows them.
    """
    size = int(sam.image_encoder.img_size)
    prepared = [
        PreparedImage(np.asarray(img, dtype=np.uint8),
                      Geometry(tuple(img.shape), tuple(img.shape), size, stretch), None)
        for img in images
    ]
    return sam.image_encoder(encoder_input(prepared, sam, sam.pixel_mean.device))


def decode(sam, embedding: torch.Tensor, prompts: PromptSet, mask_input: Optional[torch.Tensor] = None,
           multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res logits (P, K, lh, lw) and predicted IoUs (P, K) for P prompts on one embedding (1, C, gh, gw).

    Prompt coordinates are (row, col) in the model's input frame; :func:`.batched.encode_prompts`
    turns them into SAM's (x, y). ``mask_input`` (P, 1, lh, lw) holds previous low-res logits. K is
    3 with ``multimask``, else 1.
    """
    device = embedding.device
    points = labels = boxes = None
    if prompts.points is not None:
        points = torch.as_tensor(np.ascontiguousarray(prompts.points), dtype=torch.float32, device=device)
        labels = torch.as_tensor(prompts.labels, dtype=torch.int64, device=device)
    if prompts.boxes is not None:
        boxes = torch.as_tensor(np.ascontiguousarray(prompts.boxes), dtype=torch.float32, device=device)
    sparse, dense = encode_prompts(sam, points, labels, boxes, mask_input)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def upsample_logits(low: torch.Tensor, size: int) -> torch.Tensor:
    """(..., lh, lw) logits → (..., size, size) at the model's (padded) input resolution."""
    shape = low.shape
    up = F.interpolate(low.reshape(-1, 1, *shape[-2:]).float(), (size, size), mode="bilinear", align_corners=False)
    return up.reshape(*shape[:-2], size, size)


def pad_masks(masks: np.ndarray, size: int, device) -> torch.Tensor:
    """(P, h, w) bool → (P, size, size) float tensor, zero-padded at the bottom and right."""
    out = torch.zeros((masks.shape[0], size, size), dtype=torch.float32)
    out[:, : masks.shape[1], : masks.shape[2]] = torch.from_numpy(masks.astype(np.float32))
    return out.to(device)
